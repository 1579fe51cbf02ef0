"""One photo's prediction while other threads run Python, as in a server with many visitors.

    python benchmarks/contention.py [--model models/best] [--busy 3] [--calls 20]

Each torch call releases Python's interpreter lock and waits to get it back; while other
threads run Python, that wait lasts up to the interpreter's switch interval. This times
``predict_pixels`` on one random photo with the model's own test-time views, alone and
with ``--busy`` threads spinning in Python, for two ways of running the views (all in one
batch, as ``tta_logits`` does, or one network call per view, as it did before) and two
switch intervals (Python's default 5 ms, and the 1 ms that ``app_state`` sets in the app).
Printed: median and worst milliseconds of ``--calls`` predictions.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core import model as model_module
from cifar_core.config import TTA
from cifar_core.inference import predict_pixels
from cifar_core.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


def view_by_view_logits(model: torch.nn.Module, x: torch.Tensor, tta: TTA) -> torch.Tensor:
    """tta_logits with one network call per view: the same average, more calls."""
    views = model_module.tta_views(x, tta)
    return sum(weight * model(view).float()
               for weight, view in zip(model_module.VIEW_WEIGHTS[tta], views, strict=True))


@contextlib.contextmanager
def views_run(how: str) -> Iterator[None]:
    with mock.patch.object(model_module, "tta_logits", view_by_view_logits) if how == "view by view" \
            else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def busy_threads(count: int) -> Iterator[None]:
    """``count`` threads running Python (a loop of additions) until the block ends."""
    stop = threading.Event()

    def spin() -> None:
        total = 0
        while not stop.is_set():
            for i in range(1000):
                total += i

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def milliseconds(predict: Callable[[], None], calls: int) -> tuple[float, float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "best", help="a run folder")
    parser.add_argument("--busy", type=int, default=3, help="threads running Python meanwhile")
    parser.add_argument("--calls", type=int, default=20, help="predictions per figure")
    args = parser.parse_args()
    run = load_run(args.model)
    model, tta = run.load_model(), run.train_config.tta
    photo = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    torch.set_num_threads(1)  # as a page's script thread while training holds the other core

    def predict() -> None:
        predict_pixels(model, photo, run.classes, tta=tta)

    predict()
    print(f"{run.name}, test-time views {tta!r}, {args.busy} threads busy in Python; "
          "milliseconds per prediction, median / worst")
    print(f"{'views':14s} {'switch':>7s} {'alone':>15s} {'busy':>17s}")
    for how in ("view by view", "one batch"):
        for interval in (0.005, 0.001):
            sys.setswitchinterval(interval)
            with views_run(how):
                alone = milliseconds(predict, args.calls)
                with busy_threads(args.busy):
                    busy = milliseconds(predict, args.calls)
            print(f"{how:14s} {interval * 1000:5.0f} ms {alone[0]:7.1f} / {alone[1]:5.1f} "
                  f"{busy[0]:8.1f} / {busy[1]:6.1f}")


if __name__ == "__main__":
    main()
