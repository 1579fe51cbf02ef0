"""The run folder: everything one training run leaves behind.

    RUN_DIR/config.json         {"model": ModelConfig, "train": TrainConfig, "preset", "subset", "created"}
    RUN_DIR/history.csv         epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds
    RUN_DIR/weights.safetensors the weights of the best epoch so far
    RUN_DIR/val_confusion.npy   validation confusion matrix per finished epoch (E, 10, 10)
    RUN_DIR/metrics.json        status, best_epoch, val_acc, test_acc, images_per_second,
                                train_seconds, confusion_matrix (test; rows true), ...

Every file is written to a temporary name in the same folder and renamed over the old
one, so a crash at any instant leaves the previous complete state readable. A run whose
metrics say ``running`` but whose process is gone is reported as ``interrupted``; so is one
whose process lives on (the app) but whose writer ended without being able to record that.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .model import CifarCNN, ConfigError, ModelConfig, build_model
from .training import HISTORY_COLUMNS, EpochRecord, TrainConfig

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "val_confusion.npy"
GRAD_NORMS_FILE = "grad_norms.csv"
STATUSES = ("running", "finished", "stopped", "interrupted")


class RunError(Exception):
    """A run folder is missing, unreadable or not a run."""


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


class RunWriter:
    """Writes one run folder as training goes."""

    def __init__(self, path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 preset: str | None = None, subset: int | None = None) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create run folder {self.path}: {err.strerror}") from None
        self.metrics: dict = {"status": "running", "best_epoch": 0, "val_acc": None,
                              "test_acc": None, "images_per_second": None,
                              "train_seconds": None, "confusion_matrix": None,
                              "pid": os.getpid(), "host": socket.gethostname()}
        config = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "preset": preset,
                  "subset": subset, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._write(CONFIG_FILE, json.dumps(config, indent=2).encode())
        self._write(METRICS_FILE, json.dumps(self.metrics, indent=2).encode())
        self.confusions: list[np.ndarray] = []
        self.grad_norms: list[dict[str, float]] = []
        with _ended_lock:
            _ended_unrecorded.discard(_folder_key(self.path))

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
        best = history[best_epoch - 1] if best_epoch else history[-1]
        self.metrics.update(best_epoch=best_epoch, val_acc=best.val_acc, epochs_run=len(history))
        self._write(METRICS_FILE, json.dumps(self.metrics, indent=2).encode())

    def finish(self, status: str, **figures: object) -> None:
        self.metrics.update(status=status, **figures)
        self.metrics.pop("pid", None)
        try:
            self._write(METRICS_FILE, json.dumps(self.metrics, indent=2).encode())
        except RunError:
            # The run has ended all the same: say so in this process, where the pid still lives.
            with _ended_lock:
                _ended_unrecorded.add(_folder_key(self.path))
            raise

    def save_weights(self, state: dict[str, torch.Tensor]) -> None:
        self._write(WEIGHTS_FILE, save_weights_bytes(state))


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


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, save_weights_bytes(state))


@dataclass
class Run:
    """A run folder read back: its settings, history, figures and (on demand) its model."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    config: dict
    history: list[dict]
    metrics: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        status = self.metrics.get("status", "interrupted")
        if status == "running":
            pid = self.metrics.get("pid")
            same_host = self.metrics.get("host") == socket.gethostname()
            if not (same_host and isinstance(pid, int) and _pid_alive(pid)):
                return "interrupted"
            if pid == os.getpid():
                with _ended_lock:
                    if _folder_key(self.path) in _ended_unrecorded:
                        return "interrupted"
        return status

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
            return read_history(self.path / GRAD_NORMS_FILE)
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


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file; there is no pickle path, so nothing can execute."""
    if not path.exists():
        raise RunError(f"{path.parent}: no weights yet ({path.name} missing)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{path}: not a valid safetensors file ({err})") from None


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


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


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
    return Run(path, model_cfg, train_cfg, config, history, _read_json(path / METRICS_FILE))


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
    return sorted(runs, key=lambda r: r.config.get("created", ""), reverse=True)


def new_run_dir(root: str | os.PathLike | None = None, label: str = "run") -> Path:
    """A fresh, unused folder name under ``root`` like ``20261126-031502-baseline``."""
    root = Path(root) if root else default_runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = root / (f"{stamp}-{label}" if i == 0 else f"{stamp}-{label}-{i}")
        if not candidate.exists():
            return candidate
    raise RunError(f"no free run folder name under {root}")
