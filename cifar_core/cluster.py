"""Training runs as Ray tasks on a cluster, their run folders written here.

Used by the job registry and the command line when ``CIFAR_RAY_ADDRESS`` is set (``auto``,
``HOST:PORT`` or ``ray://HOST:10001``); nothing else imports this module, so Ray stays an
optional dependency (requirements-ray.txt).

How a run travels:

- **Data.** The uint8 arrays go into the cluster's object store once per dataset
  (``ray.put``); every task reads them from there (zero-copy on the worker's node) and
  takes its subset itself.
- **Progress and stop.** Each run has a small actor (``RunChannel``). The task reports to
  it at most every ``REPORT_SECONDS`` (the newest batch event, every epoch event, and the
  run folder's files that changed) and reads its stop flag at the same time; the app side
  polls it and passes the events to the job as if it trained here.
- **The run folder.** The task trains into a temporary folder on its worker with the
  ordinary ``train_run``/``resume_run``; the files it writes travel back and are written
  here with ``runs.atomic_write``, the checkpoint last. metrics.json names this process as
  the writer, so a run whose app process is gone reads as interrupted, as a local run does.
- **A lost worker.** The task is not retried. The folder here holds every epoch shipped
  so far with its checkpoint; it is marked ``interrupted`` and can be resumed (on the
  cluster or anywhere else): the resume sends the folder to a new task.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import ray
import torch
from ray.exceptions import RayError, RayTaskError

from .config import ModelConfig, TrainConfig
from .data import CifarData, subset
from .liveness import training_lock
from .pipeline import resume_run, train_run
from .record import CHECKPOINT_FILE, METRICS_FILE, RunError, RunMetrics
from .runs import atomic_write
from .training import BatchEvent, EpochEvent, Event, EventHandler

REPORT_SECONDS = 0.5
# Torch threads (and Ray CPUs) per run: one, the fastest use of a core for these small networks
# (cifar_core.jobs); CIFAR_RAY_CPUS_PER_RUN gives a run more.
CPUS_PER_RUN = max(1, int(os.environ.get("CIFAR_RAY_CPUS_PER_RUN", "1") or 1))
PACKAGE_DIR = Path(__file__).resolve().parent


class Cluster(Protocol):
    """Where the job registry's runs train when not in this process."""

    def slots(self) -> int: ...

    def train(self, run_dir: Path, data: CifarData, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
              preset: str | None, subset: int | None, owner: str | None, resume: bool,
              on_event: EventHandler | None, stop: threading.Event) -> RunMetrics: ...


@dataclass
class Shipment:
    """What a task sends back: events in order, files by name (complete contents), removals."""

    events: list[Event] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)

    def add(self, other: Shipment) -> None:
        self.events += other.events
        self.files.update(other.files)
        self.removed = (self.removed - set(other.files)) | other.removed
        for name in other.removed:
            self.files.pop(name, None)


@ray.remote(num_cpus=0)
class RunChannel:
    """The meeting point of one run's task and the app: shipments one way, stop the other."""

    def __init__(self) -> None:
        self._pending = Shipment()
        self._stop = False

    def report(self, shipment: Shipment) -> bool:
        """Take a shipment; returns whether the run should stop."""
        self._pending.add(shipment)
        return self._stop

    def drain(self) -> Shipment:
        shipment, self._pending = self._pending, Shipment()
        return shipment

    def request_stop(self) -> None:
        self._stop = True


class FolderReporter:
    """The task's event handler: collects events and ships them with the run folder's changes."""

    def __init__(self, channel: ray.actor.ActorHandle, folder: Path) -> None:
        self.channel, self.folder = channel, folder
        self.stop = threading.Event()
        self._events: list[Event] = []
        self._latest_batch: BatchEvent | None = None
        self._seen: dict[str, tuple[int, int]] = {}
        self._last_report = time.monotonic()

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchEvent):
            self._latest_batch = event
        else:
            self._flush_batch()
            self._events.append(event)
        if isinstance(event, EpochEvent) or time.monotonic() - self._last_report >= REPORT_SECONDS:
            self.report()

    def _flush_batch(self) -> None:
        if self._latest_batch is not None:
            self._events.append(self._latest_batch)
            self._latest_batch = None

    def changes(self) -> Shipment:
        """The events so far and the files written or removed since the last call."""
        self._flush_batch()
        shipment = Shipment(events=self._events)
        self._events = []
        present = {}
        for path in self.folder.iterdir():
            if path.name.startswith(".") or not path.is_file():  # the lock; half-written temporaries
                continue
            stat = path.stat()
            present[path.name] = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path.name) != present[path.name]:
                shipment.files[path.name] = path.read_bytes()
        shipment.removed = set(self._seen) - set(present)
        self._seen = present
        return shipment

    def report(self) -> None:
        self._last_report = time.monotonic()
        if ray.get(self.channel.report.remote(self.changes())):
            self.stop.set()


@ray.remote(max_retries=0)
def train_task(channel: ray.actor.ActorHandle, data: CifarData, model_cfg: ModelConfig,
               train_cfg: TrainConfig, preset: str | None, subset_size: int | None, owner: str | None,
               files: dict[str, bytes], threads: int) -> tuple[Shipment, dict]:
    """One run on a worker: a new one, or (with ``files``, its folder) a resumed one. Returns the
    folder's last changes and metrics.json's values."""
    torch.set_num_threads(threads)
    if subset_size:
        data = subset(data, subset_size, seed=train_cfg.seed)
    with tempfile.TemporaryDirectory(prefix="cifar-run-") as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        reporter = FolderReporter(channel, folder)
        reporter.changes()  # what it was given is there already
        if files:
            metrics = resume_run(folder, data, on_event=reporter, stop=reporter.stop)
        else:
            metrics = train_run(model_cfg, train_cfg, data, folder, on_event=reporter, stop=reporter.stop,
                                preset=preset, subset=subset_size, owner=owner)
        return reporter.changes(), metrics.to_dict()


def write_shipment(run_dir: Path, shipment: Shipment) -> None:
    """The task's files written here, atomically, the checkpoint last; metrics.json of a
    running run names this process as the one writing it."""
    names = sorted(shipment.files, key=lambda name: name == CHECKPOINT_FILE)
    for name in names:
        content = shipment.files[name]
        if name == METRICS_FILE:
            content = _metrics_of_this_process(content)
        try:
            atomic_write(run_dir / Path(name).name, content)
        except OSError as err:
            raise RunError(f"cannot write {run_dir / name}: {err.strerror}") from None
    for name in shipment.removed:
        (run_dir / Path(name).name).unlink(missing_ok=True)


def _metrics_of_this_process(content: bytes) -> bytes:
    values = json.loads(content)
    if values.get("pid") is not None:
        values["pid"], values["host"] = os.getpid(), socket.gethostname()
    return json.dumps(values, indent=2).encode()


def mark_interrupted(run_dir: Path) -> None:
    """Record that the run's worker was lost: what was shipped stays, resumable."""
    try:
        values = json.loads((run_dir / METRICS_FILE).read_bytes())
    except (OSError, ValueError):
        values = {}
    metrics = RunMetrics.from_dict(values if isinstance(values, dict) else {})
    values = {**metrics.to_dict(), "status": "interrupted"}
    values.pop("pid", None)
    atomic_write(run_dir / METRICS_FILE, json.dumps(values, indent=2).encode())


def read_folder(run_dir: Path) -> dict[str, bytes]:
    """A run folder's files (not its lock or temporaries), to resume it elsewhere."""
    return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir())
            if path.is_file() and not path.name.startswith(".")}


def _check_answers(address: str, timeout: float = 3.0) -> None:
    """ConnectionError unless something accepts connections at a ``HOST:PORT`` or
    ``ray://HOST:PORT`` address: ``ray.init`` itself waits minutes on an address where
    nothing answers, and a page would wait with it. ``auto`` and ``local`` fail fast anyway."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"{address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err.strerror or err})") from None


class RayCluster:
    """A connected Ray cluster that trains runs as tasks (see the module docstring)."""

    def __init__(self, cpus_per_run: int = CPUS_PER_RUN) -> None:
        self.cpus_per_run = cpus_per_run
        self._data: dict[int, tuple[weakref.ref, ray.ObjectRef]] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, address: str, **options: object) -> RayCluster:
        """Join the cluster at ``address`` (once per process; an existing connection is kept),
        shipping this package to its workers. ``local`` starts a cluster of this machine's own;
        ``options`` go to ``ray.init`` (``num_cpus=2``, say)."""
        if not ray.is_initialized():
            _check_answers(address)
            ray.init(address=address, runtime_env={"py_modules": [str(PACKAGE_DIR)]},
                     log_to_driver=False, **options)
        return cls()

    def slots(self) -> int:
        """Runs the cluster trains at once: its CPUs, ``cpus_per_run`` each."""
        return max(1, int(ray.cluster_resources().get("CPU", 1)) // self.cpus_per_run)

    def data_ref(self, data: CifarData) -> ray.ObjectRef:
        """``data`` in the object store, put there once while it is in use here."""
        with self._lock:
            known = self._data.get(id(data))
            if known is not None and known[0]() is data:
                return known[1]
            ref = ray.put(data)
            self._data = {k: v for k, v in self._data.items() if v[0]() is not None}
            self._data[id(data)] = (weakref.ref(data), ref)
            return ref

    def train(self, run_dir: Path, data: CifarData, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
              preset: str | None = None, subset: int | None = None, owner: str | None = None,
              resume: bool = False, on_event: EventHandler | None = None,
              stop: threading.Event | None = None) -> RunMetrics:
        """Train (or resume) the run of ``run_dir`` as a task; returns when it has ended, its
        folder complete here. ``RunError`` when the cluster lost it (the folder then says
        interrupted) or it failed there."""
        run_dir = Path(run_dir)
        stop = stop or threading.Event()
        with training_lock(run_dir):
            files = read_folder(run_dir) if resume else {}
            channel = RunChannel.remote()
            task = train_task.options(num_cpus=self.cpus_per_run).remote(
                channel, self.data_ref(data), model_cfg, train_cfg, preset, subset, owner, files,
                self.cpus_per_run)
            try:
                final, values = self._follow(run_dir, channel, task, on_event, stop)
            except RayError as err:
                if (run_dir / METRICS_FILE).exists():
                    mark_interrupted(run_dir)
                if isinstance(err, RayTaskError):  # the training itself failed, on the worker
                    raise RunError(f"training failed on the cluster: {_reason(err.cause or err)}") from None
                raise RunError(f"the cluster lost this run ({_reason(err)}); the epochs it finished "
                               "are kept as an interrupted run that can be resumed") from None
            finally:
                with contextlib.suppress(RayError):  # gone with its node, say
                    ray.kill(channel)
            write_shipment(run_dir, final)
        return RunMetrics.from_dict(values)

    def _follow(self, run_dir: Path, channel: ray.actor.ActorHandle, task: ray.ObjectRef,
                on_event: EventHandler | None, stop: threading.Event) -> tuple[Shipment, dict]:
        stop_sent = False
        while True:
            done, _ = ray.wait([task], timeout=REPORT_SECONDS)
            if stop.is_set() and not stop_sent:
                channel.request_stop.remote()
                stop_sent = True
            shipment = ray.get(channel.drain.remote())
            write_shipment(run_dir, shipment)  # before the events: a page that hears of an epoch finds it
            for event in shipment.events:
                if on_event:
                    on_event(event)
            if done:
                return ray.get(task)

def _reason(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
