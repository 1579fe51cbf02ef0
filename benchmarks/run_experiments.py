"""Run the Experiments page's ablations on the real data and write experiments/results.json.

    python benchmarks/run_experiments.py --data-dir /tmp/cifar10 [--only batchnorm dropout]
        [--runs-dir /tmp/experiment-runs]

Each experiment trains its arms one after another on the same subset and seed; the
run folders stay in --runs-dir, the summaries (histories, test accuracy, gradient
norms, the verdict) go into experiments/results.json, which the app ships.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.data import load_cifar10, subset
from cifar_core.experiments import (
    EXPERIMENTS,
    RESULTS_FILE,
    as_presented,
    load_results,
    result_record,
    summarize,
)
from cifar_core.pipeline import train_run
from cifar_core.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/experiment-runs"))
    args = parser.parse_args()
    command = "python benchmarks/run_experiments.py " + shlex.join(sys.argv[1:])
    data = load_cifar10(args.data_dir, download=False)
    results = load_results()
    for name in args.only:
        experiment = EXPERIMENTS[name]
        small = subset(data, experiment.subset, seed=0)
        summaries = []
        for i, arm in enumerate(experiment.arms):
            model_cfg, train_cfg = arm.configs(experiment.base)
            arm_data = as_presented(small) if arm.channel_order == "as_presented" else small
            run_dir = args.runs_dir / name / f"{i}-{re.sub(r'[^a-z0-9]+', '-', arm.label.lower())}"
            started = time.perf_counter()
            train_run(model_cfg, train_cfg, arm_data, run_dir, preset="baseline", subset=experiment.subset)
            summaries.append(summarize(load_run(run_dir), arm.label))
            print(f"{name} / {arm.label}: best val {summaries[-1].best_val_acc:.4f}, "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        results[name] = result_record(experiment, summaries, command)
        print(f"{name}: {results[name]['verdict']}", flush=True)
        RESULTS_FILE.parent.mkdir(exist_ok=True)
        RESULTS_FILE.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
