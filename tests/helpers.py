"""Small helpers several test modules share: encoding test images, reading plotly data and
the Evaluate page's gallery, a hostile pickle payload."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """The bytes of ``image`` saved as ``fmt`` (PNG, JPEG, ...)."""
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def noise(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """A random RGB picture of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def array(value: object) -> np.ndarray:
    """A figure's data array; plotly ships numpy and pandas data base64-packed ("bdata")."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value)


def gallery_pictures(at: object) -> list:
    """The pictures (each with its ``url`` and ``caption``) of the Evaluate page's gallery:
    one image element (it fails otherwise) holding every picture."""
    images = at.get("image")
    assert len(images) == 1, f"the gallery is one element, not {len(images)}"
    return list(images[0].proto.imgs)


class WritesMarker:
    """Pickles into a call that creates ``marker``: loading it proves code ran on unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def wait_for(registry, job_id: str, ready, timeout: float = 30):
    """The job's snapshot once ``ready(snapshot)`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = registry.snapshot(job_id)
        if ready(snap):
            return snap
        time.sleep(0.01)
    raise AssertionError(f"timed out; last snapshot {registry.snapshot(job_id)}")
