"""Every setting of a run in one place: ModelConfig, TrainConfig, the presets, and overrides.

Each enumerated setting is declared once, as the ``Literal`` type of its field; its
options (``choices("padding")``), the validation, the Model page's widgets and the
command line's choices are all derived from that type, so adding a setting or an option
is one edit here. Configs are frozen: a preset can be shared by every session and
changed copies are made with ``apply_overrides`` (or ``dataclasses.replace``).

``--set key=value`` (command line) and the Model page change single fields on top of a
preset; keys are the field names of ModelConfig and TrainConfig, which never clash.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal, get_args, get_origin, get_type_hints

Padding = Literal["valid", "same"]
Activation = Literal["relu", "gelu", "tanh", "sigmoid"]
Pooling = Literal["max", "avg"]
Head = Literal["flatten", "global_max", "global_avg"]
Init = Literal["keras", "torch", "dirac"]
Stem = Literal["none", "whiten"]
Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "onecycle", "cosine"]
Augmentation = Literal["none", "keras", "crop_flip", "translate_flip", "translate_altflip"]
# Test-time augmentation: the views of an image whose logits a prediction averages.
TTA = Literal["none", "flip", "flip_translate"]
Monitor = Literal["val_loss", "val_acc"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda", "mps"]

KERNEL_SIZES = (1, 3, 5, 7)
IMAGE_SIDE = 32
# The whitening stem: a 2x2 'valid' convolution whose 12 filters are the whitening
# transform of 2x2x3 image patches, and 12 more that are their negatives.
STEM_KERNEL = 2
STEM_CHANNELS = 24


class ConfigError(ValueError):
    """A configuration value is out of range or unknown."""


@dataclass(frozen=True)
class Limit:
    """The values a numeric setting accepts, ``low`` to ``high``, and how a widget offers them.

    ``open`` names an end that is itself refused (a learning rate must be above 0). A
    widget moves by ``step`` over ``offered`` where that is narrower than what is accepted:
    an open end needs a nearest value, and a slider over all of [0, 1) hides the useful part.
    """

    low: float
    high: float
    step: float | None = None
    open: Literal["low", "high"] | None = None
    offered: tuple[float, float] | None = None

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open == "low" else value >= self.low
        below = value < self.high if self.open == "high" else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.low, self.high))
        if self.high == math.inf:
            return f"{'>' if self.open == 'low' else '>='} {low}"
        if self.open is None:
            return f"{low}..{high}"
        return f"in {'(' if self.open == 'low' else '['}{low}, {high}{')' if self.open == 'high' else ']'}"

    @property
    def widget_range(self) -> tuple[float, float]:
        """The lowest and highest value a widget offers."""
        return self.offered or (self.low, self.high)


# The limits of every numeric setting, for validation and the Model page's widgets alike.
# ``blocks`` and ``dense_layers`` count the entries of conv_filters and dense_units; ``filters``,
# ``units`` and ``dropout`` hold for each entry of conv_filters, dense_units and both dropouts.
# Integer settings have integer limits and float settings float ones (a widget keeps the type).
LIMITS: dict[str, Limit] = {
    "blocks": Limit(1, 6),
    "filters": Limit(1, 1024, step=16),
    "convs_per_block": Limit(1, 4),
    "dense_layers": Limit(0, 4),
    "units": Limit(1, 4096, step=16),
    "dropout": Limit(0.0, 1.0, step=0.05, open="high", offered=(0.0, 0.9)),
    "bn_momentum": Limit(0.0, 1.0, step=0.05, open="low", offered=(0.01, 1.0)),
    "logit_scale": Limit(0.0, 10.0, step=0.01, open="low", offered=(0.01, 10.0)),
    "lr": Limit(0.0, 10.0, step=1e-4, open="low", offered=(1e-5, 10.0)),
    "momentum": Limit(0.0, 1.0, step=0.01, open="high", offered=(0.0, 0.99)),
    "adam_eps": Limit(0.0, 1.0, step=1e-8, open="low", offered=(1e-10, 1e-3)),
    "weight_decay": Limit(0.0, math.inf, step=1e-4, offered=(0.0, 0.1)),
    "bias_lr_scale": Limit(1.0, 1000.0, step=1.0),
    "batch_size": Limit(1, 4096),
    "epochs": Limit(1, 500),
    "label_smoothing": Limit(0.0, 1.0, step=0.05, open="high", offered=(0.0, 0.5)),
    "patience": Limit(1, math.inf, offered=(1, 100)),
    "stem_bias_epochs": Limit(0, 500),
    "seed": Limit(0, 2**31 - 1),
}


def _check_limit(name: str, values: float | tuple, what: str | None = None) -> None:
    """ConfigError unless ``values`` (one, or each of a tuple) lie within ``LIMITS[name]``."""
    limit = LIMITS[name]
    if not all(v in limit for v in (values if isinstance(values, tuple) else (values,))):
        raise ConfigError(f"{what or name} must be {limit}")


def _check_scalar_limits(config: object) -> None:
    """Every field of ``config`` that LIMITS names lies within its limit."""
    for f in fields(config):
        if f.name in LIMITS:
            _check_limit(f.name, getattr(config, f.name))


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _check_choices(config: object) -> None:
    """Every enumerated field holds one of the options its Literal type names."""
    for name, options in _options(type(config)).items():
        if getattr(config, name) not in options:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}")


@dataclass(frozen=True)
class ModelConfig:
    # A fixed first layer that decorrelates neighbouring pixels and colours, computed
    # from the training images before the first step (airbench's whitening init).
    stem: Stem = "none"
    conv_filters: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 1
    kernel_size: int = 3
    padding: Padding = "valid"
    batch_norm: bool = False
    # Learn batch norm's scale; False fixes it at 1 and leaves only its shift to learn.
    bn_scale: bool = True
    # How fast batch norm's running statistics, which evaluation uses, follow the batches
    # (PyTorch's convention: new = (1 - m) * old + m * batch).
    bn_momentum: float = 0.1
    activation: Activation = "relu"
    pooling: Pooling = "max"
    # Pool right after a block's first conv (as the fastest CIFAR trainers do), so the
    # block's later convs run on a quarter of the pixels.
    pool_first: bool = False
    conv_dropout: tuple[float, ...] = (0.25, 0.25, 0.0)
    head: Head = "flatten"
    dense_units: tuple[int, ...] = (128, 64)
    dense_dropout: tuple[float, ...] = (0.5, 0.0)
    # dirac: each conv starts as the identity on its input channels (PyTorch's init on
    # the rest), so a deep stack first passes its input through and learns from there.
    init: Init = "keras"
    standardize_input: bool = False
    # The logits are multiplied by this: a small value keeps the first steps of a high
    # learning rate from saturating the softmax.
    logit_scale: float = 1.0
    num_classes: int = field(default=10, repr=False)

    def __post_init__(self) -> None:
        # Frozen, so the normalised values are set through object.__setattr__.
        normalised = {
            "conv_filters": tuple(int(f) for f in self.conv_filters),
            "dense_units": tuple(int(u) for u in self.dense_units),
            "conv_dropout": _per_layer(self.conv_dropout, len(self.conv_filters), "conv_dropout"),
            "dense_dropout": _per_layer(self.dense_dropout, len(self.dense_units), "dense_dropout")}
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> None:
        _check_choices(self)
        _check_limit("blocks", len(self.conv_filters), "conv_filters: the number of blocks")
        _check_limit("filters", self.conv_filters, "conv filters")
        _check_limit("dense_layers", len(self.dense_units), "dense_units: the number of layers")
        _check_limit("units", self.dense_units, "dense units")
        _check_limit("dropout", self.conv_dropout + self.dense_dropout, "dropout rates")
        _check_scalar_limits(self)
        _check([(self.kernel_size in KERNEL_SIZES, "kernel_size must be 1, 3, 5 or 7")])
        if self.feature_size() <= 0:
            raise ConfigError("the feature map shrinks to nothing: use padding='same', a "
                              "smaller kernel or fewer blocks")

    def stem_side(self) -> int:
        """The side of the map the first block receives: the image, less what the stem trims."""
        return IMAGE_SIDE - (STEM_KERNEL - 1 if self.stem == "whiten" else 0)

    def conv_output_sides(self) -> list[list[int]]:
        """Per block, the side of each conv's output (before any pooling after it), then the
        side the block hands on. A map of side 1 is not pooled any more."""
        size, blocks = self.stem_side(), []
        for _ in self.conv_filters:
            sides = []
            for i in range(self.convs_per_block):
                if self.padding == "valid":
                    size -= self.kernel_size - 1
                sides.append(size)
                if self.pool_first and i == 0:
                    size = _pooled(size)
            if not self.pool_first:
                size = _pooled(size)
            sides.append(size)
            blocks.append(sides)
        return blocks

    def spatial_sizes(self) -> list[int]:
        """Feature-map side after each block (before the head)."""
        return [sides[-1] for sides in self.conv_output_sides()]

    def feature_size(self) -> int:
        """Width of the vector the head hands to the first dense layer."""
        side = self.spatial_sizes()[-1]
        if side <= 0:
            return 0
        return self.conv_filters[-1] * (side * side if self.head == "flatten" else 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        return cls(**_known(cls, values, "model"))


def _pooled(side: int) -> int:
    """The side after a 2x2 pooling; a map smaller than 2 is left as it is."""
    return side // 2 if side >= 2 else side


def _per_layer(rates: float | tuple | list, n: int, name: str) -> tuple[float, ...]:
    """One dropout rate per layer: a scalar applies to all; short lists pad with 0."""
    if isinstance(rates, (int, float)):
        return (float(rates),) * n
    rates = tuple(float(r) for r in rates)
    if len(rates) > n:
        raise ConfigError(f"{name} has {len(rates)} rates for {n} layers")
    return rates + (0.0,) * (n - len(rates))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    # Batch norm's shifts (and the stem's bias) learn this many times faster, with weight
    # decay divided by as much: they are few, and under a small shared learning rate they
    # barely move (airbench's bias_scaler).
    bias_lr_scale: float = 1.0
    adam_eps: float = 1e-7  # Keras' default; PyTorch's is 1e-8
    batch_size: int = 64
    epochs: int = 50
    lr_schedule: Schedule = "constant"
    label_smoothing: float = 0.0
    augmentation: Augmentation = "keras"
    early_stopping: bool = True
    monitor: Monitor = "val_loss"
    patience: int = 10
    restore_best: bool = True
    # The whitening stem's bias learns in this many first epochs and then stays fixed (0: in
    # all of them). Fixed, it spares the first conv its input gradient: the later epochs of
    # quick and fast ran a fifth faster. airbench fixes it after 3 of its 10 epochs.
    stem_bias_epochs: int = 0
    # Lookahead-style weight averaging: every 5 steps the weights move to an average
    # that follows them ever more slowly, ending at the average.
    weight_averaging: bool = False
    # flip: average the logits of the image and its mirror. flip_translate (airbench's second
    # level): that mean gets half the weight, and the mirror means of the image shifted one
    # pixel up-left and one down-right a quarter each; three times the cost of flip.
    tta: TTA = "none"
    precision: Precision = "fp32"
    seed: int = 0
    device: Device = "auto"

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_scalar_limits(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        if "tta_flip" in values:  # runs saved before `tta` had more than one view to add
            values = {k: v for k, v in values.items() if k != "tta_flip"} | \
                {"tta": "flip" if values["tta_flip"] else "none"}
        return cls(**_known(cls, values, "training"))


def _known(cls: type, values: dict, what: str) -> dict:
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {what} settings: {', '.join(sorted(unknown))}")
    return values


@functools.cache  # get_type_hints evaluates every annotation: ms per config otherwise
def _options(cls: type) -> dict[str, tuple]:
    hints = get_type_hints(cls)
    return {name: get_args(hint) for name, hint in hints.items() if get_origin(hint) is Literal}


CHOICES: dict[str, tuple] = {**_options(ModelConfig), **_options(TrainConfig)}


def choices(name: str) -> tuple:
    """The options of an enumerated setting of either config, in their declared order."""
    return CHOICES[name]


# --- presets ----------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    model: ModelConfig
    train: TrainConfig
    # Training images the run takes by default (a subset, validation and test shrinking in
    # proportion); None: all of them. The Train page and the command line start from it.
    train_images: int | None = None


# airbench states its learning rate and weight decay per 1,024 images and independently of
# momentum: 11.5 and 0.0153 at momentum 0.85. PyTorch's SGD on a batch's mean loss needs the
# learning rate scaled to the batch and divided by how much Nesterov momentum lengthens a
# step; it multiplies weight decay by that learning rate, so airbench's decay per step
# (0.0153 * batch / AIRBENCH_STEP_SCALE, 0.05% at 256) is weight_decay = 0.0153 / 11.5 for any
# batch. tests/test_recipes.py checks the steps against airbench's own optimizer.
AIRBENCH_LR, AIRBENCH_WEIGHT_DECAY, AIRBENCH_MOMENTUM = 11.5, 0.0153, 0.85
AIRBENCH_STEP_SCALE = 1024 * (1 + 1 / (1 - AIRBENCH_MOMENTUM))
# airbench's batch norm statistics follow the batches fast (its 0.6 is 1 - m in PyTorch's terms).
# At a high learning rate PyTorch's 0.1 lags the weights: in `fast`'s seed-0 run it put the
# validation accuracy of epochs 3 and 4 at 60% and 58%, against 68% and 71% for the same
# weights with 0.4 (benchmarks/RESULTS.md).
AIRBENCH_BN_MOMENTUM = 0.4
RECIPE_BATCH = 256


def airbench_recipe(filters: tuple[int, int, int], epochs: int, label_smoothing: float = 0.0,
                    stem_bias_epochs: int = 0, tta: TTA = "flip") -> tuple[ModelConfig, TrainConfig]:
    """The ingredients of airbench (Keller Jordan, 2024), the fastest known CIFAR-10
    trainer, at a given width and length: a first layer fixed to whiten 2x2 patches of the
    training images, three blocks of two 'same' convolutions with pooling after the first,
    batch norm with a fixed scale and fast statistics, GELU, global max pooling into logits
    scaled by 1/9; Nesterov SGD on a one-cycle schedule with batch norm's shifts learning 64
    times faster, 2-pixel translation and flips, weight averaging and mirror-averaged
    predictions. benchmarks/RESULTS.md has what each ingredient gave."""
    model = ModelConfig(stem="whiten", conv_filters=filters, convs_per_block=2, padding="same",
                        batch_norm=True, bn_scale=False, bn_momentum=AIRBENCH_BN_MOMENTUM,
                        activation="gelu", pool_first=True, conv_dropout=(0.0, 0.0, 0.0),
                        head="global_max", dense_units=(), dense_dropout=(), init="dirac",
                        standardize_input=True, logit_scale=1 / 9)
    lr = round(AIRBENCH_LR * RECIPE_BATCH / AIRBENCH_STEP_SCALE, 6)
    weight_decay = round(AIRBENCH_WEIGHT_DECAY / AIRBENCH_LR, 6)
    train = TrainConfig(optimizer="sgd", lr=lr, momentum=AIRBENCH_MOMENTUM, weight_decay=weight_decay,
                        bias_lr_scale=64, batch_size=RECIPE_BATCH, epochs=epochs, lr_schedule="onecycle",
                        label_smoothing=label_smoothing, stem_bias_epochs=stem_bias_epochs,
                        augmentation="translate_flip",
                        early_stopping=False, weight_averaging=True, tta=tta, precision="auto")
    return model, train


# What each reaches on the official CIFAR-10 test batch (seed 0) and costs on two cores of an
# AMD EPYC with native bfloat16, and on an NVIDIA H200 (benchmarks/RESULTS.md).
QUICK_DESCRIPTION = (
    "A run short enough to watch in class, with every ingredient of the fastest known CIFAR-10 "
    "trainer (airbench) on a small network of 32/64/128 filters: a first layer that whitens "
    "2x2 patches of the training images, batch norm with a fixed scale, GELU, SGD with Nesterov "
    "momentum on a one-cycle learning rate, 2-pixel shifts and flips, weight averaging and "
    "mirror-averaged predictions. Three epochs of 119 MFLOP per training image, the first "
    "layer's bias fixed after the first epoch: 85.3% test accuracy in about a minute on two "
    "CPU cores, 2 seconds on an NVIDIA H200 GPU.")
CLASS_DESCRIPTION = (
    "Made for a class training at the same time: quick's network and recipe (32/64/128 filters, "
    "the whitening first layer, batch norm, one-cycle Nesterov SGD, shifts and flips, weight "
    "averaging, mirror-averaged predictions) for two epochs on 24,000 of the training images, "
    "validation and test sets shrinking in proportion: 76.1% test accuracy (seed 0) in 52 seconds "
    "of one CPU core, about half that on two. Fewer images or a narrower network cost more "
    "accuracy than they save time (benchmarks/RESULTS.md).")
FAST_DESCRIPTION = (
    "The same recipe as quick on a network twice as wide (64/128/256 filters) for twelve epochs, "
    "the first layer's bias fixed after the third, 393 MFLOP per training image, and predictions "
    "averaged over the image, its mirror and both shifted by a pixel: 92.8% test accuracy in "
    "about 11 minutes on two CPU cores (8 seconds on an H200 GPU with the mirror alone).")
BEST_DESCRIPTION = (
    "airbench's own network (64/256/256 filters, 709 MFLOP per training image) with its label "
    "smoothing of 0.2, for twenty epochs, the first layer's bias fixed after the third, and "
    "predictions averaged over the image, its mirror and both shifted by a pixel: 94.1% test "
    "accuracy in about half an hour on two CPU cores (14 seconds on an H200 GPU with the "
    "mirror alone), the most accurate preset.")

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(
        "baseline", "The presentation's model",
        "Exactly the network and recipe of the presentation: three 3x3 conv layers "
        "(32/64/128 filters, ReLU, 2x2 max-pooling, dropout 0.25), dense 128 and 64, softmax "
        "over 10 classes; 167,818 parameters. Adam with Keras' defaults, batch 64, up to 50 "
        "epochs, early stopping on validation loss with patience 10, and the presentation's "
        "augmentation (rotation 20 degrees, shifts of 20%, horizontal flips). Arithmetic "
        "runs in bfloat16 where the processor supports it natively. The one "
        "difference in substance is the fix: images are read with their colour channels in the right "
        "order, which alone lifts accuracy from about 49% to about 72%.",
        ModelConfig(), TrainConfig(precision="auto")),
    Preset(
        "baseline-bn", "Baseline + batch norm",
        "The baseline with batch normalisation between each convolution and its "
        "activation, as the presentation's slides describe but its code left out. Each "
        "layer then sees inputs with a steady scale, so the same learning rate makes "
        "faster progress per epoch.",
        ModelConfig(batch_norm=True), TrainConfig(precision="auto")),
    Preset("quick", "Classroom run (one minute)", QUICK_DESCRIPTION,
           *airbench_recipe((32, 64, 128), 3, stem_bias_epochs=1)),
    Preset("class", "A class at once (under a minute)", CLASS_DESCRIPTION,
           *airbench_recipe((32, 64, 128), 2, stem_bias_epochs=1), train_images=24_000),
    Preset("fast", "Most accuracy in ten minutes", FAST_DESCRIPTION,
           *airbench_recipe((64, 128, 256), 12, stem_bias_epochs=3, tta="flip_translate")),
    Preset("best", "Most accuracy in half an hour", BEST_DESCRIPTION,
           *airbench_recipe((64, 256, 256), 20, label_smoothing=0.2, stem_bias_epochs=3,
                            tta="flip_translate")),
]}

MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


# --- who trained a run ------------------------------------------------------------

OWNER_MAX_LENGTH = 40
# Letters of any script, digits, spaces and . - _ ': enough for names, nothing that could
# be read as markup, a path or a control character wherever a name is shown.
_OWNER_PATTERN = re.compile(r"[^\W_]|[0-9 .\-_']")


def check_owner(name: str | None) -> str | None:
    """A run's optional owner name, trimmed; None when empty. ConfigError says what is wrong."""
    name = " ".join((name or "").split())
    if not name:
        return None
    if len(name) > OWNER_MAX_LENGTH:
        raise ConfigError(f"a name has at most {OWNER_MAX_LENGTH} characters; this one has {len(name)}")
    bad = sorted({c for c in name if not _OWNER_PATTERN.fullmatch(c)})
    if bad:
        raise ConfigError("a name may hold letters, digits, spaces and . - _ ' only, not "
                          + " ".join(repr(c) for c in bad))
    return name


# --- overrides ----------------------------------------------------------------------

def parse_value(text: str) -> object:
    """'0.5' -> 0.5, '32,64' -> (32, 64), 'true' -> True, 'relu' -> 'relu'."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part.strip())
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def apply_overrides(model: ModelConfig, train: TrainConfig,
                    overrides: dict[str, object]) -> tuple[ModelConfig, TrainConfig]:
    """New configs with ``overrides`` applied; unknown keys or bad values raise ConfigError."""
    model_changes = {k: parse_sizes(v) if k in ("conv_filters", "dense_units") else v
                     for k, v in overrides.items() if k in MODEL_KEYS}
    train_changes = {k: v for k, v in overrides.items() if k in TRAIN_KEYS}
    unknown = set(overrides) - MODEL_KEYS - TRAIN_KEYS
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}; settings are: "
                          f"{', '.join(sorted(MODEL_KEYS | TRAIN_KEYS))}")
    # A new number of blocks or dense layers keeps the preset's dropout rates where
    # they still apply (padding with 0), unless the rates are given too.
    for sizes, rates in (("conv_filters", "conv_dropout"), ("dense_units", "dense_dropout")):
        if sizes in model_changes and rates not in model_changes:
            n = len(parse_sizes(model_changes[sizes]))
            model_changes[rates] = (tuple(getattr(model, rates)) + (0.0,) * n)[:n]
    try:
        return replace(model, **model_changes), replace(train, **train_changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def parse_sizes(value: object) -> tuple:
    """A layer-size setting as a tuple: 64 -> (64,), '' or 'none' -> ()."""
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if value in ("", "none", None):
        return ()
    return (value,)


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def changes_from_preset(preset: str, model: ModelConfig, train: TrainConfig) -> list[str]:
    """'name: preset value → current value' for every setting that differs from the preset."""
    base = PRESETS[preset]
    old = {**base.model.to_dict(), **base.train.to_dict()}
    new = {**model.to_dict(), **train.to_dict()}
    return [f"{key}: {old[key]} → {new[key]}" for key in new if new[key] != old.get(key)]


# --- a flat form of both configs (the Model page's widgets) ------------------------------

# The per-layer settings become one value per layer (``filters0``, ``conv_dropout0``, ...)
# plus a count; every other field keeps its name, so a field added to either config
# gets a form value without an edit here.
PER_LAYER = ("conv_filters", "conv_dropout", "dense_units", "dense_dropout")
MODEL_SCALARS = tuple(f.name for f in fields(ModelConfig) if f.name not in (*PER_LAYER, "num_classes"))
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


def form_values(model: ModelConfig, train: TrainConfig) -> dict[str, object]:
    """Both configs as flat form values: ``blocks``, ``filters<i>``, ``conv_dropout<i>``,
    ``dense_layers``, ``units<i>``, ``dense_dropout<i>`` and every other field by its name."""
    values: dict[str, object] = {"blocks": len(model.conv_filters),
                                 "dense_layers": len(model.dense_units)}
    for i, (filters, rate) in enumerate(zip(model.conv_filters, model.conv_dropout, strict=True)):
        values[f"filters{i}"], values[f"conv_dropout{i}"] = filters, float(rate)
    for i, (units, rate) in enumerate(zip(model.dense_units, model.dense_dropout, strict=True)):
        values[f"units{i}"], values[f"dense_dropout{i}"] = units, float(rate)
    values.update({name: getattr(model, name) for name in MODEL_SCALARS})
    values.update(train.to_dict())
    return values


def configs_from_form(values: dict[str, object]) -> tuple[ModelConfig, TrainConfig]:
    """The configs that ``form_values`` describes; ConfigError for an invalid combination."""
    blocks, dense = int(values["blocks"]), int(values["dense_layers"])
    try:
        model = ModelConfig(
            conv_filters=tuple(values[f"filters{i}"] for i in range(blocks)),
            conv_dropout=tuple(values[f"conv_dropout{i}"] for i in range(blocks)),
            dense_units=tuple(values[f"units{i}"] for i in range(dense)),
            dense_dropout=tuple(values[f"dense_dropout{i}"] for i in range(dense)),
            **{name: values[name] for name in MODEL_SCALARS})
        train = TrainConfig(**{name: values[name] for name in TRAIN_FIELDS})
    except (TypeError, ValueError) as err:  # ConfigError is a ValueError
        raise ConfigError(str(err)) from None
    return model, train
