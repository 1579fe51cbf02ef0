"""The benchmark scripts' measurements, checked against the project's own code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from cifar_core.config import ModelConfig, get_preset
from cifar_core.data import load_cifar10
from cifar_core.model import build_model, predict_logits, training_flops

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tta_benchmark_agrees_with_the_projects_predictions(cifar_root: Path) -> None:
    images = load_cifar10(cifar_root, download=False).x_test[:40]
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()

    got = benchmark("tta").three_ways(model, torch.as_tensor(images))

    mirror = predict_logits(model, images, CPU, tta_flip=True)
    # Shifted one pixel up-left and down-right, edges reflected, built here in NumPy.
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [predict_logits(model, np.ascontiguousarray(view), CPU, tta_flip=True)
               for view in (padded[:, :32, :32], padded[:, 2:, 2:])]
    torch.testing.assert_close(got["plain"], predict_logits(model, images, CPU))
    torch.testing.assert_close(got["mirror"], mirror)
    torch.testing.assert_close(got["mirror + shifts"], mirror / 2 + (shifted[0] + shifted[1]) / 4)


def test_speed_benchmark_counts_the_step_as_the_presets_later_epochs_run() -> None:
    speed = benchmark("speed")
    assert speed.fixes_stem(get_preset("fast")) and not speed.fixes_stem(get_preset("baseline"))
    fast = get_preset("fast").model
    assert training_flops(fast, stem_fixed=True) < training_flops(fast)
