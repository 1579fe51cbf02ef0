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

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.data import load_cifar10
from cifar_core.model import to_input
from cifar_core.runs import load_run


def mirror_mean(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) + model(x.flip(3))) / 2


@torch.no_grad()
def three_ways(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The logits of a batch of uint8 images (N, 32, 32, 3), plain, mirror-averaged, and
    mirror-averaged with the two shifts."""
    x = to_input(images)
    mirrored = mirror_mean(model, x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (mirror_mean(model, padded[:, :, :32, :32]) + mirror_mean(model, padded[:, :, 2:, 2:])) / 2
    return {"plain": model(x), "mirror": mirrored, "mirror + shifts": (mirrored + shifted) / 2}


def accuracies(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               batch: int = 250) -> dict[str, float]:
    model.eval()
    correct = {"plain": 0, "mirror": 0, "mirror + shifts": 0}
    for start in range(0, len(images), batch):
        for name, logits in three_ways(model, images[start:start + batch]).items():
            correct[name] += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return {name: n / len(images) for name, n in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with weights")
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    args = parser.parse_args()
    data = load_cifar10(args.data_dir, download=False)
    images, labels = torch.as_tensor(data.x_val), torch.as_tensor(data.y_val)
    print(f"{'run':<24} {'plain':>7} {'mirror':>7} {'+shifts':>8} {'seconds':>8}")
    for path in args.runs:
        started = time.perf_counter()
        acc = accuracies(load_run(path).load_model(), images, labels)
        print(f"{str(path):<24} {acc['plain']:7.2%} {acc['mirror']:7.2%} {acc['mirror + shifts']:8.2%} "
              f"{time.perf_counter() - started:8.1f}")


if __name__ == "__main__":
    main()
