"""Train presets on the real data, several seeds each, and print what every run gave.

    python benchmarks/presets.py --data-dir /tmp/cifar10 --presets quick fast --seeds 0 1 2
        [--device auto] [--runs-dir /tmp/preset-runs] [--set KEY=VALUE ...]

The seeds are the outer loop, so a call cut short still holds a run of every preset. Per
run: training seconds (the sum of history.csv's epochs, validation included, as the app
shows them), the whole call of ``train_run`` (set-up and test included), images per
second, the sustained arithmetic of training (the images of each epoch x the training
FLOPs per image in that epoch / training seconds), best validation accuracy and the test
accuracy the run computed once. Then mean and spread over the seeds of each preset, and
the device's matrix-product peak measured in the same process. ``--set`` changes a setting
of every preset of the call, as on the command line, to measure a variant the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import matmul_gflops  # benchmarks/speed.py

from cifar_core.config import ModelConfig, TrainConfig, apply_overrides, get_preset, parse_overrides
from cifar_core.data import CifarData, load_cifar10
from cifar_core.devices import resolve_device
from cifar_core.model import training_flops
from cifar_core.pipeline import train_run
from cifar_core.runs import load_run
from cifar_core.training import stem_bias_learns, whole_batches


@dataclass(frozen=True)
class Outcome:
    preset: str
    seed: int
    train_seconds: float
    wall_seconds: float
    images_per_second: float
    gflops: float
    val_acc: float
    test_acc: float


def configs(preset: str, overrides: dict[str, object]) -> tuple[ModelConfig, TrainConfig]:
    p = get_preset(preset)
    return apply_overrides(p.model, p.train, overrides)


def run_flops(model_cfg: ModelConfig, train_cfg: TrainConfig, epochs: int, images_per_epoch: int) -> float:
    """Training FLOPs of ``epochs`` epochs, counting the stem's input gradient only in the
    epochs whose stem bias learns."""
    return sum(images_per_epoch * training_flops(model_cfg, not stem_bias_learns(train_cfg, epoch))
               for epoch in range(1, epochs + 1))


def train_preset(preset: str, seed: int, device: str, data: CifarData, run_dir: Path,
                 overrides: dict[str, object] | None = None) -> Outcome:
    model_cfg, train_cfg = configs(preset, overrides or {})
    train_cfg = replace(train_cfg, seed=seed, device=device)
    started = time.perf_counter()
    metrics = train_run(model_cfg, train_cfg, data, run_dir, preset=preset)
    wall = time.perf_counter() - started
    history = load_run(run_dir).history
    batch, batches = whole_batches(len(data.y_train), train_cfg.batch_size)
    images = batch * batches
    seconds = sum(r.seconds for r in history)
    return Outcome(preset, seed, seconds, wall, images * len(history) / seconds,
                   run_flops(model_cfg, train_cfg, len(history), images) / seconds / 1e9,
                   metrics.val_acc, metrics.test_acc)


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def print_table(outcomes: list[Outcome]) -> None:
    print("| preset | seed | training s | train_run s | images/s | GFLOP/s | val % | test % |")
    print("|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.preset} | {o.seed} | {o.train_seconds:.1f} | {o.wall_seconds:.1f} | "
              f"{o.images_per_second:,.0f} | {o.gflops:,.0f} | {100 * o.val_acc:.2f} | "
              f"{100 * o.test_acc:.2f} |")
    print("\n| preset | runs | training s | val % | test % |")
    print("|---|---|---|---|---|")
    for preset in dict.fromkeys(o.preset for o in outcomes):
        mine = [o for o in outcomes if o.preset == preset]
        print(f"| {preset} | {len(mine)} | {mean_spread([o.train_seconds for o in mine])} | "
              f"{mean_spread([100 * o.val_acc for o in mine])} | "
              f"{mean_spread([100 * o.test_acc for o in mine])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--presets", nargs="+", default=["quick", "fast"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/preset-runs"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting of every preset, e.g. --set label_smoothing=0.1")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    for preset in args.presets:
        configs(preset, overrides)  # an unknown name or setting fails before any training
    device = resolve_device(args.device)
    data = load_cifar10(args.data_dir, download=False)
    peaks = {dtype: matmul_gflops(dtype, device) for dtype in (torch.float32, torch.bfloat16)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device {name}, torch {torch.__version__}; matrix product peak fp32 "
          f"{peaks[torch.float32]:,.0f} / bf16 {peaks[torch.bfloat16]:,.0f} GFLOP/s", flush=True)
    if overrides:
        print("changed in every preset: " + ", ".join(args.overrides), flush=True)
    outcomes = []
    for seed in args.seeds:
        for preset in args.presets:
            outcome = train_preset(preset, seed, device.type, data, args.runs_dir / f"{preset}-seed{seed}",
                                   overrides)
            outcomes.append(outcome)
            print(f"{preset} seed {seed}: {outcome.train_seconds:.1f} s training, test "
                  f"{100 * outcome.test_acc:.2f}%", flush=True)
    print()
    print_table(outcomes)


if __name__ == "__main__":
    main()
