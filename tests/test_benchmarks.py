"""The benchmark scripts' measurements, checked against the project's own code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from cifar_core.config import ModelConfig, get_preset
from cifar_core.data import load_cifar10
from cifar_core.model import build_model, to_input, training_flops

REPO = Path(__file__).resolve().parents[1]


def benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def test_tta_benchmark_agrees_with_a_direct_computation(cifar_root: Path) -> None:
    images = load_cifar10(cifar_root, download=False).x_test[:40]
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()

    got = benchmark("tta").three_ways(model, images)

    # The same three, written out on the network's input: mirror means, and the image
    # shifted one pixel up-left and down-right with its edges reflected.
    def mirror(x: torch.Tensor) -> torch.Tensor:
        return (model(x) + model(x.flip(3))) / 2

    x = to_input(torch.as_tensor(images))
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (mirror(padded[:, :, :32, :32]) + mirror(padded[:, :, 2:, 2:])) / 2
    torch.testing.assert_close(got["plain"], model(x))
    torch.testing.assert_close(got["mirror"], mirror(x))
    torch.testing.assert_close(got["mirror + shifts"], (mirror(x) + shifted) / 2)


def test_speed_benchmark_counts_the_step_as_the_presets_later_epochs_run() -> None:
    speed = benchmark("speed")
    assert speed.fixes_stem(get_preset("fast")) and not speed.fixes_stem(get_preset("baseline"))
    fast = get_preset("fast").model
    assert training_flops(fast, stem_fixed=True) < training_flops(fast)
