"""Test-time augmentation, measured: validation accuracy of trained runs with each ``tta``.

    python benchmarks/tta.py --data-dir /tmp/cifar10 models/fast models/best

For each run folder, the accuracy and seconds of every option of ``TrainConfig.tta``: the
plain prediction (none); the mean of the image and its mirror (flip); and airbench's second
level (flip_translate), which gives that mean half the weight and the mirror means of the
image shifted one pixel up-left and one down-right (edges reflected) a quarter each.
Validation images only: a choice of recipe is made there, and the test set gives each
preset its figure once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.config import choices
from cifar_core.data import load_cifar10
from cifar_core.model import predict_logits
from cifar_core.runs import load_run

CPU = torch.device("cpu")


def each_way(model: torch.nn.Module, images: np.ndarray,
             labels: np.ndarray) -> dict[str, tuple[float, float]]:
    """(accuracy, seconds) of every test-time augmentation on uint8 images (N, 32, 32, 3)."""
    figures = {}
    for tta in choices("tta"):
        started = time.perf_counter()
        predicted = predict_logits(model, images, CPU, tta=tta).argmax(1).numpy()
        figures[tta] = float((predicted == labels).mean()), time.perf_counter() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with weights")
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    args = parser.parse_args()
    data = load_cifar10(args.data_dir, download=False)
    ways = choices("tta")
    print(f"{'run':<24} " + " ".join(f"{w:>22}" for w in ways))
    for path in args.runs:
        figures = each_way(load_run(path).load_model(), data.x_val, data.y_val)
        print(f"{str(path):<24} " + " ".join(f"{figures[w][0]:>13.2%} {figures[w][1]:>6.1f} s" for w in ways),
              flush=True)


if __name__ == "__main__":
    main()
