"""Batch augmentation against per-image references: scipy's affine_transform for the
Keras-style rotate/shift/flip, numpy's reflect-pad-and-slice for crop-and-flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.overrides import TorchFunctionMode

from cifar_core.augment import alternating_flips, augment, random_affine, random_crop_flip


def images(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Smooth-ish random images, so that sampling errors would show as large differences."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    fine = torch.rand(n, 3, 32, 32, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear") * 0.8 + fine * 0.2
    return x.to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_affine(x: np.ndarray, angle: float, tx: float, ty: float, mirror: float) -> np.ndarray:
    """One image (C, H, W) through the affine map random_affine builds, by scipy.

    random_affine's theta maps output to input in affine_grid's [-1, 1] units; in pixels
    (square image, centre c) that is input = A (output - c) + c + t * W / 2, with A the
    rotation times the mirror. scipy's order-1 'nearest' mode is bilinear sampling with
    the edge repeated, Keras' fill_mode='nearest'.
    """
    c, half = (x.shape[-1] - 1) / 2, x.shape[-1] / 2
    cos, sin = math.cos(angle), math.sin(angle)
    a = np.array([[cos * mirror, -sin], [sin * mirror, cos]])  # (x, y) order
    rc = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])  # the same in (row, col) order
    offset = np.array([ty * half + c, tx * half + c]) - rc @ np.array([c, c])
    return np.stack([ndimage.affine_transform(plane, rc, offset, order=1, mode="nearest")
                     for plane in x])


@pytest.mark.parametrize("rotation, shift, flip", [(20.0, 0.2, True), (20.0, 0.0, False),
                                                   (0.0, 0.2, False), (45.0, 0.1, True)])
def test_random_affine_matches_scipy_per_image(rotation: float, shift: float, flip: bool) -> None:
    x = images(12, seed=1, dtype=torch.float64)
    out = random_affine(x, gen(5), rotation_deg=rotation, shift=shift, flip=flip)
    # The same draws, in the order random_affine makes them: angle, tx, ty, then mirror.
    g = gen(5)
    angle = (torch.rand(12, generator=g, dtype=torch.float32) * 2 - 1) * math.radians(rotation)
    tx = (torch.rand(12, generator=g) * 2 - 1) * shift * 2
    ty = (torch.rand(12, generator=g) * 2 - 1) * shift * 2
    mirror = torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(12)
    for i in range(12):
        expected = reference_affine(x[i].numpy(), angle[i].item(), tx[i].item(), ty[i].item(),
                                    mirror[i].item())
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-5)


def test_flip_really_mirrors_and_happens_to_about_half() -> None:
    x = images(64, seed=2)
    out = random_affine(x, gen(0), rotation_deg=0, shift=0, flip=True)
    mirrored = [torch.allclose(o, xi.flip(-1), atol=1e-5) for o, xi in zip(out, x)]
    unchanged = [torch.allclose(o, xi, atol=1e-5) for o, xi in zip(out, x)]
    assert all(m != u for m, u in zip(mirrored, unchanged))
    assert 20 <= sum(mirrored) <= 44


def test_no_rotation_no_shift_no_flip_is_identity() -> None:
    x = images(8, seed=3)
    torch.testing.assert_close(random_affine(x, gen(0), rotation_deg=0, shift=0, flip=False), x,
                               atol=1e-5, rtol=0)


def test_rotation_changes_every_image_but_keeps_the_centre() -> None:
    x = images(16, seed=4)
    out = random_affine(x, gen(1), rotation_deg=20, shift=0, flip=False)
    changed = (out - x).abs().amax(dim=(1, 2, 3))
    assert (changed > 0.05).all()
    # A rotation about the centre barely moves the pixels next to it.
    centre = (out[:, :, 15:17, 15:17] - x[:, :, 15:17, 15:17]).abs().amax()
    assert centre < (out - x).abs().amax()


@pytest.mark.parametrize("kind", ["keras", "crop_flip", "translate_flip"])
def test_each_image_gets_its_own_transform(kind: str) -> None:
    x = images(1, seed=5).expand(32, -1, -1, -1).contiguous()
    out = augment(x, kind, gen(2))
    distinct = {tuple(o.flatten()[::97].tolist()) for o in out}
    assert len(distinct) >= (28 if kind == "keras" else 12)


def reference_crops(x: np.ndarray, pad: int = 4) -> list[np.ndarray]:
    """Every crop and mirrored crop of one reflect-padded image (C, H, W)."""
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = x.shape[1:]
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c[:, :, ::-1] for c in crops]


def test_crop_flip_output_is_a_crop_of_the_reflect_padded_input() -> None:
    x = images(24, seed=6)
    out = random_crop_flip(x, gen(3)).numpy()
    used = set()
    for i in range(24):
        matches = [k for k, crop in enumerate(reference_crops(x[i].numpy()))
                   if np.array_equal(out[i], crop)]
        assert matches, f"image {i} is no crop of its padded input"
        used.add(matches[0])
    assert len(used) >= 12  # offsets and flips vary across the batch
    assert any(k >= 81 for k in used) and any(k < 81 for k in used)


def test_crop_flip_without_flip_never_mirrors() -> None:
    x = images(24, seed=7)
    out = random_crop_flip(x, gen(4), flip=False).numpy()
    for i in range(24):
        crops = reference_crops(x[i].numpy())[:81]
        assert any(np.array_equal(out[i], crop) for crop in crops)


@pytest.mark.parametrize("kind", ["none", "keras", "crop_flip", "translate_flip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_preserved(kind: str, dtype: torch.dtype) -> None:
    x = images(5, seed=8, dtype=dtype)
    out = augment(x, kind, gen(0))
    assert out.shape == x.shape and out.dtype == dtype
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("kind", ["keras", "crop_flip", "translate_flip"])
def test_channels_last_input_gives_the_same_result(kind: str) -> None:
    x = images(6, seed=9)
    plain = augment(x, kind, gen(7))
    cl = augment(x.contiguous(memory_format=torch.channels_last), kind, gen(7))
    torch.testing.assert_close(plain, cl)


@pytest.mark.parametrize("kind", ["keras", "crop_flip", "translate_flip"])
def test_seeded_generator_is_deterministic(kind: str) -> None:
    x = images(16, seed=10)
    assert torch.equal(augment(x, kind, gen(11)), augment(x, kind, gen(11)))
    assert not torch.equal(augment(x, kind, gen(11)), augment(x, kind, gen(12)))


class CountOps(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["keras", "crop_flip", "translate_flip"])
def test_no_work_per_image_the_op_count_is_independent_of_batch_size(kind: str) -> None:
    counts = []
    for n in (2, 512):
        x = images(n, seed=12)
        with CountOps() as mode:
            augment(x, kind, gen(0))
        counts.append(mode.calls)
    assert counts[0] == counts[1]
    assert counts[0] < 60


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(images(1), "mixup", gen(0))  # type: ignore[arg-type]


def test_none_returns_the_input_unchanged() -> None:
    x = images(3)
    assert augment(x, "none", gen(0)) is x


def test_translate_flip_moves_each_image_by_at_most_two_pixels() -> None:
    x = images(24, seed=8)
    out = augment(x, "translate_flip", gen(5)).numpy()
    used = set()
    for i in range(24):
        matches = [k for k, crop in enumerate(reference_crops(x[i].numpy(), pad=2))
                   if np.array_equal(out[i], crop)]
        assert matches, f"image {i} is no crop of its input padded by 2"
        used.add(matches[0])
    assert len(used) >= 8 and any(k >= 25 for k in used) and any(k < 25 for k in used)


def test_alternating_flips_mirror_each_image_every_other_epoch() -> None:
    first, second, third = (alternating_flips(10_000, seed=3, epoch=e) for e in (1, 2, 3))
    assert 0.48 < first.float().mean() < 0.52
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert not torch.equal(alternating_flips(10_000, seed=4, epoch=1), first)


def test_translate_altflip_mirrors_exactly_the_marked_images() -> None:
    x = images(24, seed=9)
    marks = torch.arange(24) % 3 == 0
    out = augment(x, "translate_altflip", gen(6), flips=marks).numpy()
    for i in range(24):
        matches = [k for k, crop in enumerate(reference_crops(x[i].numpy(), pad=2))
                   if np.array_equal(out[i], crop)]
        assert matches and all((k >= 25) == bool(marks[i]) for k in matches), i
