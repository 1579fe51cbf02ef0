"""The CNN: a ModelConfig dataclass and the nn.Module it describes.

The network is a stack of conv blocks, then a classifier head:

    block i:  convs_per_block x [Conv kxk -> (BatchNorm) -> activation] -> pool 2x2 -> (Dropout)
    head:     Flatten (or global max/avg pool) -> Dense units with activation and dropout -> Dense 10

The defaults are the presentation's Keras model exactly (167,818 parameters). The module
returns logits; softmax is applied by the loss and by prediction. Input is a float
tensor (N, 3, 32, 32) with values in [0, 1]; the model standardises it itself when
``standardize_input`` is set, so every caller preprocesses images the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
from torch import nn

# Per-channel mean and std of the CIFAR-10 training images, in [0, 1] units.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ConfigError(ValueError):
    """A configuration value is out of range or unknown."""


@dataclass
class ModelConfig:
    conv_filters: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 1
    kernel_size: int = 3
    padding: Literal["valid", "same"] = "valid"
    batch_norm: bool = False
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    pooling: Literal["max", "avg"] = "max"
    # Pool right after a block's first conv (as the fastest CIFAR trainers do), so the
    # block's later convs run on a quarter of the pixels.
    pool_first: bool = False
    conv_dropout: tuple[float, ...] = (0.25, 0.25, 0.0)
    head: Literal["flatten", "global_max", "global_avg"] = "flatten"
    dense_units: tuple[int, ...] = (128, 64)
    dense_dropout: tuple[float, ...] = (0.5, 0.0)
    init: Literal["keras", "torch"] = "keras"
    standardize_input: bool = False
    num_classes: int = field(default=10, repr=False)

    def __post_init__(self) -> None:
        self.conv_filters = tuple(int(f) for f in self.conv_filters)
        self.dense_units = tuple(int(u) for u in self.dense_units)
        self.conv_dropout = _per_layer(self.conv_dropout, len(self.conv_filters), "conv_dropout")
        self.dense_dropout = _per_layer(self.dense_dropout, len(self.dense_units), "dense_dropout")
        self.validate()

    def validate(self) -> None:
        checks = [
            (1 <= len(self.conv_filters) <= 6, "conv_filters needs 1 to 6 blocks"),
            (all(1 <= f <= 1024 for f in self.conv_filters), "conv filters must be 1..1024"),
            (1 <= self.convs_per_block <= 4, "convs_per_block must be 1..4"),
            (self.kernel_size in (1, 3, 5, 7), "kernel_size must be 1, 3, 5 or 7"),
            (self.padding in ("valid", "same"), "padding must be 'valid' or 'same'"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}"),
            (self.pooling in ("max", "avg"), "pooling must be 'max' or 'avg'"),
            (self.head in ("flatten", "global_max", "global_avg"),
             "head must be flatten, global_max or global_avg"),
            (all(1 <= u <= 4096 for u in self.dense_units), "dense units must be 1..4096"),
            (all(0 <= p < 1 for p in self.conv_dropout + self.dense_dropout),
             "dropout rates must be in [0, 1)"),
            (self.init in ("keras", "torch"), "init must be 'keras' or 'torch'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.feature_size() <= 0:
            raise ConfigError("the feature map shrinks to nothing: use padding='same', a "
                              "smaller kernel or fewer blocks")

    def spatial_sizes(self) -> list[int]:
        """Feature-map side after each block (before the head)."""
        return [sides[-1] for sides in self.conv_output_sides()]

    def conv_output_sides(self) -> list[list[int]]:
        """Per block, the side of each conv's output (before any pooling after it)."""
        size, blocks = 32, []
        for _ in self.conv_filters:
            sides = []
            for i in range(self.convs_per_block):
                if self.padding == "valid":
                    size -= self.kernel_size - 1
                sides.append(size)
                if self.pool_first and i == 0:
                    size = size // 2 if size >= 2 else size
            if not self.pool_first:
                size = size // 2 if size >= 2 else size
            sides.append(size)
            blocks.append(sides)
        return blocks

    def feature_size(self) -> int:
        side = self.spatial_sizes()[-1]
        if side <= 0:
            return 0
        return self.conv_filters[-1] * (side * side if self.head == "flatten" else 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**values)


def _per_layer(rates: float | tuple | list, n: int, name: str) -> tuple[float, ...]:
    """One dropout rate per layer: a scalar applies to all; short lists pad with 0."""
    if isinstance(rates, (int, float)):
        return (float(rates),) * n
    rates = tuple(float(r) for r in rates)
    if len(rates) > n:
        raise ConfigError(f"{name} has {len(rates)} rates for {n} layers")
    return rates + (0.0,) * (n - len(rates))


class CifarCNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        act = ACTIVATIONS[c.activation]
        pool = nn.MaxPool2d if c.pooling == "max" else nn.AvgPool2d
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, side, n_conv = 3, 32, 0
        for block, filters in enumerate(c.conv_filters, start=1):
            for i in range(c.convs_per_block):
                n_conv += 1
                layers[f"conv{n_conv}"] = nn.Conv2d(
                    channels, filters, c.kernel_size, padding=0 if c.padding == "valid" else "same",
                    bias=not c.batch_norm)
                channels = filters
                side -= c.kernel_size - 1 if c.padding == "valid" else 0
                if c.pool_first and i == 0 and side >= 2:
                    layers[f"pool{block}"] = pool(2)
                    side //= 2
                if c.batch_norm:
                    layers[f"bn{n_conv}"] = nn.BatchNorm2d(filters)
                layers[f"{c.activation}{n_conv}"] = act()
            if not c.pool_first and side >= 2:
                layers[f"pool{block}"] = pool(2)
                side //= 2
            if c.conv_dropout[block - 1] > 0:
                layers[f"dropout{block}"] = Dropout(c.conv_dropout[block - 1])
        if c.head == "flatten":
            layers["flatten"] = nn.Flatten()
        else:
            global_pool = nn.AdaptiveMaxPool2d if c.head == "global_max" else nn.AdaptiveAvgPool2d
            layers["global_pool"] = global_pool(1)
            layers["flatten"] = nn.Flatten()
        width = c.feature_size()
        for i, (units, rate) in enumerate(zip(c.dense_units, c.dense_dropout), start=1):
            layers[f"dense{i}"] = nn.Linear(width, units)
            layers[f"{c.activation}_dense{i}"] = act()
            if rate > 0:
                layers[f"dropout_dense{i}"] = Dropout(rate)
            width = units
        layers["logits"] = nn.Linear(width, c.num_classes)
        self.layers = nn.Sequential(layers)
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        if c.init == "keras":
            self.apply(_keras_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (N, 3, 32, 32) in [0, 1]."""
        if self.config.standardize_input:
            x = (x - self.mean) / self.std
        return self.layers(x)

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        return [(n, m) for n, m in self.layers.named_children() if isinstance(m, nn.Conv2d)]


class Dropout(nn.Dropout):
    """nn.Dropout, with a faster mask on the CPU.

    PyTorch's CPU dropout draws one random number per element with a scalar generator
    and took a fifth of the baseline's training step. Here each random 64-bit integer
    gives eight bytes, compared with the rate in steps of 1/256 (0.25 and 0.5 exactly),
    which makes the layer about 6x faster. Other devices use the built-in kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        threshold = round(self.p * 256)
        if not 0 < threshold < 256:  # rates within 1/512 of 0 or 1: bytes cannot express them
            return super().forward(x)
        n = x.numel()
        # Draw in the tensor's memory order (channels_last or not), then view as x.
        order = x.permute(0, 2, 3, 1) if x.dim() == 4 and not x.is_contiguous() else x
        random_bytes = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64,
                                     device=x.device).view(torch.uint8)[:n]
        keep = random_bytes.view(order.shape) >= threshold
        if order is not x:
            keep = keep.permute(0, 3, 1, 2)
        return x * keep * (256 / (256 - threshold))


def _keras_init(module: nn.Module) -> None:
    """Keras' defaults: Glorot-uniform kernels and zero biases (PyTorch uses Kaiming-uniform)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(config: ModelConfig) -> CifarCNN:
    return CifarCNN(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_table(model: CifarCNN) -> list[LayerRow]:
    """One row per layer with its real output shape (H, W, C as Keras prints it).

    Shapes come from a forward pass with hooks, so the table can never disagree with
    the module. Activations are folded into the layer before them, as Keras shows them.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, module in model.layers.named_children()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    rows, act_types = [], tuple(ACTIVATIONS.values())
    for name, module in model.layers.named_children():
        if isinstance(module, act_types):
            continue
        shape = shapes[name]
        if len(shape) == 3:  # (C, H, W) -> (H, W, C)
            shape = (shape[1], shape[2], shape[0])
        kind = type(module).__name__
        # The activation follows batch norm where there is one, else the conv or dense layer.
        activated = nn.BatchNorm2d if model.config.batch_norm else nn.Conv2d
        if isinstance(module, (activated, nn.Linear)) and name != "logits":
            kind += f" + {model.config.activation}"
        if name == "logits":
            kind += " + softmax"
        rows.append(LayerRow(name, kind, shape, sum(p.numel() for p in module.parameters())))
    return rows


def summary(model: CifarCNN) -> str:
    """A Keras-style text summary ending in ``Total params: N``."""
    rows = layer_table(model)
    header = f"{'Layer (type)':<34}{'Output Shape':<20}{'Param #':>10}"
    rule = "=" * len(header)
    lines = [header, rule]
    for row in rows:
        shape = "(None, " + ", ".join(str(s) for s in row.output_shape) + ")"
        lines.append(f"{row.name + ' (' + row.kind + ')':<34}{shape:<20}{row.params:>10,}")
    total = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += [rule, f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", f"Total params: {total:,}"]
    return "\n".join(lines)


def training_flops(config: ModelConfig) -> float:
    """Approximate FLOPs to train on one image (forward multiply-adds x 2, x 3 for backward)."""
    macs, channels = 0, 3
    for filters, sides in zip(config.conv_filters, config.conv_output_sides()):
        for side in sides[:-1]:
            macs += side * side * config.kernel_size ** 2 * channels * filters
            channels = filters
    width = config.feature_size()
    for units in (*config.dense_units, config.num_classes):
        macs += width * units
        width = units
    return 6.0 * macs

