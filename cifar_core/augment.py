"""Data augmentation on whole batches, on the training device.

Every image draws its own random parameters, but the work is a handful of tensor ops
on the batch, never a Python loop over images:

- ``keras``: the presentation's ImageDataGenerator(rotation_range=20,
  width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True): one affine
  matrix per image, applied with a single ``affine_grid`` + bilinear ``grid_sample``;
  pixels pulled from outside the image repeat the nearest edge (Keras' fill_mode
  "nearest").
- ``crop_flip``: pad 4 pixels by reflection, crop a random 32x32 window, flip half the
  images; the standard CIFAR recipe, done by indexing.
- ``translate_flip``: the same with 2 pixels of padding (airbench's translation): a
  milder change, which short runs learn from faster.
- ``translate_altflip``: 2-pixel shifts, and each image mirrored in every other epoch
  (``alternating_flips``) instead of at random, so any two epochs in a row show every
  image both ways (airbench's alternating flip).

Inputs and outputs are float tensors (N, C, H, W).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import Augmentation, choices
from .model import to_input

AUGMENTATIONS: tuple[str, ...] = choices("augmentation")


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None,
                  rotation_deg: float = 20.0, shift: float = 0.2,
                  flip: bool = True) -> torch.Tensor:
    """Rotate, shift and flip each image by its own random amount (Keras-style)."""
    n = x.shape[0]
    uniform = lambda: torch.rand(n, generator=generator, device=x.device) * 2 - 1  # noqa: E731
    angle = uniform() * math.radians(rotation_deg)
    # affine_grid works in [-1, 1] coordinates, where the image spans 2 units.
    tx, ty = uniform() * shift * 2, uniform() * shift * 2
    mirror = torch.ones(n, device=x.device)
    if flip:
        mirror = torch.where(torch.rand(n, generator=generator, device=x.device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1),
                         torch.stack([sin * mirror, cos, ty], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                     pad: int = 4, flip: bool | torch.Tensor = True) -> torch.Tensor:
    """Reflect-pad by ``pad``, take a random crop of the original size, and mirror half of
    the images at random, or those a boolean mask (N,) ``flip`` marks."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    if flip is True:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    if flip is not False:
        # A flipped crop reads its columns right to left.
        cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def alternating_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of ``n`` training images ``translate_altflip`` mirrors in ``epoch`` (from 1):
    a random half, fixed by the seed, in odd epochs and the other half in even ones."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first ^ (epoch % 2 == 0)


def augment(x: torch.Tensor, kind: Augmentation, generator: torch.Generator | None = None,
            flips: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` changed by augmentation ``kind``; ``flips`` (N,) marks the images that
    ``translate_altflip`` mirrors (training passes ``alternating_flips``), else half at random."""
    if kind == "none":
        return x
    if kind == "keras":
        return random_affine(x, generator)
    if kind == "crop_flip":
        return random_crop_flip(x, generator)
    if kind == "translate_flip":
        return random_crop_flip(x, generator, pad=2)
    if kind == "translate_altflip":
        return random_crop_flip(x, generator, pad=2, flip=True if flips is None else flips)
    raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")


def augmented_copies(images: np.ndarray, kind: Augmentation, copies: int, seed: int) -> np.ndarray:
    """``copies`` independently augmented versions of each uint8 image: (N, copies, 32, 32, 3).

    What training would show the network instead of each image, as pictures again.
    """
    x = to_input(torch.from_numpy(images))
    out = augment(x.repeat_interleave(copies, 0), kind, torch.Generator().manual_seed(seed))
    out = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out.reshape(len(images), copies, *images.shape[1:])
