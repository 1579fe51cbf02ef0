"""The run folder: everything one training run leaves behind.

    RUN_DIR/config.json         {"model": ModelConfig, "train": TrainConfig, "preset", "subset", "created",
                                "owner" (the name its trainer gave, or null)}
    RUN_DIR/history.csv         epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds
    RUN_DIR/weights.safetensors the weights of the best epoch so far
    RUN_DIR/val_confusion.npy   validation confusion matrix per finished epoch (E, 10, 10)
    RUN_DIR/metrics.json        status, best_epoch, val_acc, test_acc, images_per_second,
                                train_seconds, confusion_matrix (test; rows true), ...
    RUN_DIR/checkpoint.pt       the training state after the last complete epoch (until the
                                run finishes): what ``train --resume`` goes on from
    RUN_DIR/.lock               locked by the process training in the folder (``training_lock``)

Every file is written to a temporary name in the same folder and renamed over the old
one, so a crash at any instant leaves the previous complete state readable. A run whose
metrics say ``running`` but whose process is gone is reported as ``interrupted``; so is one
whose process lives on (the app) but whose writer ended without being able to record that.

The checkpoint is written last in each epoch, so the other files are at most one epoch
ahead of it; a resume cuts them back to it. It holds only tensors, dicts, lists,
numbers and strings and is read with ``torch.load(weights_only=True)``: a file that
asks for anything else is refused, never unpickled.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import pickle
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import TTA, ConfigError, ModelConfig, TrainConfig, check_owner
from .data import DEFAULT_CLASSES
from .evaluation import Evaluation, predictions_bytes, read_predictions
from .formatting import format_percent
from .model import CifarCNN, build_model
from .training import HISTORY_COLUMNS, EpochRecord, TrainingState

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
# The pretrained runs shipped with the project (cifar_core.bundled lists them).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class RunError(Exception):
    """A run folder is missing, unreadable or not a run."""


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json: how a run went. Figures it has not reached yet are None.

    Read back leniently (a value of the wrong type counts as missing), so a damaged or
    older file still lists. Accuracies are fractions in [0, 1].
    """

    status: str = "running"
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
            pid=_count(values.get("pid")),
            host=values.get("host") if isinstance(values.get("host"), str) else None)


_WRITTEN_ONCE_KNOWN = {"epochs_run", "stopped_early", "seconds_per_epoch", "classes", "pid", "host"}


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


def history_csv(history: list[EpochRecord]) -> bytes:
    """history.csv: one row per finished epoch, in HISTORY_COLUMNS order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in history:
        writer.writerow([r.epoch, f"{r.train_loss:.6f}", f"{r.train_acc:.6f}", f"{r.val_loss:.6f}",
                         f"{r.val_acc:.6f}", f"{r.lr:.8g}", f"{r.seconds:.3f}"])
    return out.getvalue().encode()


# Run folders whose writer in this process ended without recording it on disk (the last
# write failed: disk full, folder gone). Their metrics.json still says "running" under this
# live process's pid; without this set they would show as running until a restart.
_ended_unrecorded: set[Path] = set()
_ended_lock = threading.Lock()


def _folder_key(path: Path) -> Path:
    return Path(path).resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_run_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create run folder {path}: {err.strerror}") from None
    return path


@contextlib.contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` while this process trains in it; ``RunError`` at once when another
    process, or another thread here, holds it.

    The status check (a pid in metrics.json) cannot tell apart two resumes started at the
    same moment; this lock can. The operating system drops it when its holder ends, however
    it ends, so a killed run never leaves a stale lock.
    """
    folder = make_run_folder(run_dir)
    try:
        handle = open(folder / LOCK_FILE, "a+b")
    except OSError as err:
        raise RunError(f"cannot lock {folder}: {err.strerror}") from None
    with handle:
        try:
            _lock(handle.fileno())
        except OSError:
            raise RunError(f"{run_dir} is being trained by another process right now") from None
        try:
            yield
        finally:
            _unlock(handle.fileno())


if os.name == "nt":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class RunWriter:
    """Writes one run folder as training goes."""

    def __init__(self, path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 preset: str | None = None, subset: int | None = None,
                 channel_order: str = "correct", owner: str | None = None) -> None:
        self.path = make_run_folder(path)
        self.metrics = RunMetrics(pid=os.getpid(), host=socket.gethostname())
        config = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "preset": preset,
                  "subset": subset, "channel_order": channel_order,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "owner": check_owner(owner)}
        self._write(CONFIG_FILE, json.dumps(config, indent=2).encode())
        self._write_metrics()
        self.confusions: list[np.ndarray] = []
        self.grad_norms: list[dict[str, float]] = []
        with _ended_lock:
            _ended_unrecorded.discard(_folder_key(self.path))

    @classmethod
    def reopen(cls, run: Run, state: TrainingState) -> RunWriter:
        """Go on writing ``run`` from its checkpoint ``state``: the files that went past the
        checkpoint's epoch are cut back to it, and the run is marked running by this process."""
        epochs = state.epoch
        confusions = run.val_confusions() if epochs else None
        if len(run.history) < epochs or (epochs and (confusions is None or len(confusions) < epochs)):
            raise RunError(f"{run.path}: its files are behind its checkpoint ({epochs} epochs)")
        writer = cls.__new__(cls)
        writer.path = run.path
        writer.metrics = RunMetrics(pid=os.getpid(), host=socket.gethostname())
        writer.confusions = list(confusions[:epochs]) if confusions is not None else []
        writer.grad_norms = [row for row in run.grad_norms() if row["epoch"] <= epochs]
        with _ended_lock:  # running again in this process
            _ended_unrecorded.discard(_folder_key(run.path))
        if not epochs:
            for name in (WEIGHTS_FILE, CONFUSION_FILE, GRAD_NORMS_FILE, HISTORY_FILE):
                (writer.path / name).unlink(missing_ok=True)
            writer._write_metrics()
            return writer
        weights = state.best_state if run.train_config.restore_best else state.model
        writer._write(WEIGHTS_FILE, save_weights_bytes(weights))
        writer._write(CONFUSION_FILE, _npy_bytes(np.stack(writer.confusions)))
        if writer.grad_norms:
            writer._write(GRAD_NORMS_FILE, _csv_bytes(writer.grad_norms))
        best_epoch = state.stopping.best_epoch if run.train_config.restore_best else epochs
        writer._write(HISTORY_FILE, history_csv(state.history))
        writer._progress(state.history, best_epoch)
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
            self._write(GRAD_NORMS_FILE, _csv_bytes(self.grad_norms))
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

    def save_checkpoint(self, state: TrainingState) -> None:
        """The training state to resume from; written after the epoch's other files."""
        self._write(CHECKPOINT_FILE, checkpoint_bytes(state))

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
            with _ended_lock:
                _ended_unrecorded.add(_folder_key(self.path))
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
    atomic_write(path, predictions_bytes(result, _weights_digest(folder), tta))
    return path


def _csv_bytes(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def save_weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def checkpoint_bytes(state: TrainingState) -> bytes:
    out = io.BytesIO()
    torch.save(state.state_dict(), out)
    return out.getvalue()


def read_checkpoint(run_dir: Path) -> TrainingState:
    """The training state saved in ``run_dir``; ``RunError`` when it is missing or unusable.

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
    try:
        return TrainingState.from_state_dict(values)
    except ValueError as err:
        raise RunError(f"{path}: not a usable checkpoint ({err})") from None


@dataclass
class Run:
    """A run folder read back: its settings, history, figures and (on demand) its model."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    config: dict  # config.json as written; compare.flat_config shows settings older runs lack
    history: list[EpochRecord]
    metrics: RunMetrics

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def preset(self) -> str:
        return self.config.get("preset") or "custom"

    @property
    def subset(self) -> int | None:
        """Training images used, when the run trained on part of the training set."""
        return _count(self.config.get("subset")) or None

    @property
    def owner(self) -> str | None:
        """The name its trainer gave; None when none was given or the stored one is not a valid name."""
        owner = self.config.get("owner")
        try:
            return check_owner(owner) if isinstance(owner, str) else None
        except ConfigError:
            return None

    @property
    def created(self) -> str:
        created = self.config.get("created")
        return created if isinstance(created, str) else ""

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
        if status == "running":
            pid = self.metrics.pid
            same_host = self.metrics.host == socket.gethostname()
            if not (same_host and pid is not None and _pid_alive(pid)):
                return "interrupted"
            if pid == os.getpid():
                with _ended_lock:
                    if _folder_key(self.path) in _ended_unrecorded:
                        return "interrupted"
        return status

    @property
    def has_weights(self) -> bool:
        return (self.path / WEIGHTS_FILE).exists()

    @property
    def channel_order(self) -> str:
        """How the training rows were read (``as_presented`` repeats the presentation's mistake)."""
        order = self.config.get("channel_order")
        return order if isinstance(order, str) else "correct"

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
        return read_predictions(raw, self.classes, self.weights_digest(), self.train_config.tta)

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
            return _read_csv_numbers(self.path / GRAD_NORMS_FILE)
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


def _read_csv_numbers(path: Path) -> list[dict]:
    """Rows of a CSV of numbers (an ``epoch`` column of integers); [] when there is no file."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def read_history(path: Path) -> list[EpochRecord]:
    """history.csv read back as the records training wrote; a column an older file lacks is NaN."""
    return [EpochRecord.from_dict(row) for row in _read_csv_numbers(path)]


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist")
    config = _read_json(path / CONFIG_FILE)
    try:
        model_cfg = ModelConfig.from_dict(config["model"])
        train_cfg = TrainConfig.from_dict(config["train"])
    except (KeyError, TypeError, ConfigError) as err:
        raise RunError(f"{path / CONFIG_FILE}: invalid ({err})") from None
    try:
        history = read_history(path / HISTORY_FILE)
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"{path / HISTORY_FILE}: unreadable ({err})") from None
    return Run(path, model_cfg, train_cfg, config, history,
               RunMetrics.from_dict(_read_json(path / METRICS_FILE)))


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
