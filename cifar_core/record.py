"""The run folder's contract: what each file is called and what it holds.

    RUN_DIR/config.json          RunConfig: {"model", "train", "preset", "subset", "channel_order",
                                 "created", "owner"}
    RUN_DIR/history.csv          EpochRecord per finished epoch, in HISTORY_COLUMNS order
    RUN_DIR/weights.safetensors  the weights of the best epoch so far
    RUN_DIR/val_confusion.npy    validation confusion matrix per finished epoch (E, 10, 10)
    RUN_DIR/grad_norms.csv       per epoch, the mean gradient norm of each conv/dense layer
    RUN_DIR/metrics.json         RunMetrics: status, best_epoch, val_acc, test_acc,
                                 images_per_second, train_seconds, confusion_matrix (test; rows true), ...
    RUN_DIR/test_predictions.npz the saved weights' predictions on the test set
    RUN_DIR/checkpoint.pt        the training state after the last complete epoch (until the
                                 run finishes): what ``train --resume`` goes on from
    RUN_DIR/.lock                locked by the process training in the folder (cifar_core.liveness)

Everything here is plain data: reading and writing folders is ``runs``' job, the
training state inside a checkpoint is ``training``'s. Files are read back leniently (a
value of the wrong type counts as missing), so a damaged or older folder still lists.
"""

from __future__ import annotations

import csv
import io
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .config import ModelConfig, TrainConfig

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "val_confusion.npy"
GRAD_NORMS_FILE = "grad_norms.csv"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
# The test set's predictions, shipped with the bundled models so Evaluate needs neither the
# data nor a minute of CPU: `python -m cifar_core evaluate RUN_DIR --save-predictions`.
PREDICTIONS_FILE = "test_predictions.npz"


class RunError(Exception):
    """A run folder is missing, unreadable or not a run."""


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# --- config.json ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    """config.json: everything needed to rebuild the run's model and training, and where the
    run came from. A run made now is ``RunConfig(model, train, preset=...)``."""

    model: ModelConfig
    train: TrainConfig
    preset: str | None = None  # the preset it started from; None: set by hand
    subset: int | None = None  # training images used, when the run trained on part of them
    # How the training rows were read (``as_presented`` repeats the presentation's mistake).
    channel_order: str = "correct"
    created: str = field(default_factory=_now)  # local time, to the second
    owner: str | None = None  # the display name of whoever started the run

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "train": self.train.to_dict(), "preset": self.preset,
                "subset": self.subset, "channel_order": self.channel_order, "created": self.created,
                "owner": self.owner}

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """Strict about the settings (KeyError, TypeError or ConfigError: the run cannot be
        rebuilt), lenient about the rest, which older folders lack."""
        return cls(ModelConfig.from_dict(values["model"]), TrainConfig.from_dict(values["train"]),
                   preset=_text(values.get("preset")) or None,
                   subset=_count(values.get("subset")) or None,
                   channel_order=_text(values.get("channel_order")) or "correct",
                   created=_text(values.get("created")) or "",
                   owner=_text(values.get("owner")) or None)


# --- metrics.json --------------------------------------------------------------------------

@dataclass(frozen=True)
class RunMetrics:
    """metrics.json: how a run went. Figures it has not reached yet are None.

    Accuracies are fractions in [0, 1].
    """

    status: str = "running"  # running, finished, stopped, interrupted
    best_epoch: int = 0
    val_acc: float | None = None
    test_acc: float | None = None
    images_per_second: float | None = None
    train_seconds: float | None = None
    confusion_matrix: list[list[int]] | None = None  # test set; rows true, columns predicted
    # Written once known; absent from the file until then.
    epochs_run: int | None = None
    stopped_early: bool | None = None
    seconds_per_epoch: float | None = None
    classes: tuple[str, ...] | None = None
    pid: int | None = None  # of the process writing a running run
    host: str | None = None

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.classes is not None:
            values["classes"] = list(self.classes)
        return {k: v for k, v in values.items() if v is not None or k not in _WRITTEN_ONCE_KNOWN}

    @classmethod
    def from_dict(cls, values: dict) -> RunMetrics:
        status, classes, stopped_early = (values.get(k) for k in ("status", "classes", "stopped_early"))
        return cls(
            status=status if isinstance(status, str) else "interrupted",
            best_epoch=_count(values.get("best_epoch")) or 0,
            val_acc=_number(values.get("val_acc")), test_acc=_number(values.get("test_acc")),
            images_per_second=_number(values.get("images_per_second")),
            train_seconds=_number(values.get("train_seconds")),
            confusion_matrix=values.get("confusion_matrix"),
            epochs_run=_count(values.get("epochs_run")),
            stopped_early=stopped_early if isinstance(stopped_early, bool) else None,
            seconds_per_epoch=_number(values.get("seconds_per_epoch")),
            classes=tuple(str(c) for c in classes) if isinstance(classes, list) else None,
            pid=_count(values.get("pid")), host=_text(values.get("host")))


_WRITTEN_ONCE_KNOWN = {"epochs_run", "stopped_early", "seconds_per_epoch", "classes", "pid", "host"}


# --- history.csv and grad_norms.csv --------------------------------------------------------

@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # the epoch's wall time, validation included

    @classmethod
    def from_dict(cls, values: dict) -> EpochRecord:
        """A row of history.csv or of shipped results; a figure an older file lacks is NaN."""
        return cls(**{name: values.get(name, math.nan) for name in HISTORY_COLUMNS})


HISTORY_COLUMNS = tuple(f.name for f in fields(EpochRecord))


def history_csv(history: list[EpochRecord]) -> bytes:
    """history.csv: one row per finished epoch, in HISTORY_COLUMNS order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in history:
        writer.writerow([r.epoch, f"{r.train_loss:.6f}", f"{r.train_acc:.6f}", f"{r.val_loss:.6f}",
                         f"{r.val_acc:.6f}", f"{r.lr:.8g}", f"{r.seconds:.3f}"])
    return out.getvalue().encode()


def read_history(path: Path) -> list[EpochRecord]:
    """history.csv read back as the records training wrote; a column an older file lacks is NaN."""
    return [EpochRecord.from_dict(row) for row in _read_csv_numbers(path)]


def grad_norms_csv(rows: list[dict[str, float]]) -> bytes:
    """grad_norms.csv: an ``epoch`` column, then one column per layer."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def read_grad_norms(path: Path) -> list[dict]:
    return _read_csv_numbers(path)


def _read_csv_numbers(path: Path) -> list[dict]:
    """Rows of a CSV of numbers (an ``epoch`` column of integers); [] when there is no file."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


# --- test_predictions.npz --------------------------------------------------------------------

@dataclass(frozen=True)
class StoredPredictions:
    """A split's predictions and what made them, small enough to ship beside a model:
    probabilities in float16 (10,000 x 10 is 200 KB), true and predicted classes as uint8, the
    digest of the weights, the test-time augmentation and each image's content digest
    (``data.image_digests``, 80 KB for 10,000), in one compressed .npz that loads without pickle."""

    labels: np.ndarray  # (N,) true classes
    predicted: np.ndarray  # (N,)
    probabilities: np.ndarray  # (N, classes)
    # Row for row; None in files written before the digests were kept (they match the data
    # by position only).
    image_digests: np.ndarray | None
    weights_sha256: str
    tta: str

    def to_bytes(self) -> bytes:
        digests = {} if self.image_digests is None else {"image_digests": self.image_digests.astype("<u8")}
        out = io.BytesIO()
        np.savez_compressed(out, probabilities=self.probabilities.astype(np.float16),
                            labels=self.labels.astype(np.uint8), predicted=self.predicted.astype(np.uint8),
                            weights_sha256=np.array(self.weights_sha256), tta=np.array(self.tta), **digests)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, classes: int) -> StoredPredictions | None:
        """The predictions of a file over ``classes`` classes; None when it is unreadable or malformed."""
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as stored:
                made_by = str(stored["weights_sha256"]), str(stored["tta"])
                probabilities = stored["probabilities"].astype(np.float32)
                labels, predicted = stored["labels"].astype(np.int64), stored["predicted"].astype(np.int64)
                digests = stored["image_digests"].astype(np.uint64) if "image_digests" in stored else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        rows = (len(probabilities),)
        shaped = (probabilities.ndim == 2 and probabilities.shape[1] == classes and rows[0] > 0
                  and labels.shape == rows and predicted.shape == rows
                  and (digests is None or digests.shape == rows))
        if not shaped or max(labels.max(), predicted.max()) >= classes:
            return None
        return cls(labels, predicted, probabilities, digests, *made_by)
