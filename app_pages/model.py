"""Model page: pick a preset, change any hyperparameter, and see the network it describes.

The configuration itself lives in ``app_state`` (per session, shared with the Train page);
the widgets here are a view of it. Widget keys start with ``model.``. Streamlit forgets the
state of widgets that were not drawn, so every visit seeds missing keys from the saved
configuration, and every valid change is saved back at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import app_figures as figures
import app_state
import app_views
from cifar_core.config import (
    KERNEL_SIZES,
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    changes_from_preset,
    choices,
    configs_from_form,
    form_values,
)
from cifar_core.devices import resolve_device
from cifar_core.formatting import format_parameters
from cifar_core.model import build_model, count_parameters, layer_table, summary, training_flops
from cifar_core.runs import WEIGHTS_FILE, RunError, first_conv_weights

K = "model."  # prefix of this page's widget keys
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)

HELP = {
    "preset": "A named starting point. Every setting below starts from it and can then be changed; "
              "'Reset' brings the preset's values back.",
    "stem": "whiten: before the blocks, a fixed 2x2 convolution computed from the training "
            "images themselves, whose outputs are the image patches with their correlations "
            "removed (neighbouring pixels and colours are strongly alike). The blocks then start "
            "from decorrelated inputs and learn faster; the fastest CIFAR-10 trainers use it. "
            "It shrinks the image by one pixel (32 to 31). none: the blocks see the image directly.",
    "blocks": "How many convolution blocks are stacked. Each block ends by halving the width and "
              "height of its feature maps, so later blocks look at larger parts of the picture and "
              "can combine simple patterns (edges, patches of colour) into complex ones (wheels, "
              "eyes, wings).",
    "filters": "How many different patterns this block learns to detect. A filter is a small grid "
               "of weights slid across the image; each produces one feature map showing where its "
               "pattern occurs. More filters: more patterns, more parameters, more computation.",
    "conv_dropout": "The share of this block's outputs that are switched off at random on every "
                    "training step (never when predicting). The network cannot lean on any single "
                    "feature, which reduces overfitting. 0 means no dropout layer.",
    "convs_per_block": "How many convolutions follow each other before the block shrinks the image. "
                       "Two 3x3 convolutions in a row see a 5x5 area, with fewer weights than one 5x5.",
    "kernel_size": "Width and height of every filter. 3 means each output value looks at a 3x3 "
                   "patch of its input. Larger kernels see more at once but cost many more weights.",
    "padding": "valid: a filter only visits positions where it fits completely, so each convolution "
               "trims kernel-1 pixels (32 becomes 30 with 3x3). same: a border of zeros is added "
               "so the size does not change.",
    "batch_norm": "Batch normalisation, between each convolution and its activation: the outputs of "
                  "every filter are rescaled over the current batch to an average of 0 and a spread "
                  "of 1, then given a learned scale and shift. Each layer then receives inputs on "
                  "a steady scale, which makes training faster and less fussy about the learning "
                  "rate. When predicting it uses averages collected during training.",
    "bn_scale": "Batch norm only. Off: each filter's output keeps the spread of 1 that batch norm "
                "gives it and only its shift is learned. With the next layer's weights free to "
                "scale it anyway, the learned scale adds little, and fixing it lets a high "
                "learning rate stay stable.",
    "bn_momentum": "Batch norm only. When predicting, batch norm uses averages of each filter's "
                   "output collected during training; this is the share of each new batch in "
                   "those averages. 0.1 (PyTorch's default) averages over the last few dozen "
                   "batches, 0.4 (quick, fast and best) over the last few, which keeps up with "
                   "weights that a high learning rate moves quickly. Training itself is the same "
                   "either way: only the validation and test figures change.",
    "logit_scale": "The 10 output scores are multiplied by this before softmax. A small value "
                   "(1/9 in quick, fast and best) keeps the first steps of a high learning rate "
                   "from making the network certain of anything too early.",
    "activation": "The function applied to every convolution and dense output. Without one, any "
                  "stack of layers would collapse into a single linear step. relu keeps positive "
                  "values and turns negatives into 0: cheap, and its slope does not fade for "
                  "large inputs. gelu is a smooth relu. tanh and sigmoid squash values into "
                  "(-1, 1) or (0, 1); their slope becomes tiny for large inputs (vanishing "
                  "gradients), so deep stacks of them learn slowly.",
    "pooling": "How each block halves its feature maps. max keeps the strongest response in "
               "every 2x2 square (was the pattern anywhere here?); avg keeps their average.",
    "pool_first": "Pool right after each block's first convolution instead of at the block's "
                  "end, so its later convolutions work on a quarter of the pixels: much faster, "
                  "as the fastest CIFAR-10 trainers do. Only matters with several convolutions "
                  "per block.",
    "head": "How the last feature maps become one list of numbers for the dense layers. flatten "
            "lays out every value (it keeps where things are, and the next layer needs many "
            "weights). global max / global avg keep one number per filter: its strongest or "
            "average response anywhere in the image, with far fewer weights.",
    "dense_layers": "Fully connected (dense) layers between the features and the output: every "
                    "unit is connected to every input. They weigh up the detected features as "
                    "evidence for each class. The output layer, 10 units with softmax, is always there.",
    "units": "How many units (neurons) this dense layer has.",
    "dense_dropout": "The share of this layer's units switched off at random on every training "
                     "step. 0 means no dropout layer.",
    "init": "How the weights are set before training starts. keras: Glorot-uniform weights and zero "
            "biases, as in the presentation's Keras code. torch: PyTorch's own default. Both "
            "choose random values scaled so signals neither blow up nor fade away layer by layer. "
            "dirac: PyTorch's default, but each convolution starts by passing its input channels "
            "straight through, so a deep stack begins as a short one and grows from there.",
    "standardize_input": "Before the first layer, subtract each colour channel's average and divide "
                         "by its spread (see Pixel statistics on the Dataset page), so every input "
                         "is centred on 0. Without it pixels are only scaled to 0..1, as in the "
                         "presentation.",
    "optimizer": "The rule that updates the weights after each batch, using the gradient: the "
                 "direction in which each weight would increase the loss. sgd takes a step against "
                 "the gradient (with momentum). adam keeps running averages of each weight's "
                 "gradient and of its size and gives every weight its own step size; it works "
                 "well with little tuning.",
    "lr": "Learning rate: the size of each update step. Too large and the loss jumps around or "
          "explodes; too small and training crawls. Typical: 0.001 for adam, 0.01 to 0.2 for sgd "
          "with momentum.",
    "momentum": "sgd only. Each step keeps this fraction of the previous one, like a ball rolling "
                "downhill: noisy gradients are smoothed and steady directions speed up. Nesterov "
                "momentum is used.",
    "bias_lr_scale": "Batch norm's learned shifts (and the whitening stem's bias) take steps this "
                     "many times larger than the other weights, with weight decay this many times "
                     "smaller. They are few and start at zero; with the small rate the weights "
                     "need they would barely move. 1: one rate for all.",
    "stem_bias_epochs": "whiten stem only. Its bias learns in this many first epochs and then "
                        "stays fixed (0: it learns throughout). With nothing before the first "
                        "convolution left to learn, the backward pass skips that convolution's "
                        "input gradient: epochs ran about a fifth faster (airbench fixes it "
                        "after 3 of its 10 epochs).",
    "weight_averaging": "Every 5 steps, move a running average of the weights towards the "
                        "current weights and then put the weights back at the average. Early "
                        "on the average follows closely; towards the end it moves slowly and "
                        "smooths out the noise of the last steps, which gives a better final "
                        "network at no cost (lookahead, as in airbench).",
    "weight_decay": "Pulls every weight a little towards zero at every step, by this much times "
                    "the learning rate. Smaller weights give a smoother, simpler function, which "
                    "helps against overfitting; before batch norm it also keeps the weights from "
                    "growing, which would shrink the effective step size until learning stalls. "
                    "0 turns it off; 0.0005 is common with sgd.",
    "adam_eps": "adam only. A tiny number added when adam divides by the gradient's size, so it "
                "never divides by zero. Keras uses 1e-7, PyTorch 1e-8; it rarely matters.",
    "batch_size": "How many images are looked at together before each weight update. Larger "
                  "batches give a steadier gradient and use the hardware better, but make fewer "
                  "updates per epoch; the learning rate usually has to grow with them.",
    "epochs": "One epoch is one pass over all training images. More epochs give the network more "
              "chances to learn, until it starts memorising the training images (overfitting).",
    "lr_schedule": "How the learning rate changes during training. constant: the same throughout. "
                   "onecycle: climbs over the first quarter of training, then falls to almost "
                   "zero; fast and stable for short runs. cosine: starts at the full rate and "
                   "eases down to zero.",
    "label_smoothing": "Train towards slightly unsure answers instead of 100% for the right class "
                       "and 0% for the rest: with 0.1 the target is 91% for the right class and "
                       "1% for each other. It discourages over-confident predictions.",
    "augmentation": "Random changes made to each training image every time it is used, so the "
                    "network learns the object rather than the exact pixels. The Dataset page "
                    "shows examples.",
    "early_stopping": "After every epoch, check the validation set and stop once it has not "
                      "improved for 'patience' epochs. It saves time and stops before the network "
                      "memorises the training images. (The presentation's code asked for this but "
                      "gave fit no validation data, so it never stopped early.)",
    "monitor": "What counts as an improvement: lower validation loss or higher validation accuracy.",
    "patience": "How many epochs in a row without improvement are tolerated before stopping.",
    "restore_best": "At the end, go back to the weights of the best epoch (by the monitored value) "
                    "instead of keeping those of the last one.",
    "tta": "Test-time augmentation: when predicting, also show the network other views of the image "
           "and average the answers. flip: the image and its mirror, twice the cost of none. "
           "flip_translate: also the image shifted one pixel up-left and down-right, each with its "
           "mirror, six times the cost; it added 0.1 to 0.4 points on validation for fast and best. "
           "Used for the last epoch's validation, the test figure, Evaluate and Predict.",
    "precision": "fp32: ordinary 32-bit numbers. bf16: 16-bit 'brain floats' for most of the "
                 "arithmetic, much faster on hardware built for it, with a loss of precision "
                 "that training tolerates well. auto: bf16 only where the processor or GPU "
                 "supports it natively.",
    "seed": "The starting point of every random choice: initial weights, the order of the images, "
            "augmentation and dropout. The same seed and settings give the same run on the CPU.",
    "device": "Where the arithmetic runs. auto picks an NVIDIA GPU (cuda), then an Apple GPU (mps), "
              "then the CPU.",
}


# --- configuration <-> widgets ------------------------------------------------------

def widget_values(model: ModelConfig, train: TrainConfig) -> dict[str, object]:
    """Every widget's value for a configuration, keyed by widget key."""
    return {K + name: value for name, value in form_values(model, train).items()}


def seed_widgets(model: ModelConfig, train: TrainConfig) -> None:
    """Give widgets that Streamlit has forgotten (after a visit to another page) their saved value."""
    for key, value in widget_values(model, train).items():
        st.session_state.setdefault(key, value)


def apply_preset() -> None:
    """Callback: load the chosen preset into every widget and into the saved configuration."""
    preset = PRESETS[st.session_state[K + "preset"]]
    for key in [k for k in st.session_state if k.startswith(K) and k != K + "preset"]:
        del st.session_state[key]
    st.session_state.update(widget_values(preset.model, preset.train))
    app_state.set_config(preset.name, preset.model, preset.train)


def configs_from_widgets() -> tuple[ModelConfig, TrainConfig]:
    """Both configurations from the widgets; raises ConfigError for invalid combinations."""
    return configs_from_form({key[len(K):]: value for key, value in st.session_state.items()
                              if isinstance(key, str) and key.startswith(K)})


# --- widgets ----------------------------------------------------------------------------

def draw_width_and_dropout(label: str, width: str, dropout: str, i: int, start: int, most: int) -> None:
    """A block's or dense layer's two settings side by side: its width (filters or units),
    which starts at ``start`` when the layer is added, and the dropout after it."""
    st.session_state.setdefault(f"{K}{width}{i}", start)
    st.session_state.setdefault(f"{K}{dropout}{i}", 0.0)
    left, right = st.columns(2)
    left.number_input(f"{label}: {width}", 1, most, step=16, key=f"{K}{width}{i}", help=HELP[width])
    right.slider(f"{label}: dropout", 0.0, 0.9, step=0.05, key=f"{K}{dropout}{i}", help=HELP[dropout])


def draw_network_settings() -> None:
    st.markdown("##### Convolution blocks")
    st.slider("Blocks", 1, 6, key=K + "blocks", help=HELP["blocks"])
    for i in range(st.session_state[K + "blocks"]):
        # A block added by the slider starts with twice the filters of the one before it.
        previous = st.session_state.get(f"{K}filters{i - 1}", 16)
        draw_width_and_dropout(f"Block {i + 1}", "filters", "conv_dropout", i,
                               start=min(1024, 2 * previous), most=1024)
    left, right = st.columns(2)
    left.slider("Convolutions per block", 1, 4, key=K + "convs_per_block", help=HELP["convs_per_block"])
    right.select_slider("Kernel size", KERNEL_SIZES, key=K + "kernel_size", help=HELP["kernel_size"],
                        format_func=lambda k: f"{k}×{k}")
    left, right = st.columns(2)
    left.radio("Padding", choices("padding"), horizontal=True, key=K + "padding", help=HELP["padding"])
    right.radio("Pooling", choices("pooling"), horizontal=True, key=K + "pooling", help=HELP["pooling"])
    st.toggle("Pool after the first convolution of each block", key=K + "pool_first",
              help=HELP["pool_first"])
    left, right = st.columns([2, 3])  # room for the toggle's label beside its switch
    left.selectbox("Activation", choices("activation"), key=K + "activation",
                   help=HELP["activation"])
    right.toggle("Batch normalisation", key=K + "batch_norm", help=HELP["batch_norm"])
    left, right = st.columns(2)  # each half fits the radio's two options and the toggle's label
    left.radio("Stem", choices("stem"), horizontal=True, key=K + "stem", help=HELP["stem"])
    right.toggle("Learn BN scale", key=K + "bn_scale", help=HELP["bn_scale"],
                 disabled=not st.session_state[K + "batch_norm"])
    st.number_input("BN statistics momentum", 0.01, 1.0, step=0.05, format="%.2f", key=K + "bn_momentum",
                    help=HELP["bn_momentum"], disabled=not st.session_state[K + "batch_norm"])

    st.markdown("##### Classifier head")
    st.radio("From feature maps to a vector", choices("head"),
             horizontal=True, key=K + "head", help=HELP["head"],
             format_func={"flatten": "flatten", "global_max": "global max pool",
                          "global_avg": "global average pool"}.get)
    st.slider("Dense layers (before the 10-way output)", 0, 4, key=K + "dense_layers",
              help=HELP["dense_layers"])
    for i in range(st.session_state[K + "dense_layers"]):
        draw_width_and_dropout(f"Dense {i + 1}", "units", "dense_dropout", i, start=128, most=4096)
    st.caption("The output layer always has 10 units, one per class; softmax turns their scores "
               "into probabilities that add up to 1. The loss is categorical cross-entropy: "
               "minus the log of the probability given to the right class.")

    st.markdown("##### Input and starting weights")
    left, right = st.columns([5, 4])  # the toggle's label and both radio options fit at 1280 pixels
    left.toggle("Standardize input", key=K + "standardize_input", help=HELP["standardize_input"])
    right.radio("Initialisation", choices("init"), horizontal=True, key=K + "init", help=HELP["init"])
    st.number_input("Logit scale", 0.01, 10.0, step=0.01, format="%.3f", key=K + "logit_scale",
                    help=HELP["logit_scale"])


def device_label(name: str) -> str:
    if name == "auto":
        return f"auto ({resolve_device('auto').type} here)"
    try:
        resolve_device(name)
    except ConfigError:
        return f"{name} (not available here)"
    return name


def draw_training_settings() -> None:
    s = st.session_state
    st.markdown("##### Optimizer")
    left, right = st.columns(2)
    left.radio("Optimizer", choices("optimizer"), horizontal=True, key=K + "optimizer",
               help=HELP["optimizer"])
    right.number_input("Learning rate", 1e-5, 10.0, step=1e-4, format="%g", key=K + "lr", help=HELP["lr"])
    left, right = st.columns(2)
    left.slider("Momentum", 0.0, 0.99, step=0.01, key=K + "momentum", help=HELP["momentum"],
                disabled=s[K + "optimizer"] != "sgd")
    right.number_input("Adam epsilon", 1e-10, 1e-3, step=1e-8, format="%.0e", key=K + "adam_eps",
                       help=HELP["adam_eps"], disabled=s[K + "optimizer"] != "adam")
    left, right = st.columns(2)
    left.number_input("Weight decay", 0.0, 0.1, step=1e-4, format="%g", key=K + "weight_decay",
                      help=HELP["weight_decay"])
    right.radio("Learning-rate schedule", choices("lr_schedule"), horizontal=True,
                key=K + "lr_schedule", help=HELP["lr_schedule"])
    left, right = st.columns(2)
    left.number_input("Batch-norm shift learning-rate factor", 1.0, 1000.0, step=1.0, format="%g",
                      key=K + "bias_lr_scale", help=HELP["bias_lr_scale"])
    right.number_input("Epochs the stem's bias learns (0: all)", 0, 500, key=K + "stem_bias_epochs",
                       help=HELP["stem_bias_epochs"], disabled=s[K + "stem"] != "whiten")

    st.markdown("##### Batches and epochs")
    left, right = st.columns(2)
    sizes = sorted({*BATCH_SIZES, s[K + "batch_size"]})
    left.select_slider("Batch size", sizes, key=K + "batch_size", help=HELP["batch_size"])
    right.number_input("Epochs (at most)", 1, 500, key=K + "epochs", help=HELP["epochs"])

    st.markdown("##### Fighting overfitting")
    left, right = st.columns(2)
    left.radio("Augmentation", choices("augmentation"), horizontal=True, key=K + "augmentation",
               help=HELP["augmentation"])
    right.slider("Label smoothing", 0.0, 0.5, step=0.05, key=K + "label_smoothing",
                 help=HELP["label_smoothing"])
    # Toggles on full rows: in half a column their labels were cut short.
    st.toggle("Early stopping", key=K + "early_stopping", help=HELP["early_stopping"])
    st.toggle("Restore best weights", key=K + "restore_best", help=HELP["restore_best"])
    left, right = st.columns(2)
    left.radio("Monitor", choices("monitor"), horizontal=True, key=K + "monitor",
               help=HELP["monitor"], format_func={"val_loss": "validation loss",
                                                  "val_acc": "validation accuracy"}.get,
               disabled=not s[K + "early_stopping"] and not s[K + "restore_best"])
    right.number_input("Patience (epochs)", 1, 100, key=K + "patience", help=HELP["patience"],
                       disabled=not s[K + "early_stopping"])

    st.markdown("##### Prediction, hardware and reproducibility")
    # Full rows, for the same reason: the radio's three options and the toggle's label.
    st.radio("Test-time augmentation", choices("tta"), horizontal=True, key=K + "tta", help=HELP["tta"])
    st.toggle("Weight averaging", key=K + "weight_averaging", help=HELP["weight_averaging"])
    st.radio("Precision", choices("precision"), horizontal=True, key=K + "precision",
             help=HELP["precision"])
    left, right = st.columns(2)
    left.selectbox("Device", choices("device"), key=K + "device", help=HELP["device"],
                   format_func=device_label)
    right.number_input("Seed", 0, 2**31 - 1, key=K + "seed", help=HELP["seed"])


# --- the network it describes -----------------------------------------------------

@st.cache_data(max_entries=64, show_spinner=False)
def describe_network(model_json: str) -> tuple[pd.DataFrame, int, str, str]:
    """(layer table, parameter count, Keras-style summary, DOT diagram) for a model config."""
    model = build_model(ModelConfig.from_dict(json.loads(model_json)))
    rows = layer_table(model)
    table = pd.DataFrame({
        "layer": [r.name for r in rows],
        "type": [r.kind for r in rows],
        "output shape": [" × ".join(str(v) for v in r.output_shape) for r in rows],
        "params": [r.params for r in rows]})
    return table, count_parameters(model), summary(model), figures.network_dot(rows)


def draw_network(preset: str, model: ModelConfig) -> None:
    table, total, text, dot = describe_network(json.dumps(model.to_dict()))
    preset_total = describe_network(json.dumps(PRESETS[preset].model.to_dict()))[1]
    cols = st.columns(3)
    cols[0].metric("Total params", format_parameters(total),
                   delta=f"{total - preset_total:+,} vs preset" if total != preset_total else None,
                   delta_color="off",
                   help=f"{total:,}: every weight and bias the optimizer adjusts. Batch norm also "
                        "keeps running averages, which are not parameters.")
    cols[1].metric("Size as float32", f"{total * 4 / 2**20:.2f} MB")
    cols[2].metric("MFLOPs/image", f"{training_flops(model) / 1e6:,.0f}",
                   help="Approximately how many million arithmetic operations (FLOPs) it takes "
                        "to train on one image once: forward pass, backward pass and update.")
    # Only the open view is drawn: the diagram alone brings the browser a graph-layout library.
    app_state.tabs_drawn_when_open("model.view", {
        "Layer table": lambda: draw_layer_table(table), "Diagram": lambda: st.graphviz_chart(dot),
        "Keras-style summary": lambda: st.code(text, language=None)})


def draw_layer_table(table: pd.DataFrame) -> None:
    # Tall enough for every row: a scrolling layer table hides the end of the network.
    st.dataframe(table, hide_index=True, key="model.layer_table", height=35 * (len(table) + 1) + 3,
                 column_config={"layer": st.column_config.TextColumn(width=120),  # "dropout_dense1"
                                "params": st.column_config.NumberColumn(format="localized")})
    st.caption("Output shapes are height × width × channels for one image, measured by "
               "running a blank image through the real network.")


@st.cache_data(max_entries=8, show_spinner=False)
def first_layer_filters(weights_path: str, mtime: float) -> np.ndarray:
    return first_conv_weights(Path(weights_path))


def draw_filters() -> None:
    runs = app_state.trained_runs()
    if not runs:
        st.info("No trained model yet. Train one on the **Train** page, then come back to see "
                "what its first layer learned.")
        return
    by_path = {str(run.path): run for run in runs}
    run = by_path[st.selectbox("Trained run", list(by_path), key="model.filters_run",
                               format_func=lambda path: by_path[path].label)]
    try:
        weights = first_layer_filters(str(run.path / WEIGHTS_FILE), run.weights_mtime())
    except (RunError, OSError, IndexError) as err:
        st.error(f"Could not read the filters of {run.name}: {err}")
        return
    images = figures.filter_images(weights)
    scale = max(4, 48 // weights.shape[-1])
    for start in range(0, len(images), 16):
        st.image(figures.png(figures.image_row(images[start:start + 16], scale=scale, gap=4)),
                 output_format="PNG")
    side = weights.shape[-1]
    what = ("Mid-grey means a weight of 0; a colour means the filter responds to that colour there, "
            "its opposite that it responds to its absence. ")
    if run.model_config.stem == "whiten":
        st.caption(f"The {len(images)} filters of the whitening stem, {side}×{side} weights for each "
                   f"colour, enlarged. {what}They are not learned: they are computed from the "
                   "training images before the first step, half of them the negatives of the "
                   "other half, so that the patches they pass on are uncorrelated.")
        return
    st.caption(
        f"The {len(images)} filters of the first convolution, {side}×{side} weights for each "
        f"colour, enlarged. {what}After training many look like edge detectors (a light stripe "
        "next to a dark one) or colour-blob detectors; before training they are noise.")


# --- the page ----------------------------------------------------------------------------

st.title("Model")
app_views.sync("model", preset=app_views.choice(K + "preset", PRESETS, then=apply_preset))
saved_preset, saved_model, saved_train = app_state.get_config()
st.session_state.setdefault(K + "preset", saved_preset if saved_preset in PRESETS else "baseline")
seed_widgets(saved_model, saved_train)

top_left, top_right = st.columns([2, 3], vertical_alignment="bottom")
preset_name = top_left.selectbox("Preset", list(PRESETS), key=K + "preset", on_change=apply_preset,
                                 format_func=lambda name: f"{name}: {PRESETS[name].title}",
                                 help=HELP["preset"])
top_right.button("Reset to preset", icon=":material/restart_alt:", on_click=apply_preset,
                 key="model.reset")
st.markdown(PRESETS[preset_name].description)

settings, view = st.columns([5, 6], gap="large")
with settings:
    tab_network, tab_training = st.tabs(["Network", "Training"])
    with tab_network:
        draw_network_settings()
    with tab_training:
        draw_training_settings()

try:
    model_cfg, train_cfg = configs_from_widgets()
except ConfigError as err:
    model_cfg = train_cfg = None
    with view:
        st.error(f"This combination does not work: {err}. The last valid configuration is kept "
                 "for training until you fix it.", icon=":material/error:")
if model_cfg is not None and train_cfg is not None:
    app_state.set_config(preset_name, model_cfg, train_cfg)
    with view:
        changes = changes_from_preset(preset_name, model_cfg, train_cfg)
        if changes:
            st.caption("Changed from the preset: " + "; ".join(changes))
        else:
            st.caption(f"Exactly the **{preset_name}** preset.")
        if train_cfg.device != "auto":
            try:
                resolve_device(train_cfg.device)
            except ConfigError as err:
                st.warning(f"{err}; training would fail. Choose auto or cpu.")
        draw_network(preset_name, model_cfg)

# The filters are read from a run's weights: only for a visitor who asks.
app_state.panel_drawn_when_open("What a trained network learned: first-layer filters", "model.filters_open",
                                ":material/filter:", draw_filters)
