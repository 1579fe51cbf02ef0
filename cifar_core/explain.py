"""Where the network looked, and what each layer saw: Grad-CAM, saliency and feature maps.

All three take one uint8 image (32, 32, 3) and a trained ``CifarCNN``. They run the
model's layers one by one instead of registering hooks, so a model shared by several
sessions of the app (one cached copy, used from several threads) is never changed, and
gradients are taken with ``torch.autograd.grad`` so no parameter's ``.grad`` is written.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a conv layer's activations by
the mean gradient of the class score over that channel, adds the channels up and keeps
the positive part: the places whose features raise the score of that class. It is as
sharp as the layer is large: the baseline's last conv layer is 4x4, so its map is a few
soft blobs. Placed where those 4x4 cells really look (their receptive fields are
centred on pixels 8.5 to 20.5, see ``upsample_to_input``) the blobs sit on the object in
most test images of a trained baseline, and the map of a class the image is not
changes completely. ``gradcam`` also takes an earlier conv layer (13x13 in the
baseline), which is sharper and traces outlines, but is less specific to the class.

A saliency map (Simonyan et al., 2013) is the gradient of the class score with respect
to the input pixels: pixel-sharp but noisy. ``saliency`` averages it over a few noisy
copies of the image (SmoothGrad, Smilkov et al., 2017). On the baseline and the quick
preset, trained on the real data, it is a scatter of single pixels over the object and
the background alike, and nearly the same for every class, so the app shows Grad-CAM
first and saliency as the second opinion.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import ACTIVATIONS, CifarCNN, to_input

_ACTIVATION_TYPES = tuple(ACTIVATIONS.values())


def _input(model: CifarCNN, pixels: np.ndarray) -> torch.Tensor:
    """uint8 (32, 32, 3) -> float (1, 3, 32, 32) in [0, 1] on the model's device."""
    pixels = np.asarray(pixels)
    if pixels.shape != (32, 32, 3):
        raise ValueError(f"expected one 32x32 RGB image (32, 32, 3), got shape {pixels.shape}")
    device = next(model.parameters()).device
    return to_input(torch.from_numpy(np.ascontiguousarray(pixels))[None].to(device))


def _check_class(model: CifarCNN, target_class: int) -> int:
    classes = model.config.num_classes
    if not 0 <= int(target_class) < classes:
        raise ValueError(f"target_class must be 0..{classes - 1}, got {target_class}")
    return int(target_class)


def _stages(model: CifarCNN, x: torch.Tensor) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """Run the model layer by layer in its textbook order, yielding (name, module, output).

    ``CifarCNN.forward`` pools some activations' inputs instead of their outputs, which
    gives the same logits; here each activation's output has the size the layer table
    shows, before its pooling.
    """
    x = model.standardize(x)
    for name, module in model.layers.named_children():
        x = module(x)
        yield name, module, x


def conv_stage_names(model: CifarCNN) -> dict[str, str]:
    """Each conv layer's name -> the name of the layer whose output is its feature map.

    That is the activation that follows the conv (after batch norm, where there is one):
    what the next layer receives. With ``pool_first`` a block's first conv is pooled
    before its activation, so that map is the pooled size.
    """
    names = list(dict(model.layers.named_children()))
    modules = dict(model.layers.named_children())
    stages = {}
    for i, name in enumerate(names):
        if not isinstance(modules[name], nn.Conv2d):
            continue
        stage = name
        for later in names[i + 1:]:
            if isinstance(modules[later], (nn.Conv2d, nn.Flatten, nn.Linear)):
                break
            if isinstance(modules[later], _ACTIVATION_TYPES):
                stage = later
                break
        stages[name] = stage
    return stages


class _eval_mode:
    """Dropout off and batch norm on its running statistics, then the previous mode back."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        if self.was_training:
            self.model.eval()

    def __exit__(self, *_exc: object) -> None:
        if self.was_training:
            self.model.train()


def _normalise(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its maximum; an all-zero map stays zero."""
    if isinstance(heat, torch.Tensor):
        heat = heat.detach().float().cpu().numpy()
    heat = np.asarray(heat, dtype=np.float64)
    top = float(heat.max())
    if top <= 0 or not np.isfinite(top):
        return np.zeros(heat.shape, dtype=np.float32)
    return np.clip(heat / top, 0, 1).astype(np.float32)


def gradcam(model: CifarCNN, pixels: np.ndarray, target_class: int,
            layer: str | None = None) -> np.ndarray:
    """Grad-CAM map (32, 32) in [0, 1] for ``target_class`` on one uint8 image (32, 32, 3).

    ``layer`` names a conv layer (``conv1``, ``conv2``, ...); by default the last one.
    Its activation map (after batch norm and the activation function) is weighted
    channel by channel with the spatially averaged gradient of the class's logit, summed,
    clipped at zero, brought to 32x32 by ``upsample_to_input`` and divided by its maximum.
    A map that is zero everywhere means nothing in the image raises that class's score.
    """
    target_class = _check_class(model, target_class)
    stages = conv_stage_names(model)
    if not stages:
        raise ValueError("the model has no conv layer")
    layer = layer or list(stages)[-1]
    if layer not in stages:
        raise ValueError(f"{layer!r} is not a conv layer; choose from {', '.join(stages)}")
    stage = stages[layer]
    x = _input(model, pixels)
    with _eval_mode(model), torch.enable_grad():
        activation = None
        for name, _module, out in _stages(model, x):
            if name == stage:
                activation = out
        logits = out
        (grad,) = torch.autograd.grad(logits[0, target_class], activation)
    weights = grad[0].mean(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    cam = F.relu((weights * activation[0]).sum(0))  # (h, w)
    return _normalise(upsample_to_input(model, stage, cam.detach().float().cpu().numpy()))


def cell_centres(model: CifarCNN, stage: str, cells: int) -> np.ndarray:
    """Where the cells of a layer's output sit on the input: their receptive fields' centres.

    Input pixel i has its centre at i. A k x k conv with padding p moves the first
    centre by ((k - 1) / 2 - p) steps of the input grid; a stride (pooling) multiplies
    the step. For the baseline's valid convolutions the 4x4 map of conv3 is centred on
    pixels 8.5, 12.5, 16.5 and 20.5: the middle of the image, not spread to its edges
    as a plain resize would place it (3.5 ... 27.5).
    """
    first, step = 0.0, 1.0
    for name, module in model.layers.named_children():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (_pair(getattr(module, attr)) for attr in ("kernel_size", "stride", "padding"))
            if module.padding == "same":  # torch keeps the word; odd kernels pad (k - 1) / 2
                p = (k - 1) // 2
            first += ((k - 1) / 2 - p) * step
            step *= s
        if name == stage:
            break
    return first + step * np.arange(cells)


def _pair(value: object) -> int:
    if isinstance(value, str):
        return 0
    return int(value[0]) if isinstance(value, tuple) else int(value)


def upsample_to_input(model: CifarCNN, stage: str, cam: np.ndarray) -> np.ndarray:
    """A layer's (h, w) map -> (32, 32), placed where its cells look.

    Each cell's value is spread as a tent over one grid step either side of its
    receptive-field centre: linear between neighbouring centres, fading to zero one
    step beyond the outermost ones. Done as two small matrix products (rows, then columns).

    Why not a plain resize: for the baseline's valid convolutions it stretches the 4x4
    map from the middle of the image to its edges, so an aeroplane in the centre lit up
    a corner. Clamping the edge values instead drew stripes to the border. For 'same'
    padding the centres are where a resize puts them, and only the outer pixels fade.
    """
    pixels = np.arange(32, dtype=np.float64)

    def weights(cells: int) -> np.ndarray:  # (32, cells): row i says how pixel i mixes the cells
        centres = cell_centres(model, stage, cells)
        step = centres[1] - centres[0] if cells > 1 else 32.0
        xs = np.concatenate([[centres[0] - step], centres, [centres[-1] + step]])
        basis = np.pad(np.eye(cells), ((0, 0), (1, 1)))
        return np.stack([np.interp(pixels, xs, basis[j]) for j in range(cells)], axis=1)

    h, w = cam.shape
    return weights(h) @ np.asarray(cam, dtype=np.float64) @ weights(w).T


def saliency(model: CifarCNN, pixels: np.ndarray, target_class: int, samples: int = 16,
             noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Saliency map (32, 32) in [0, 1]: how strongly each pixel moves ``target_class``'s logit.

    The gradient of the logit with respect to the input, its largest absolute value over
    the three colour channels, divided by the map's maximum. With ``samples`` > 1 it is
    averaged over that many copies of the image with Gaussian noise of standard
    deviation ``noise`` (in [0, 1] pixel units) added (SmoothGrad); the first copy is the
    clean image. ``samples=1`` gives the plain gradient. The noise is seeded, so a map
    is the same every time it is asked for.
    """
    target_class = _check_class(model, target_class)
    if samples < 1:
        raise ValueError("samples must be >= 1")
    x = _input(model, pixels)
    generator = torch.Generator().manual_seed(seed)
    jitter = torch.randn((samples, *x.shape[1:]), generator=generator) * noise
    jitter[0] = 0
    batch = (x + jitter.to(x.device)).requires_grad_(True)
    with _eval_mode(model), torch.enable_grad():
        logits = model(batch)
        (grad,) = torch.autograd.grad(logits[:, target_class].sum(), batch)
    return _normalise(grad.abs().amax(dim=1).mean(0))


@torch.no_grad()
def feature_maps(model: CifarCNN, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Each conv layer's name -> its feature maps (C, H, W) for one uint8 image (32, 32, 3).

    The maps are the output of the activation after the conv (see ``conv_stage_names``),
    as float32 arrays in network order.
    """
    stages = conv_stage_names(model)
    wanted = {stage: conv for conv, stage in stages.items()}
    x = _input(model, pixels)
    maps = {}
    with _eval_mode(model):
        for name, _module, out in _stages(model, x):
            if name in wanted:
                maps[wanted[name]] = out[0].float().cpu().numpy()
            if len(maps) == len(wanted):
                break
    return {conv: maps[conv] for conv in stages}

