"""Classify uploaded pictures: decode safely, bring to 32x32 RGB, top-k classes.

Any file a user gives is hostile until checked. Pillow's decompression-bomb limit is
made an error (not a warning), truncated files fail instead of being padded, animated
images use their first frame, EXIF orientation is applied, and every mode (palette,
16-bit, CMYK, alpha) becomes RGB on a white background. The picture is then shrunk
to 32x32 like a CIFAR image, and normalised by the model exactly as in training.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import TTA
from .model import predict_logits

# 40 megapixels covers any phone photo; beyond it the file is refused before decoding.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 20 * 1024 * 1024
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb check (a warning above the limit, an error above twice it) uses the same cap.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale as long as both sides keep this many pixels:
# a 12-megapixel photo then costs a few MB and milliseconds instead of 100 MB and a quarter second.
JPEG_DRAFT_SIDE = 512


class ImageError(Exception):
    """An uploaded file is not an image we can classify; the message says why."""


def decode_image(raw: bytes, name: str = "image") -> Image.Image:
    """Bytes -> an RGB Pillow image, upright, first frame; raises ImageError otherwise."""
    if not raw:
        raise ImageError(f"{name}: the file is empty")
    if len(raw) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: larger than {MAX_FILE_BYTES >> 20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{name}: {width}x{height} pixels is too large "
                                 f"(limit {MAX_PIXELS // 1_000_000} megapixels)")
            image.seek(0)
            if image.format in ("JPEG", "MPO"):
                image.draft(None, (JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too large an image (limit {MAX_PIXELS // 1_000_000} megapixels)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a supported image ({', '.join(ACCEPTED_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"{name}: damaged or truncated image ({err})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: 0..65535 onto 0..255 (a dark picture stays dark), not clipped at 255.
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.uint8(np.clip(np.round(array / 257), 0, 255)))
    if image.mode == "P" or "A" in image.getbands() or image.mode == "LA":
        if image.mode != "RGBA":
            image = image.convert("RGBA")
        # On white through the alpha mask: alpha_composite's pixels in a third of its memory.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # also a plain image, detached from the uploaded bytes


def to_cifar(image: Image.Image) -> np.ndarray:
    """An RGB image -> uint8 (32, 32, 3): centre-crop to a square, then a high-quality shrink."""
    # np.array, not np.asarray: a read-only view makes torch warn when it becomes a tensor.
    return np.array(ImageOps.fit(image, (32, 32), method=Image.Resampling.LANCZOS))


@dataclass(frozen=True)
class Prediction:
    name: str
    pixels: np.ndarray  # the (32, 32, 3) image the model saw
    probabilities: np.ndarray  # (10,)
    classes: tuple[str, ...]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]

    @property
    def label(self) -> str:
        return self.classes[int(self.probabilities.argmax())]


def predict_pixels(model: torch.nn.Module, pixels: np.ndarray, classes: tuple[str, ...],
                   names: list[str] | None = None, tta: TTA = "none") -> list[Prediction]:
    """Predictions for uint8 images (N, 32, 32, 3)."""
    device = next(model.parameters()).device
    logits = predict_logits(model, pixels, device, tta=tta)
    probabilities = torch.softmax(logits, 1).numpy()
    names = names or [f"image {i + 1}" for i in range(len(pixels))]
    return [Prediction(n, px, p, classes) for n, px, p in zip(names, pixels, probabilities)]


def predict_readable(model: torch.nn.Module, pixels: list[np.ndarray | None], names: list[str],
                     classes: tuple[str, ...], tta: TTA = "none") -> list[Prediction | None]:
    """A prediction for every image that could be read (one batch for all), None for the others."""
    good = [i for i, px in enumerate(pixels) if px is not None]
    found = predict_pixels(model, np.stack([pixels[i] for i in good]), classes,
                           [names[i] for i in good], tta) if good else []
    results: list[Prediction | None] = [None] * len(pixels)
    for i, prediction in zip(good, found, strict=True):
        results[i] = prediction
    return results


def read_pixels(raw: bytes, name: str) -> np.ndarray | ImageError:
    """A file's 32x32 pixels, or the ImageError that says why it cannot be read."""
    try:
        return to_cifar(decode_image(raw, name))
    except ImageError as err:
        return err


def predict_files(model: torch.nn.Module, files: list[tuple[str, bytes]], classes: tuple[str, ...],
                  tta: TTA = "none") -> list[Prediction | ImageError]:
    """One result per file, in order: a Prediction, or the ImageError that file raised."""
    read = [read_pixels(raw, name) for name, raw in files]
    pixels = [None if isinstance(r, ImageError) else r for r in read]
    predictions = predict_readable(model, pixels, [name for name, _ in files], classes, tta)
    return [r if isinstance(r, ImageError) else p for r, p in zip(read, predictions, strict=True)]
