"""Test-time augmentation, measured: validation accuracy of trained runs three ways.

    python benchmarks/tta.py --data-dir /tmp/cifar10 models/fast models/best

For each run folder: the plain prediction; the mean of the image and its mirror (what
``tta_flip`` does); and airbench's second level, which gives that mean half the weight and
the mirror means of the image shifted one pixel up-left and one down-right (edges
reflected) a quarter each. Validation images only: a choice of recipe is made there, and
the test set gives each preset its figure once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.data import load_cifar10
from cifar_core.model import predict_logits
from cifar_core.runs import load_run

CPU = torch.device("cpu")


def three_ways(model: torch.nn.Module, images: np.ndarray) -> dict[str, torch.Tensor]:
    """The logits for uint8 images (N, 32, 32, 3): plain, mirror-averaged (the project's own
    ``tta_flip``), and mirror-averaged with the two shifts."""
    mirrored = predict_logits(model, images, CPU, tta_flip=True)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [predict_logits(model, np.ascontiguousarray(view), CPU, tta_flip=True)
               for view in (padded[:, :32, :32], padded[:, 2:, 2:])]
    return {"plain": predict_logits(model, images, CPU), "mirror": mirrored,
            "mirror + shifts": mirrored / 2 + (shifted[0] + shifted[1]) / 4}


def accuracies(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: float((logits.argmax(1).numpy() == labels).mean())
            for name, logits in three_ways(model, images).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with weights")
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    args = parser.parse_args()
    data = load_cifar10(args.data_dir, download=False)
    print(f"{'run':<24} {'plain':>7} {'mirror':>7} {'+shifts':>8} {'seconds':>8}")
    for path in args.runs:
        started = time.perf_counter()
        acc = accuracies(load_run(path).load_model(), data.x_val, data.y_val)
        print(f"{str(path):<24} {acc['plain']:7.2%} {acc['mirror']:7.2%} {acc['mirror + shifts']:8.2%} "
              f"{time.perf_counter() - started:8.1f}")


if __name__ == "__main__":
    main()
