"""Runs side by side: which settings differ, how they trained, and a leaderboard."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .runs import Run

RUN_TABLE_COLUMNS = ("run", "owner", "preset", "status", "val_acc", "test_acc", "epochs", "best_epoch",
                     "images", "images_per_second", "train_seconds", "created")
LEADERBOARD_COLUMNS = ("run", "owner", "preset", "status", "val_acc", "test_acc", "epochs", "images",
                       "images_per_second", "train_seconds")


def run_names(runs: Sequence[Run]) -> list[str]:
    """Folder names, made unique (``name (2)``) when two runs share one, e.g. a bundled model."""
    names, seen = [], {}
    for run in runs:
        count = seen.get(run.name, 0) + 1
        seen[run.name] = count
        names.append(run.name if count == 1 else f"{run.name} ({count})")
    return names


def flat_config(run: Run) -> dict[str, object]:
    """``model.*`` and ``train.*`` settings of a run, then ``preset`` and ``subset``.

    Lists (filters, dropout rates) become tuples so they compare and hash like values.
    """
    flat: dict[str, object] = {}
    for section, config in (("model", run.model_config), ("train", run.train_config)):
        for key, value in config.to_dict().items():
            flat[f"{section}.{key}"] = tuple(value) if isinstance(value, list) else value
    flat["preset"] = run.config.preset
    flat["subset"] = run.config.subset
    return flat


def config_diff(runs: Sequence[Run]) -> pd.DataFrame:
    """The settings whose values differ between ``runs``: one row per setting, one column per run.

    Rows are in the order of the configuration (model, train, preset, subset); a
    setting an older run folder lacks shows the default it was read back with, which is
    what rebuilding that run uses. Fewer than two runs, or runs that agree on everything,
    give an empty frame with the runs as columns.
    """
    names = run_names(runs)
    flats = [flat_config(run) for run in runs]
    keys = list(flats[0]) if flats else []
    differing = [k for k in keys if len({_hashable(flat[k]) for flat in flats}) > 1]
    frame = pd.DataFrame({name: [flat[k] for k in differing]
                          for name, flat in zip(names, flats, strict=True)},
                         index=pd.Index(differing, name="setting"), dtype=object)
    return frame


def _hashable(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value if isinstance(value, (str, int, float, bool, tuple, type(None))) else repr(value)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def run_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run with its figures, in the order given: the one table behind the Train page's run
    list and the leaderboard.

    Columns: run (unique names), owner (None without a name), preset, status, val_acc, test_acc
    (fractions), epochs (run so far), best_epoch, images (the training subset, or NaN for the full set),
    images_per_second, train_seconds, created. Figures a run has not reached yet are NaN.
    """
    rows = []
    for name, run in zip(run_names(runs), runs, strict=True):
        m = run.metrics
        rows.append({
            "run": name, "owner": run.owner, "preset": run.preset, "status": run.status,
            "val_acc": _number(m.val_acc), "test_acc": _number(m.test_acc),
            "epochs": m.epochs_run if m.epochs_run is not None else len(run.history),
            "best_epoch": _number(m.best_epoch or None), "images": _number(run.subset),
            "images_per_second": _number(m.images_per_second),
            "train_seconds": _number(m.train_seconds),
            "created": pd.to_datetime(run.created or None, errors="coerce")})
    return pd.DataFrame(rows, columns=list(RUN_TABLE_COLUMNS))


def leaderboard(runs: Sequence[Run]) -> pd.DataFrame:
    """The run table's figures, best validation accuracy first (runs without one last)."""
    frame = run_table(runs)[list(LEADERBOARD_COLUMNS)]
    return frame.sort_values("val_acc", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


def curves_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Per-epoch history of several runs in long format: run, epoch, train/val loss and accuracy."""
    columns = ["run", "epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    rows = [{"run": name, **{c: getattr(record, c) for c in columns[1:]}}
            for name, run in zip(run_names(runs), runs, strict=True) for record in run.history]
    return pd.DataFrame(rows, columns=columns)
