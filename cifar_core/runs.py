"""Run folders: write one as training goes, read it back, list them, pick one.

What each file holds is ``record``'s; whether its writer is alive is ``liveness``'. Every
file is written to a temporary name in the same folder and renamed over the old one, so a
crash at any instant leaves the previous complete state readable. A run whose metrics say
``running`` but whose process is gone is reported as ``interrupted``; so is one whose
process lives on (the app) but whose writer ended without being able to record that.

The checkpoint is written last in each epoch, so the other files are at most one epoch
ahead of it; a resume cuts them back to it. It holds only tensors, dicts, lists,
numbers and strings (a training state as plain values; ``pipeline`` converts) and is read
with ``torch.load(weights_only=True)``: a file that asks for anything else is refused,
never unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import socket
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import liveness
from .config import TTA, ConfigError, ModelConfig, TrainConfig, check_owner
from .data import DEFAULT_CLASSES
from .evaluation import Evaluation
from .formatting import format_percent
from .model import CifarCNN, build_model
from .record import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    GRAD_NORMS_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    WEIGHTS_FILE,
    EpochRecord,
    RunConfig,
    RunError,
    RunMetrics,
    StoredPredictions,
    grad_norms_csv,
    history_csv,
    read_grad_norms,
    read_history,
)

# The pretrained runs shipped with the project (cifar_core.bundled lists them).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def default_runs_root() -> Path:
    return Path(os.environ.get("CIFAR_RUNS_DIR", "runs"))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_run_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create run folder {path}: {err.strerror}") from None
    return path


@dataclass(frozen=True)
class ResumePoint:
    """What a checkpoint says the folder should hold when training goes on from it: the
    finished epochs, the weights to keep and the epoch they are from (0: none yet)."""

    history: list[EpochRecord]
    weights: dict[str, torch.Tensor]
    best_epoch: int


class RunWriter:
    """Writes one run folder as training goes."""

    def __init__(self, path: Path, config: RunConfig) -> None:
        self.path = make_run_folder(path)
        self.metrics = RunMetrics(pid=os.getpid(), host=socket.gethostname())
        self._write(CONFIG_FILE, json.dumps(config.to_dict(), indent=2).encode())
        self._write_metrics()
        self.confusions: list[np.ndarray] = []
        self.grad_norms: list[dict[str, float]] = []
        liveness.writer_started(self.path)

    @classmethod
    def reopen(cls, run: Run, point: ResumePoint) -> RunWriter:
        """Go on writing ``run`` from its checkpoint's ``point``: the files that went past the
        checkpoint's epoch are cut back to it, and the run is marked running by this process."""
        epochs = len(point.history)
        confusions = run.val_confusions() if epochs else None
        if len(run.history) < epochs or (epochs and (confusions is None or len(confusions) < epochs)):
            raise RunError(f"{run.path}: its files are behind its checkpoint ({epochs} epochs)")
        writer = cls.__new__(cls)
        writer.path = run.path
        writer.metrics = RunMetrics(pid=os.getpid(), host=socket.gethostname())
        writer.confusions = list(confusions[:epochs]) if confusions is not None else []
        writer.grad_norms = [row for row in run.grad_norms() if row["epoch"] <= epochs]
        liveness.writer_started(run.path)
        if not epochs:
            for name in (WEIGHTS_FILE, CONFUSION_FILE, GRAD_NORMS_FILE, HISTORY_FILE):
                (writer.path / name).unlink(missing_ok=True)
            writer._write_metrics()
            return writer
        writer._write(WEIGHTS_FILE, save_weights_bytes(point.weights))
        writer._write(CONFUSION_FILE, _npy_bytes(np.stack(writer.confusions)))
        if writer.grad_norms:
            writer._write(GRAD_NORMS_FILE, grad_norms_csv(writer.grad_norms))
        writer._write(HISTORY_FILE, history_csv(point.history))
        writer._progress(point.history, point.best_epoch)
        return writer

    def _write_metrics(self) -> None:
        self._write(METRICS_FILE, json.dumps(self.metrics.to_dict(), indent=2).encode())

    def _write(self, name: str, data: bytes) -> None:
        try:
            atomic_write(self.path / name, data)
        except OSError as err:
            raise RunError(f"cannot write {self.path / name}: {err.strerror}") from None

    def epoch_done(self, history: list[EpochRecord], best_epoch: int, val_confusion: np.ndarray,
                   best_state: dict[str, torch.Tensor] | None,
                   grad_norms: dict[str, float] | None = None) -> None:
        """Record a finished epoch; ``best_state`` is given when this epoch is the new best."""
        self.confusions.append(val_confusion)
        if grad_norms:
            self.grad_norms.append({"epoch": history[-1].epoch, **grad_norms})
            self._write(GRAD_NORMS_FILE, grad_norms_csv(self.grad_norms))
        if best_state is not None:
            self._write(WEIGHTS_FILE, save_weights_bytes(best_state))
        self._write(CONFUSION_FILE, _npy_bytes(np.stack(self.confusions)))
        self._write(HISTORY_FILE, history_csv(history))
        self._progress(history, best_epoch)

    def _progress(self, history: list[EpochRecord], best_epoch: int) -> None:
        best = history[best_epoch - 1] if best_epoch else history[-1]
        self.metrics = replace(self.metrics, best_epoch=best_epoch, val_acc=best.val_acc,
                               epochs_run=len(history))
        self._write_metrics()

    def save_checkpoint(self, values: dict) -> None:
        """The training state to resume from, as plain values; written after the epoch's other files."""
        self._write(CHECKPOINT_FILE, checkpoint_bytes(values))

    def discard_checkpoint(self) -> None:
        """A finished run is not resumed: its checkpoint (several times the weights) goes."""
        (self.path / CHECKPOINT_FILE).unlink(missing_ok=True)

    def finish(self, status: str, **figures: object) -> None:
        """The last word on the run: its status and final figures (RunMetrics fields)."""
        self.metrics = replace(self.metrics, status=status, pid=None, **figures)
        try:
            self._write_metrics()
        except RunError:
            # The run has ended all the same: say so in this process, where the pid still lives.
            liveness.writer_ended_unrecorded(self.path)
            raise

    def save_weights(self, state: dict[str, torch.Tensor]) -> None:
        self._write(WEIGHTS_FILE, save_weights_bytes(state))

    def save_test_predictions(self, result: Evaluation, tta: TTA) -> None:
        """The saved weights' predictions on the test set, so Evaluate draws them at once."""
        try:
            write_test_predictions(self.path, result, tta)
        except OSError as err:
            raise RunError(f"cannot write {self.path / PREDICTIONS_FILE}: {err.strerror}") from None


def write_test_predictions(folder: Path, result: Evaluation, tta: TTA) -> Path:
    """``result``, made by the weights in ``folder`` with ``tta``, stored beside them."""
    path = folder / PREDICTIONS_FILE
    stored = StoredPredictions(result.labels, result.predicted, result.probabilities, result.image_digests,
                               _weights_digest(folder), tta)
    atomic_write(path, stored.to_bytes())
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def save_weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def checkpoint_bytes(values: dict) -> bytes:
    out = io.BytesIO()
    torch.save(values, out)
    return out.getvalue()


def read_checkpoint(run_dir: Path) -> dict:
    """The training state saved in ``run_dir`` as plain values; ``RunError`` when it is
    missing or unreadable.

    ``weights_only=True``: only tensors and plain data are rebuilt; a file that asks for
    any other object is refused, and there is no fallback to full unpickling.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise RunError(f"{run_dir}: no checkpoint to resume from ({CHECKPOINT_FILE} missing)")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; nothing else is read
        raise RunError(f"{path}: not a readable checkpoint (not a torch.save archive)")
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # weights_only's refusal of a class or function
            raise RunError(f"{path}: refused to load (it holds objects other than tensors and "
                           "plain data)") from None
        raise RunError(f"{path}: not a readable checkpoint (damaged pickle)") from None
    except Exception as err:  # a damaged or foreign file fails in many ways; all mean the same
        detail = " ".join(str(err).split())[:200]
        raise RunError(f"{path}: not a readable checkpoint ({detail})") from None
    if not isinstance(values, dict):
        raise RunError(f"{path}: not a usable checkpoint (not a training state)")
    return values


@dataclass
class Run:
    """A run folder read back: its settings, history, figures and (on demand) its model."""

    path: Path
    config: RunConfig
    history: list[EpochRecord]
    metrics: RunMetrics

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    @property
    def train_config(self) -> TrainConfig:
        return self.config.train

    @property
    def preset(self) -> str:
        return self.config.preset or "custom"

    @property
    def subset(self) -> int | None:
        """Training images used, when the run trained on part of the training set."""
        return self.config.subset

    @property
    def owner(self) -> str | None:
        """The name its trainer gave; None without one, or for a stored one that is not a valid name."""
        try:
            return check_owner(self.config.owner)
        except ConfigError:
            return None

    @property
    def created(self) -> str:
        return self.config.created

    @property
    def is_bundled(self) -> bool:
        """One of the pretrained models shipped in models/."""
        return self.path.parent == MODELS_DIR

    @property
    def accuracy(self) -> float | None:
        """The honest figure where there is one: test accuracy, else validation accuracy."""
        return self.metrics.test_acc if self.metrics.test_acc is not None else self.metrics.val_acc

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in output order: the run's own, or CIFAR-10's for runs that lack them."""
        classes = self.metrics.classes
        return classes if classes is not None and len(classes) == len(DEFAULT_CLASSES) else DEFAULT_CLASSES

    @property
    def label(self) -> str:
        """How the run is named wherever one is chosen: who it is, what it is, how good."""
        prefix = f"Bundled model '{self.name}'" if self.is_bundled else f"{self.name} ({self.status})"
        details = [self.owner] if self.owner else []
        details.append(self.preset)
        if self.subset:
            details.append(f"{self.subset:,} images")
        if self.metrics.test_acc is not None:
            details.append(f"test {format_percent(self.metrics.test_acc)}")
        return f"{prefix} · {' · '.join(details)}"

    @property
    def status(self) -> str:
        status = self.metrics.status
        if status == "running" and not liveness.writer_alive(self.path, self.metrics.pid, self.metrics.host):
            return "interrupted"
        return status

    @property
    def has_weights(self) -> bool:
        return (self.path / WEIGHTS_FILE).exists()

    def resume_blocker(self) -> str | None:
        """Why this run cannot be resumed, or None when it can.

        A run can be resumed when it has a checkpoint and was stopped by its user, or was
        interrupted before its planned epochs were done. (Only the checkpoint itself says
        for sure how far it got; reading it is left to the resume.)
        """
        status = self.status
        if self.is_bundled:
            return f"{self.name} is a bundled model, not a run to resume"
        if status == "finished":
            return f"{self.path} has finished; there is nothing to resume"
        if status == "running":
            return f"{self.path} is still running (process {self.metrics.pid})"
        if not (self.path / CHECKPOINT_FILE).exists():
            return f"{self.path}: no checkpoint to resume from ({CHECKPOINT_FILE} missing)"
        if status == "interrupted" and len(self.history) >= self.train_config.epochs:
            return f"{self.path}: all {self.train_config.epochs} planned epochs are done"
        return None

    @property
    def resumable(self) -> bool:
        return self.resume_blocker() is None

    def weights_mtime(self) -> float:
        """When the weights were last saved (0 without weights): a cache key for anything derived."""
        return _weights_mtime(self.path)

    def weights_digest(self) -> str:
        """SHA-256 of the weights file ('' without one): ties stored predictions to the weights."""
        return _weights_digest(self.path)

    def stored_test_predictions(self) -> Evaluation | None:
        """The test-set predictions saved beside the weights, when they were made by these
        weights; None when there are none or the model was retrained since."""
        try:
            raw = (self.path / PREDICTIONS_FILE).read_bytes()
        except OSError:
            return None
        stored = StoredPredictions.from_bytes(raw, len(self.classes))
        made_here = (self.weights_digest(), self.train_config.tta)
        if stored is None or (stored.weights_sha256, stored.tta) != made_here:
            return None
        return Evaluation(stored.labels, stored.predicted, stored.probabilities, self.classes,
                          stored.image_digests)

    def save_test_predictions(self, result: Evaluation) -> Path:
        """Store ``result`` (this run's weights on the whole test set, with its test-time
        augmentation) beside the weights."""
        return write_test_predictions(self.path, result, self.train_config.tta)

    def test_confusion(self) -> np.ndarray | None:
        """The test confusion matrix (rows true, columns predicted), or None before the run is tested."""
        if self.metrics.confusion_matrix is None:
            return None
        try:
            array = np.asarray(self.metrics.confusion_matrix, dtype=np.int64)
        except (TypeError, ValueError):
            return None
        n = len(DEFAULT_CLASSES)
        return array if array.shape == (n, n) and (array >= 0).all() else None

    def val_confusions(self) -> np.ndarray | None:
        path = self.path / CONFUSION_FILE
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def grad_norms(self) -> list[dict]:
        """Per epoch, the mean gradient norm of each conv/dense layer (empty for old runs)."""
        try:
            return read_grad_norms(self.path / GRAD_NORMS_FILE)
        except (OSError, ValueError):
            return []

    def load_model(self, device: torch.device | str = "cpu") -> CifarCNN:
        model = build_model(self.model_config)
        try:
            model.load_state_dict(load_weights(self.path / WEIGHTS_FILE))
        except RuntimeError as err:  # names or shapes that are not this config's model
            detail = " ".join(str(err).split())[:300]
            raise RunError(f"{self.path / WEIGHTS_FILE}: does not fit {CONFIG_FILE} ({detail})") from None
        return model.to(device).eval()


def _weights_mtime(folder: Path) -> float:
    try:
        return (folder / WEIGHTS_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _weights_digest(folder: Path) -> str:
    return _file_digest(str(folder / WEIGHTS_FILE), _weights_mtime(folder))


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime: float) -> str:
    # Keyed on the modification time too, so weights saved again are hashed again.
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file; there is no pickle path, so nothing can execute."""
    if not path.exists():
        raise RunError(f"{path.parent}: no weights yet ({path.name} missing)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{path}: not a valid safetensors file ({err})") from None


def first_conv_weights(path: Path) -> np.ndarray:
    """The weights (F, 3, k, k) of the convolution that sees the image: the whitening stem
    where there is one, else the first conv layer."""
    state = load_weights(path)
    convs = [name for name, tensor in state.items() if tensor.ndim == 4]
    if not convs:
        raise RunError(f"{path}: no convolution weights")
    # The file lists tensors sorted by name, not in network order ("conv1" < "stem").
    first = next((name for name in ("layers.stem.weight", "layers.conv1.weight") if name in state), convs[0])
    return state[first].float().numpy()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not a run folder ({path.name} missing)") from None
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: unreadable ({err})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: expected a JSON object")
    return value


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist")
    try:
        config = RunConfig.from_dict(_read_json(path / CONFIG_FILE))
    except (KeyError, TypeError, ConfigError) as err:
        raise RunError(f"{path / CONFIG_FILE}: invalid ({err})") from None
    try:
        history = read_history(path / HISTORY_FILE)
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"{path / HISTORY_FILE}: unreadable ({err})") from None
    return Run(path, config, history, RunMetrics.from_dict(_read_json(path / METRICS_FILE)))


def list_runs(root: str | os.PathLike | None = None) -> list[Run]:
    """Every readable run under ``root``, newest first; unreadable folders are skipped."""
    root = Path(root) if root else default_runs_root()
    if not root.is_dir():
        return []
    runs = []
    for child in root.iterdir():
        if child.is_dir() and (child / CONFIG_FILE).exists():
            try:
                runs.append(load_run(child))
            except RunError:
                continue
    return sorted(runs, key=lambda r: r.created, reverse=True)


def default_run(runs: list[Run], just_trained: str | None = None) -> Run | None:
    """The run a page should open on: the one this visitor's own job has just finished
    (``just_trained``, its folder), else the most accurate finished run (bundled models
    included), else the first of ``runs``. A run still training is never the default: its
    weights are a snapshot of a model that is still changing."""
    for run in runs:
        if just_trained is not None and str(run.path) == just_trained and run.status != "running":
            return run
    finished = [run for run in runs if run.status == "finished" and run.accuracy is not None]
    if finished:
        return max(finished, key=lambda run: run.accuracy)  # the first of equals, by list order
    settled = [run for run in runs if run.status != "running"]
    return (settled or runs or [None])[0]


def new_run_dir(root: str | os.PathLike | None = None, label: str = "run") -> Path:
    """A fresh, unused folder name under ``root`` like ``20261126-031502-baseline``."""
    root = Path(root) if root else default_runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = root / (f"{stamp}-{label}" if i == 0 else f"{stamp}-{label}-{i}")
        if not candidate.exists():
            return candidate
    raise RunError(f"no free run folder name under {root}")
