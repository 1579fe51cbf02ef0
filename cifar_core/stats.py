"""What is in the dataset: images per class and split, exact pixel statistics, samples per class."""

from __future__ import annotations

import numpy as np
import pandas as pd

CHANNELS = ("red", "green", "blue")
SPLIT_TITLES = {"train": "train", "val": "validation", "test": "test"}


def class_count_table(labels: dict[str, np.ndarray], classes: tuple[str, ...]) -> pd.DataFrame:
    """Images per class and split, long format: columns class, split, images."""
    rows = [{"class": name, "split": SPLIT_TITLES.get(split, split), "images": int(count)}
            for split, y in labels.items()
            for name, count in zip(classes, np.bincount(y, minlength=len(classes)), strict=True)]
    return pd.DataFrame(rows, columns=["class", "split", "images"])


def pixel_histograms(images: np.ndarray, chunk: int = 5000) -> np.ndarray:
    """Counts of each value 0..255 per channel, shape (3, 256), for uint8 (N, H, W, 3)."""
    counts = np.zeros((3, 256), dtype=np.int64)
    # Chunks keep the temporary int64 copies bincount makes to a few tens of MB.
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk]
        for c in range(3):
            counts[c] += np.bincount(block[..., c].ravel(), minlength=256)
    return counts


def channel_stats_table(histograms: np.ndarray) -> pd.DataFrame:
    """Mean and standard deviation per channel, exact, from the (3, 256) histograms."""
    values = np.arange(256) / 255.0
    total = histograms.sum(axis=1)
    mean = (histograms * values).sum(axis=1) / total
    std = np.sqrt(np.maximum((histograms * values ** 2).sum(axis=1) / total - mean ** 2, 0))
    return pd.DataFrame({"channel": CHANNELS, "mean": mean, "std": std,
                         "mean (0-255)": mean * 255, "std (0-255)": std * 255})


def pick_per_class(labels: np.ndarray, per_class: int, seed: int) -> list[np.ndarray]:
    """For every class, ``per_class`` random indices of its images (fewer if it has fewer)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(int(labels.max()) + 1 if labels.size else 0):
        index = np.flatnonzero(labels == c)
        picks.append(rng.choice(index, size=min(per_class, len(index)), replace=False))
    return picks
