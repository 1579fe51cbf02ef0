"""Figures as text in one place, and the dataset statistics the Dataset page draws."""

from __future__ import annotations

import math

import numpy as np

from cifar_core.data import as_presented_images, to_images
from cifar_core.formatting import (
    MISSING,
    format_count,
    format_images,
    format_parameters,
    format_percent,
    format_seconds,
    format_setting,
)
from cifar_core.stats import channel_stats_table, class_count_table, pick_per_class, pixel_histograms


def test_percentages_and_the_missing_mark() -> None:
    assert format_percent(0.8734) == "87.3%" and format_percent(0.5, 0) == "50%"
    assert format_percent(None) == format_percent("x") == format_percent(True) == MISSING
    assert format_count(1234.4) == "1,234" and format_count(None) == MISSING
    assert format_parameters(167_818) == "167,818" and format_parameters(1_972_802) == "1.97 M"
    assert format_images(2000.0) == "2,000" and format_images(math.nan) == format_images(None) == "all"


def test_durations_stay_short() -> None:
    assert [format_seconds(s) for s in (None, 42, 185, 725, 4320)] == [
        MISSING, "42s", "3m 05s", "12m", "1h 12m"]


def test_settings() -> None:
    assert format_setting((16, 32)) == "16, 32" and format_setting(()) == "(none)"
    assert format_setting(None) == MISSING and format_setting(False) == "no"
    assert format_setting(1e-3) == "0.001"


def test_class_counts_and_pixel_statistics() -> None:
    counts = class_count_table({"train": np.array([0, 1, 1]), "test": np.array([2])}, ("a", "b", "c"))
    assert counts[counts.split == "train"]["images"].tolist() == [1, 2, 0]
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    images[..., 0] = 255
    histograms = pixel_histograms(images, chunk=1)
    assert histograms[0, 255] == 32 and histograms[1, 0] == 32
    stats = channel_stats_table(histograms)
    assert stats["mean"].tolist() == [1.0, 0.0, 0.0] and stats["std"].tolist() == [0.0, 0.0, 0.0]


def test_pick_per_class_takes_each_class_own_images() -> None:
    labels = np.array([0, 1, 0, 1, 0, 2])
    picks = pick_per_class(labels, 2, seed=0)
    assert [len(p) for p in picks] == [2, 2, 1]
    assert all((labels[p] == c).all() for c, p in enumerate(picks))


def test_as_presented_images_repeats_the_reshape_mistake() -> None:
    rows = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    assert np.array_equal(as_presented_images(to_images(rows)), to_images(rows, "as_presented"))
