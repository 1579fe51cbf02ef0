"""Time of the presentation's Keras program against this project's presets, alternating.

    python benchmarks/keras_side_by_side.py --data-dir /tmp/cifar10 \\
        --keras-python /path/to/tf-venv/bin/python [--preset baseline] [--epochs 2] [--rounds 2] \\
        [--out DIR]

The Keras program is ../shared/reference/presentation_keras.py (TensorFlow lives in
its own virtual environment; it is not a dependency of this project). On a shared
machine absolute times drift, so the two run in turn and the figure to quote is a ratio
of times measured in the same run:

- ``--preset baseline`` (the default): the same network on the same 40,000 images with
  the same augmentation and batch size; each round trains ``--epochs`` epochs of each, and
  the ratio of their median epoch times says how much faster the project is.
- any other preset: each round trains ``--epochs`` Keras epochs and then one whole run of
  the preset (seed = round - 1); the run's training time (validation included, as
  history.csv records it) is divided by Keras' median epoch: the run's length "in Keras
  epochs", with its validation and test accuracy.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERAS_SCRIPT = ROOT.parent / "shared" / "reference" / "presentation_keras.py"
TRAIN_IMAGES = 40_000


def keras_epochs(python: str, batches_dir: Path, epochs: int) -> list[float]:
    out = subprocess.run([python, str(KERAS_SCRIPT), str(batches_dir), str(epochs), "--fixed-reshape"],
                         capture_output=True, text=True, check=True).stdout
    return [float(s) for s in re.findall(r"^epoch \d+ ([\d.]+)s", out, re.M)]


def project_run(data_dir: str, preset: str, options: list[str], keep: Path | None = None
                ) -> tuple[list[float], str]:
    """Epoch times of one ``python -m cifar_core train`` run, and its closing line; the run
    folder is kept at ``keep`` when given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-m", "cifar_core", "train", "--preset", preset,
                              *options, "--data-dir", data_dir, "--out", str(keep or tmp)],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
    epochs = [float(s) for s in re.findall(r"^epoch \d+/\d+ .* ([\d.]+)s", out, re.M)]
    return epochs, re.search(r"^best epoch .*$", out, re.M).group(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--keras-python", required=True, help="python of a venv with tensorflow-cpu")
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--epochs", type=int, default=2, help="Keras epochs per round (and baseline's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep each run of a preset here, as PRESET-seedN/")
    args = parser.parse_args()
    batches = Path(args.data_dir) / "cifar-10-batches-py"
    keras, project, runs = [], [], []
    for r in range(args.rounds):
        keras += keras_epochs(args.keras_python, batches, args.epochs)
        if args.preset == "baseline":
            epochs, _ = project_run(args.data_dir, "baseline", ["--epochs", str(args.epochs)])
            project += epochs
            print(f"round {r + 1}: keras {keras[-args.epochs:]} s, project {epochs} s", flush=True)
        else:
            keep = args.out / f"{args.preset}-seed{r}" if args.out else None
            epochs, result = project_run(args.data_dir, args.preset, ["--seed", str(r)], keep)
            runs.append(sum(epochs))
            print(f"round {r + 1}: keras {keras[-args.epochs:]} s; {args.preset} seed {r}: "
                  f"{sum(epochs):.1f} s ({', '.join(f'{e:.1f}' for e in epochs)}); {result}", flush=True)
    k = statistics.median(keras)
    if args.preset == "baseline":
        p = statistics.median(project)
        print(f"median epoch: keras {k:.1f} s ({TRAIN_IMAGES / k:,.0f} images/s), "
              f"project {p:.1f} s ({TRAIN_IMAGES / p:,.0f} images/s); project is {k / p:.1f}x faster")
    else:
        print(f"keras median epoch {k:.1f} s; {args.preset} runs "
              f"{', '.join(f'{t:.1f}' for t in runs)} s = "
              f"{', '.join(f'{t / k:.2f}' for t in runs)} Keras epochs "
              f"(mean {statistics.mean(runs) / k:.2f})")


if __name__ == "__main__":
    main()
