"""The CPU dropout layer against the same layer with a comparison mask, on the baseline's shapes.

    python benchmarks/dropout.py [--data-dir /tmp/cifar10] [--repeats 200] [--blocks 30]

``cifar_core.model.Dropout`` turns its random bytes into a 0/1 mask by arithmetic in the
activation's dtype; ``comparison_forward`` below is the same layer written the obvious way,
``bytes >= threshold`` as a bool mask, and gives the same values from the same seed
(tests/test_benchmarks.py). Printed: forward and backward microseconds of each at every
dropout of the baseline (batch 64, channels_last, bfloat16 where the processor has it);
with ``--data-dir``, the baseline's whole training step (``train_epoch`` over 20 batches)
with either layer, the two alternating, as median images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.config import get_preset
from cifar_core.data import load_cifar10
from cifar_core.devices import cpu_has_native_bf16
from cifar_core.model import Dropout, build_model
from cifar_core.training import set_up, train_epoch

# The baseline's dropouts at batch 64: their inputs and rates.
DROPOUTS = (((64, 32, 15, 15), 0.25), ((64, 64, 6, 6), 0.25), ((64, 128), 0.5))


def comparison_forward(self: Dropout, x: torch.Tensor) -> torch.Tensor:
    """Dropout.forward with the mask made by comparing the bytes with the threshold."""
    if not self.training or self.p == 0:
        return x
    threshold = round(self.p * 256)
    n = x.numel()
    order = x.permute(0, 2, 3, 1) if x.dim() == 4 and not x.is_contiguous() else x
    random_bytes = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64).view(torch.uint8)[:n]
    keep = random_bytes.view(order.shape) >= threshold
    if order is not x:
        keep = keep.permute(0, 3, 1, 2)
    return x * keep * (256 / (256 - threshold))


@contextlib.contextmanager
def layer(kind: str) -> Iterator[None]:
    """Dropout as the project has it (``arithmetic``) or with the ``comparison`` mask."""
    with mock.patch.object(Dropout, "forward", comparison_forward) if kind == "comparison" \
            else contextlib.nullcontext():
        yield


def microseconds(run: Callable[[], None], repeats: int) -> float:
    for _ in range(10):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1e6


def layer_times(shape: tuple[int, ...], rate: float, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    x = torch.rand(shape, dtype=torch.float32).to(dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.ones_like(x)
    dropout = Dropout(rate).train()
    times = {}
    for kind in ("comparison", "arithmetic"):
        with layer(kind):
            times[kind] = microseconds(lambda: dropout(x).backward(grad), repeats)
    return times


def step_rates(data_dir: str, blocks: int) -> dict[str, list[float]]:
    """Images/s of the baseline's train_epoch over 20 batches, with either layer, alternating."""
    preset = get_preset("baseline")
    data = load_cifar10(data_dir, download=False)
    images = 20 * preset.train.batch_size
    data = dataclasses.replace(data, x_train=data.x_train[:images], y_train=data.y_train[:images])
    torch.manual_seed(0)
    model = build_model(preset.model)
    setup = set_up(model, data, preset.train)
    rates: dict[str, list[float]] = {"comparison": [], "arithmetic": []}
    for block in range(blocks + 1):
        for kind in rates:
            with layer(kind):
                start = time.perf_counter()
                train_epoch(model, setup, preset.train, epoch=2)
                if block:  # the first block of each warms up
                    rates[kind].append(images / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, for the whole step")
    parser.add_argument("--repeats", type=int, default=200, help="calls per layer timing")
    parser.add_argument("--blocks", type=int, default=30, help="20-batch blocks per layer, whole step")
    args = parser.parse_args()
    dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    print(f"dropout forward + backward, {dtype}, {torch.get_num_threads()} threads (microseconds)")
    print(f"{'input':18s} {'rate':>5s} {'comparison':>10s} {'arithmetic':>10s}")
    for shape, rate in DROPOUTS:
        times = layer_times(shape, rate, dtype, args.repeats)
        print(f"{str(shape):18s} {rate:5.2f} {times['comparison']:10.0f} {times['arithmetic']:10.0f}")
    if args.data_dir:
        rates = step_rates(args.data_dir, args.blocks)
        comparison, arithmetic = (statistics.median(r) for r in rates.values())
        print(f"baseline training step, median of {args.blocks} blocks of 20 batches: "
              f"comparison {comparison:,.0f} images/s, arithmetic {arithmetic:,.0f} "
              f"({arithmetic / comparison - 1:+.1%})")


if __name__ == "__main__":
    main()
