"""The CNN that a ModelConfig describes: its layers, input preparation and prediction.

The network is a stack of conv blocks, then a classifier head:

    stem:     (2x2 whitening conv -> activation)
    block i:  convs_per_block x [Conv kxk -> (BatchNorm) -> activation] -> pool 2x2 -> (Dropout)
    head:     Flatten (or global max/avg pool) -> Dense units with activation and dropout -> Dense 10

The defaults are the presentation's Keras model exactly (167,818 parameters). The module
returns logits; softmax is applied by the loss and by prediction. Input is a float
tensor (N, 3, 32, 32) with values in [0, 1] (``to_input`` makes it from stored uint8
pixels); the model standardises it itself when ``standardize_input`` is set, so every
caller preprocesses images the same way. ``predict_logits`` is the one way to run a
trained model on stored images, for evaluation, serving and validation alike, and
``tta_logits`` the one place where test-time augmentation averages views.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import STEM_CHANNELS, STEM_KERNEL, TTA, ModelConfig
from .devices import autocast

# Per-channel mean and std of the CIFAR-10 training images, in [0, 1] units.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
# A non-decreasing activation commutes with max pooling: act(max(a, b)) == max(act(a), act(b)),
# and the gradient reaches the same input. GELU dips below zero on its way down, so it does not.
NON_DECREASING = (nn.ReLU, nn.Tanh, nn.Sigmoid)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> float (N, 3, 32, 32) in [0, 1], channels_last in memory.

    The one conversion from stored pixels to network input: training, prediction,
    explanations and the augmentation preview all go through it.
    """
    return images.permute(0, 3, 1, 2).float().div_(255)


class CifarCNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        act = ACTIVATIONS[c.activation]
        pool = nn.MaxPool2d if c.pooling == "max" else nn.AvgPool2d
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, n_conv = 3, 0
        if c.stem == "whiten":
            layers["stem"] = nn.Conv2d(3, STEM_CHANNELS, STEM_KERNEL)
            layers[f"{c.activation}0"] = act()
            channels = STEM_CHANNELS
        for block, (filters, sides) in enumerate(zip(c.conv_filters, c.conv_output_sides()), start=1):
            for i in range(c.convs_per_block):
                n_conv += 1
                layers[f"conv{n_conv}"] = nn.Conv2d(
                    channels, filters, c.kernel_size, padding=0 if c.padding == "valid" else "same",
                    bias=not c.batch_norm)
                channels = filters
                if c.pool_first and i == 0 and sides[0] >= 2:
                    layers[f"pool{block}"] = pool(2)
                if c.batch_norm:
                    layers[f"bn{n_conv}"] = nn.BatchNorm2d(filters, momentum=c.bn_momentum)
                    layers[f"bn{n_conv}"].weight.requires_grad_(c.bn_scale)
                layers[f"{c.activation}{n_conv}"] = act()
            if not c.pool_first and sides[-2] >= 2:
                layers[f"pool{block}"] = pool(2)
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
        elif c.init == "dirac":
            for name, conv in self.conv_layers():
                if name != "stem":
                    nn.init.dirac_(conv.weight.data[:conv.in_channels])
        if c.stem == "whiten":
            self.layers.stem.weight.requires_grad_(False)  # set from the data by init_whitening
        self.running_order = _pool_before_activation(list(self.layers))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """What the first layer receives for images in [0, 1]: standardised when configured."""
        if self.config.standardize_input:
            return (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images (N, 3, 32, 32) in [0, 1]."""
        x = self.standardize(x)
        for layer in self.running_order:
            x = layer(x)
        return x * self.config.logit_scale if self.config.logit_scale != 1 else x

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        return [(n, m) for n, m in self.layers.named_children() if isinstance(m, nn.Conv2d)]

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of ``images`` (float (N, 3, 32, 32) in [0, 1]).

        The 12 filters are the eigenvectors of the patches' covariance, each scaled by
        1/sqrt(its eigenvalue), so the stem's outputs are uncorrelated with unit variance;
        12 more are their negatives, so a ReLU or GELU after it loses no information.
        """
        x = self.standardize(images.float())
        k = STEM_KERNEL
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T.double()))
        order = eigenvalues.argsort(descending=True)
        filters = (eigenvectors[:, order].T / (eigenvalues[order] + eps).sqrt()[:, None]).float()
        filters = filters.reshape(-1, 3, k, k)
        stem = self.layers.stem
        stem.weight.copy_(torch.cat([filters, -filters]).to(stem.weight))
        stem.bias.zero_()


def _pool_before_activation(layers: list[nn.Module]) -> list[nn.Module]:
    """The layers in the order ``forward`` runs them: each non-decreasing activation that a
    max pooling follows is swapped with it, which computes the same thing.

    The activation (forward and backward) then touches a quarter of the values: the
    baseline's training step ran 20% faster (benchmarks/RESULTS.md). ``layers`` keeps the
    textbook order, which the layer table and the explanations show.
    """
    order = list(layers)
    for i in range(len(order) - 1):
        if isinstance(order[i], NON_DECREASING) and isinstance(order[i + 1], nn.MaxPool2d):
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


class Dropout(nn.Dropout):
    """nn.Dropout, with a faster mask on the CPU.

    PyTorch's CPU dropout draws one random number per element with a scalar generator
    and took a fifth of the baseline's training step. Here each random 64-bit integer
    gives eight bytes, compared with the rate in steps of 1/256 (0.25 and 0.5 exactly),
    which makes the layer about 6x faster. Other devices use the built-in kernel.

    The comparison is done as arithmetic in the activation's dtype, clamp(byte - threshold
    + 1, 0, 1), a 0/1 mask of the same type as ``x``: on the CPU a comparison or a
    multiplication by a bool mask takes a slower path than these vectorised ones (the
    baseline's first dropout, forward and backward: 0.9-1.2 ms against 2.1-2.2 ms, and its
    whole step 5-6% faster; benchmarks/dropout.py). The values are the same.
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
        keep = random_bytes.view(order.shape).to(x.dtype).sub_(threshold - 1).clamp_(0, 1)
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


# How much each view of test-time augmentation counts: the image and its mirror, then the mirror
# pairs of the image shifted one pixel up-left and one pixel down-right (tta_views' order).
VIEW_WEIGHTS: dict[TTA, tuple[float, ...]] = {
    "none": (1.0,), "flip": (1 / 2, 1 / 2), "flip_translate": (1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8)}


def tta_views(x: torch.Tensor, tta: TTA) -> list[torch.Tensor]:
    """The views of images ``x`` (N, 3, 32, 32) that ``tta`` averages (config.TrainConfig.tta),
    the shifted ones with their edges reflected as in training."""
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(3)]
    side = x.shape[-1]
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :side, :side], padded[..., 2:, 2:]
    return [x, x.flip(3), up_left, up_left.flip(3), down_right, down_right.flip(3)]


def tta_logits(model: nn.Module, x: torch.Tensor, tta: TTA) -> torch.Tensor:
    """The model's float32 logits for input ``x`` (N, 3, 32, 32), averaged over the views that
    ``tta`` names with their ``VIEW_WEIGHTS``.

    All views go through the network as one batch: one call per layer rather than one per
    view and layer. In a server each call hands Python's interpreter lock to the other
    threads and waits to get it back: with other threads busy in Python, a photo's six
    views one by one took three to four times as long as one batch of six
    (benchmarks/contention.py).
    """
    views = tta_views(x, tta)
    logits = model(torch.cat(views) if len(views) > 1 else x).float()
    per_view = logits.unflatten(0, (len(views), -1)).unbind(0)
    return sum(weight * view for weight, view in zip(VIEW_WEIGHTS[tta], per_view, strict=True))


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   bf16: bool = False, tta: TTA = "none", batch_size: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images (N, 32, 32, 3).

    Batches default to 250 network inputs on the CPU, counting each view of test-time
    augmentation (250 images, or 41 with their six views): the activations of 1,000 took
    about 270 MB (baseline) to 540 MB (fast) at once, against 70 and 150 MB, and the
    smaller batches also ran 25% faster (they stay in the cache). GPUs get 1,000.
    """
    inputs = batch_size or (250 if device.type == "cpu" else 1000)
    batch_size = max(1, inputs // len(VIEW_WEIGHTS[tta]))
    model.eval()
    images = torch.as_tensor(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size].to(device))
        with autocast(device, bf16):
            logits = tta_logits(model, x, tta)
        out.append(logits.cpu())
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(out) if out else torch.empty(0, 10)


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
        if isinstance(module, (activated, nn.Linear)) and name != "logits" or name == "stem":
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


def training_flops(config: ModelConfig, stem_fixed: bool = False) -> float:
    """Approximate FLOPs to train on one image (forward multiply-adds x 2, x 3 for backward).

    ``stem_fixed``: once the whitening stem's bias is fixed (``stem_bias_epochs``), nothing
    before the first convolution learns, and its input gradient, a third of its cost, is
    not computed.
    """
    macs, channels, first_conv = 0, 3, None
    if config.stem == "whiten":
        macs += config.stem_side() ** 2 * STEM_KERNEL ** 2 * 3 * STEM_CHANNELS
        channels = STEM_CHANNELS
    for filters, sides in zip(config.conv_filters, config.conv_output_sides()):
        for side in sides[:-1]:
            conv = side * side * config.kernel_size ** 2 * channels * filters
            first_conv = conv if first_conv is None else first_conv
            macs += conv
            channels = filters
    width = config.feature_size()
    for units in (*config.dense_units, config.num_classes):
        macs += width * units
        width = units
    skipped = first_conv if stem_fixed and config.stem == "whiten" else 0
    return 6.0 * macs - 2.0 * skipped

