"""Pretrained models shipped in ``models/``, so the app and ``predict`` work before any training.

Each is a run folder (config.json, metrics.json, history.csv, weights.safetensors)
written by ``python -m cifar_core train`` on the real data; models/README.md records
the commands.
"""

from __future__ import annotations

from .record import RunError
from .runs import MODELS_DIR, Run, load_run

PREFERRED = ("best", "fast", "baseline")

__all__ = ["MODELS_DIR", "bundled_runs", "load_bundled"]


def bundled_runs() -> list[Run]:
    """The bundled models that are present, best first."""
    runs = []
    for name in PREFERRED:
        try:
            runs.append(load_run(MODELS_DIR / name))
        except RunError:
            continue
    return runs


def load_bundled(name: str | None = None) -> Run:
    for run in bundled_runs():
        if name is None or run.name == name:
            return run
    raise RunError(f"no bundled model{' ' + repr(name) if name else ''} in {MODELS_DIR}; "
                   "pass a run folder trained with `python -m cifar_core train`")
