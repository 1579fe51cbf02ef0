"""Epoch time of the presentation's Keras program against the `baseline` preset, alternating.

    python benchmarks/keras_side_by_side.py --data-dir /tmp/cifar10 \\
        --keras-python /path/to/tf-venv/bin/python [--epochs 2] [--rounds 2]

The Keras program is ../shared/reference/presentation_keras.py (TensorFlow lives in
its own virtual environment; it is not a dependency of this project). Both train the
same network on the same 40,000 images with the same augmentation and batch size. On a
shared machine absolute times drift, so the two run in turn and the ratio of their
median epoch times is the figure to quote.
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


def keras_epochs(python: str, batches_dir: Path, epochs: int) -> list[float]:
    out = subprocess.run([python, str(KERAS_SCRIPT), str(batches_dir), str(epochs), "--fixed-reshape"],
                         capture_output=True, text=True, check=True).stdout
    return [float(s) for s in re.findall(r"^epoch \d+ ([\d.]+)s", out, re.M)]


def project_epochs(data_dir: str, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-m", "cifar_core", "train", "--preset", "baseline",
                              "--epochs", str(epochs), "--data-dir", data_dir, "--out", tmp],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return [float(s) for s in re.findall(r"^epoch \d+/\d+ .* ([\d.]+)s", out, re.M)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--keras-python", required=True, help="python of a venv with tensorflow-cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    batches = Path(args.data_dir) / "cifar-10-batches-py"
    keras, project = [], []
    for r in range(args.rounds):
        keras += keras_epochs(args.keras_python, batches, args.epochs)
        project += project_epochs(args.data_dir, args.epochs)
        print(f"round {r + 1}: keras {keras[-args.epochs:]} s, "
              f"project {project[-args.epochs:]} s", flush=True)
    k, p = statistics.median(keras), statistics.median(project)
    print(f"median epoch: keras {k:.1f} s ({40000 / k:,.0f} images/s), "
          f"project {p:.1f} s ({40000 / p:,.0f} images/s); project is {k / p:.1f}x faster")


if __name__ == "__main__":
    main()
