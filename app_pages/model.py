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

import app_content
import app_figures as figures
import app_state
import app_views
from cifar_core.config import (
    KERNEL_SIZES,
    LIMITS,
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

HELP = app_content.sections("model-settings")  # each setting's help, by its name
TEXT = app_content.sections("model")


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

def bounds(name: str) -> dict[str, float]:
    """A numeric widget's lowest and highest value and its step: the setting's limits in config."""
    limit = LIMITS[name]
    low, high = limit.widget_range
    return {"min_value": low, "max_value": high} | ({"step": limit.step} if limit.step else {})


def draw_width_and_dropout(label: str, width: str, dropout: str, i: int, start: int) -> None:
    """A block's or dense layer's two settings side by side: its width (filters or units),
    which starts at ``start`` when the layer is added, and the dropout after it."""
    st.session_state.setdefault(f"{K}{width}{i}", start)
    st.session_state.setdefault(f"{K}{dropout}{i}", 0.0)
    left, right = st.columns(2)
    left.number_input(f"{label}: {width}", **bounds(width), key=f"{K}{width}{i}", help=HELP[width])
    right.slider(f"{label}: dropout", **bounds("dropout"), key=f"{K}{dropout}{i}", help=HELP[dropout])


def draw_network_settings() -> None:
    st.markdown("##### Convolution blocks")
    st.slider("Blocks", **bounds("blocks"), key=K + "blocks", help=HELP["blocks"])
    for i in range(st.session_state[K + "blocks"]):
        # A block added by the slider starts with twice the filters of the one before it.
        previous = st.session_state.get(f"{K}filters{i - 1}", 16)
        draw_width_and_dropout(f"Block {i + 1}", "filters", "conv_dropout", i,
                               start=min(LIMITS["filters"].high, 2 * previous))
    left, right = st.columns(2)
    left.slider("Convolutions per block", **bounds("convs_per_block"), key=K + "convs_per_block",
                help=HELP["convs_per_block"])
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
    st.number_input("BN statistics momentum", **bounds("bn_momentum"), format="%.2f", key=K + "bn_momentum",
                    help=HELP["bn_momentum"], disabled=not st.session_state[K + "batch_norm"])

    st.markdown("##### Classifier head")
    st.radio("From feature maps to a vector", choices("head"),
             horizontal=True, key=K + "head", help=HELP["head"],
             format_func={"flatten": "flatten", "global_max": "global max pool",
                          "global_avg": "global average pool"}.get)
    st.slider("Dense layers (before the 10-way output)", **bounds("dense_layers"), key=K + "dense_layers",
              help=HELP["dense_layers"])
    for i in range(st.session_state[K + "dense_layers"]):
        draw_width_and_dropout(f"Dense {i + 1}", "units", "dense_dropout", i, start=128)
    st.caption(TEXT["output-layer"])

    st.markdown("##### Input and starting weights")
    left, right = st.columns([5, 4])  # the toggle's label and both radio options fit at 1280 pixels
    left.toggle("Standardize input", key=K + "standardize_input", help=HELP["standardize_input"])
    right.radio("Initialisation", choices("init"), horizontal=True, key=K + "init", help=HELP["init"])
    st.number_input("Logit scale", **bounds("logit_scale"), format="%.3f", key=K + "logit_scale",
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
    right.number_input("Learning rate", **bounds("lr"), format="%g", key=K + "lr", help=HELP["lr"])
    left, right = st.columns(2)
    left.slider("Momentum", **bounds("momentum"), key=K + "momentum", help=HELP["momentum"],
                disabled=s[K + "optimizer"] != "sgd")
    right.number_input("Adam epsilon", **bounds("adam_eps"), format="%.0e", key=K + "adam_eps",
                       help=HELP["adam_eps"], disabled=s[K + "optimizer"] != "adam")
    left, right = st.columns(2)
    left.number_input("Weight decay", **bounds("weight_decay"), format="%g", key=K + "weight_decay",
                      help=HELP["weight_decay"])
    right.radio("Learning-rate schedule", choices("lr_schedule"), horizontal=True,
                key=K + "lr_schedule", help=HELP["lr_schedule"])
    left, right = st.columns(2)
    left.number_input("Batch-norm shift learning-rate factor", **bounds("bias_lr_scale"), format="%g",
                      key=K + "bias_lr_scale", help=HELP["bias_lr_scale"])
    right.number_input("Epochs the stem's bias learns (0: all)", **bounds("stem_bias_epochs"),
                       key=K + "stem_bias_epochs",
                       help=HELP["stem_bias_epochs"], disabled=s[K + "stem"] != "whiten")

    st.markdown("##### Batches and epochs")
    left, right = st.columns(2)
    sizes = sorted({*BATCH_SIZES, s[K + "batch_size"]})
    left.select_slider("Batch size", sizes, key=K + "batch_size", help=HELP["batch_size"])
    right.number_input("Epochs (at most)", **bounds("epochs"), key=K + "epochs", help=HELP["epochs"])

    st.markdown("##### Fighting overfitting")
    left, right = st.columns(2)
    left.radio("Augmentation", choices("augmentation"), horizontal=True, key=K + "augmentation",
               help=HELP["augmentation"])
    right.slider("Label smoothing", **bounds("label_smoothing"), key=K + "label_smoothing",
                 help=HELP["label_smoothing"])
    # Toggles on full rows: in half a column their labels were cut short.
    st.toggle("Early stopping", key=K + "early_stopping", help=HELP["early_stopping"])
    st.toggle("Restore best weights", key=K + "restore_best", help=HELP["restore_best"])
    left, right = st.columns(2)
    left.radio("Monitor", choices("monitor"), horizontal=True, key=K + "monitor",
               help=HELP["monitor"], format_func={"val_loss": "validation loss",
                                                  "val_acc": "validation accuracy"}.get,
               disabled=not s[K + "early_stopping"] and not s[K + "restore_best"])
    right.number_input("Patience (epochs)", **bounds("patience"), key=K + "patience", help=HELP["patience"],
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
    right.number_input("Seed", **bounds("seed"), key=K + "seed", help=HELP["seed"])


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
                   help=TEXT["total-params"].format(total=f"{total:,}"))
    cols[1].metric("Size as float32", f"{total * 4 / 2**20:.2f} MB")
    cols[2].metric("MFLOPs/image", f"{training_flops(model) / 1e6:,.0f}",
                   help=TEXT["mflops"])
    # Only the open view is drawn: the diagram alone brings the browser a graph-layout library.
    app_state.tabs_drawn_when_open("model.view", {
        "Layer table": lambda: draw_layer_table(table), "Diagram": lambda: st.graphviz_chart(dot),
        "Keras-style summary": lambda: st.code(text, language=None)})


def draw_layer_table(table: pd.DataFrame) -> None:
    # Tall enough for every row: a scrolling layer table hides the end of the network.
    st.dataframe(table, hide_index=True, key="model.layer_table", height=35 * (len(table) + 1) + 3,
                 column_config={"layer": st.column_config.TextColumn(width=120),  # "dropout_dense1"
                                "params": st.column_config.NumberColumn(format="localized")})
    st.caption(TEXT["layer-table"])


@st.cache_data(max_entries=8, show_spinner=False)
def first_layer_filters(weights_path: str, mtime: float) -> np.ndarray:
    return first_conv_weights(Path(weights_path))


def draw_filters() -> None:
    runs = app_state.trained_runs()
    if not runs:
        st.info(TEXT["no-trained-model"])
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
    caption = "filters-whiten" if run.model_config.stem == "whiten" else "filters-learned"
    st.caption(TEXT[caption].format(count=len(images), side=weights.shape[-1]))


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
