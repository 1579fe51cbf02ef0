"""Background training jobs for the app: a thread per run, a live snapshot, stop, a limit.

The registry is module-level (``get_registry()``), not per browser session, so a run
keeps going when its page is left, its tab closed or its session ends; any session can
list the jobs, and a session that remembers a job id finds it again, finished or not.

A job either starts a new run in a fresh folder (``submit``) or goes on with a stopped
or interrupted run in its own folder (``resume``); its snapshot then holds the epochs
done before, so the live view shows the whole run.

Finished jobs keep their last snapshot (the newest 50; 10 in the cloud profile), so a
page that comes back after the end still shows the final curves and figures; the run
folder holds the rest.

Policies, and why:

- **Limit: queue, don't refuse.** At most ``CIFAR_MAX_JOBS`` jobs train at once; by
  default as many as the machine allows (``machine_slots``: one per core but one, the
  web server's, and no more than its free memory holds; 1 on two cores, 1 in the cloud
  profile of ``cifar_core.deployment``). Further submissions wait in a first-come,
  first-served queue and start as soon as a slot frees: a class clicking "Start" at the
  same moment is better served by a visible place in the queue than by an error. The
  queue is bounded (``CIFAR_MAX_QUEUED``, default 60, 2 in the cloud profile; 0 turns
  queueing off); beyond that ``submit`` raises ``JobLimitError`` with a message for the
  user. A queued job can be stopped before it ever starts.
- **Fair.** A visitor (a browser session, ``visitor=``) has at most one run waiting, so a
  queue position means a person, and each queued job's snapshot says when it should
  start (``starts_in``): the running jobs' time left and, for the queued jobs ahead of it,
  their planned epochs at the speed training has measured here.
- **Names.** A job may carry its trainer's name (``owner``, checked by
  ``config.check_owner``); the run folder keeps it in config.json.
- **A cluster.** With ``CIFAR_RAY_ADDRESS`` set, each job trains as a Ray task on that
  cluster (``cifar_core.cluster``, imported only then): the queue, snapshots and stop work
  the same, the run folder is written here, and the limit defaults to the tasks the
  cluster's CPUs hold at once.
- **Torch threads.** PyTorch's intra-op thread count is process-wide: a thread that
  calls ``torch.set_num_threads`` changes it for itself and for every thread that first
  uses torch after it (Streamlit starts a new script thread per rerun). Each job sets it
  when it starts to ``CIFAR_TORCH_THREADS`` if given, else
  ``max(1, (cores - 1) // max_jobs)`` (cores: the host's, or a container's CPU quota
  where that is lower): one core stays free for the web server, and
  concurrent jobs don't oversubscribe the rest. On a busy 2-core machine this is also
  the fastest choice for training itself: with 2 OpenMP threads, and the other core
  needed elsewhere, a batch waits on the slower thread (measured: about 1,100 images/s
  with 1 thread against 230 with 2 while another process was busy). A thread fixes its
  count at its first use of torch, so a job pins its own right away (a page setting the
  process-wide value a moment later does not reach it), and page threads that run models
  set theirs with ``use_page_threads``: inheriting a job's single thread made the first
  Evaluate of the bundled model take 55 s instead of 20.
- **Pages first.** A job's thread lowers its own CPU priority (``yield_to_pages``), so a
  page's script run that wants the same core as training gets most of it; when no page
  runs, training has the core as before.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from .config import ModelConfig, TrainConfig, check_owner
from .data import CifarData, DataError, subset
from .deployment import cpu_quota, current_profile
from .pipeline import resume_run, train_run
from .record import EpochRecord, RunError, RunMetrics
from .runs import Run, default_runs_root, new_run_dir
from .training import BatchEvent, EpochEvent, Event

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "finished", "stopped", "failed"]
ACTIVE_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
Phase = Literal["waiting", "preparing", "training", "validating", "testing", "done"]
# Memory one more concurrent run may need on top of the shared dataset: a whole command-line
# training process of quick's network, PyTorch and the dataset included, held about 1.1 GB
# resident, so a run's own share is well under this.
JOB_MEMORY_BYTES = 1 << 30
# A training thread's nice value: a page's script run, at 0, gets about nine tenths of a
# core they both want (Linux's weights for nice 0 and 10 are 1024 and 110).
TRAINING_NICE = 10


class JobLimitError(RuntimeError):
    """The queue is full; the message says so in words a user can act on."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return max(minimum, int(value))
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", name, value)
        return default


def available_cores() -> int:
    """The host's cores, or a container's CPU quota where that is lower."""
    cores = os.cpu_count() or 1
    quota = cpu_quota()
    return min(cores, quota) if quota else cores


def available_memory() -> int | None:
    """Bytes of memory free for new work now (Linux: MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_slots(cores: int | None = None, memory: int | None = None) -> int:
    """Runs this machine trains at once: a core each, one core left to the web server, and no
    more than the free memory holds; at least one."""
    cores = available_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    slots = cores - 1
    if memory is not None:
        slots = min(slots, memory // JOB_MEMORY_BYTES)
    return max(1, slots)


def default_torch_threads(max_jobs: int) -> int:
    """Threads per training job: every core but one, shared among the concurrent jobs."""
    explicit = os.environ.get("CIFAR_TORCH_THREADS", "").strip()
    if explicit:
        return _env_int("CIFAR_TORCH_THREADS", 1)
    return max(1, (available_cores() - 1) // max(1, max_jobs))


def use_page_threads(busy: int | None = None) -> int:
    """Set the calling thread's (a page's script run's) torch threads to the cores that
    training leaves free, at least one, whatever count a job set process-wide; returns it.

    ``busy`` is the cores training uses (default: this process's running jobs). While a job
    trains, an OpenMP team larger than the free cores waits on its slowest thread; once no
    job runs, pages get every core back instead of the single thread a finished job left.
    """
    if busy is None:  # no registry yet: no jobs (and no cluster to connect to just for a count)
        busy = _registry.busy_threads() if _registry is not None else 0
    threads = max(1, available_cores() - busy)
    torch.set_num_threads(threads)
    return torch.get_num_threads()  # fixes this thread's count now (see the module docstring)


@dataclass(frozen=True)
class JobSnapshot:
    """One consistent, immutable view of a job; pages only ever read these."""

    id: str
    status: JobStatus
    phase: Phase
    preset: str | None
    subset: int | None
    epochs: int  # planned; early stopping may end the run sooner
    epoch: int  # the epoch in progress (or last finished), 1-based; 0 before the first batch
    batch: int
    batches: int
    loss: float | None  # of the latest batch
    images_per_second: float | None
    eta_epoch: float | None  # seconds left in this epoch's training batches
    eta_run: float | None  # seconds left if the run goes all planned epochs
    history: tuple[EpochRecord, ...]
    best_epoch: int
    epochs_without_improvement: int
    patience: int | None  # None when early stopping is off
    monitor: str
    error: str | None
    run_dir: Path | None
    submitted: float  # time.time()
    started: float | None
    ended: float | None
    stop_requested: bool
    metrics: RunMetrics | None = None  # metrics.json once done
    queue_position: int | None = None  # 1 = next to start; None unless queued
    starts_in: float | None = None  # seconds until a queued job should start; None if unknown
    owner: str | None = None
    train_images: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress(self) -> float:
        """Fraction of the planned batches done, in [0, 1]."""
        if self.status == "finished":
            return 1.0
        if not self.epochs or not self.batches or not self.epoch:
            return 0.0
        done = (self.epoch - 1) + self.batch / self.batches
        return min(1.0, max(0.0, done / self.epochs))


def yield_to_pages() -> None:
    """Give the calling thread a nice value TRAINING_NICE above the server's main thread, so
    that when it and a page's script run want the same core, the page goes first. Linux
    gives each thread its own nice value (a thread's id names it; the main thread's is the
    process id); elsewhere this does nothing."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            server = os.getpriority(os.PRIO_PROCESS, os.getpid())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, server + TRAINING_NICE))


class Job:
    """One training run in its own daemon thread. Created and started by the registry."""

    def __init__(self, job_id: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 data: CifarData, preset: str | None, subset_size: int | None,
                 runs_root: Path, torch_threads: int, resume: Run | None = None,
                 owner: str | None = None, visitor: str | None = None,
                 cluster: Cluster | None = None) -> None:
        self.id = job_id
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.data: CifarData | None = data
        self.preset, self.subset = preset, subset_size
        self.owner = resume.owner if resume else owner
        self.visitor = visitor
        self.cluster = cluster
        self.train_images = min(subset_size, len(data.y_train)) if subset_size else len(data.y_train)
        self.runs_root = runs_root
        self.torch_threads = torch_threads
        self.resume_dir = resume.path if resume else None  # the run folder this job goes on with
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Everything below is guarded by _lock and read only through snapshot().
        self._status: JobStatus = "queued"
        self._phase: Phase = "waiting"
        self._epoch = self._batch = self._batches = 0
        self._loss: float | None = None
        self._ips: float | None = None
        self._eta_epoch: float | None = None
        self._eta_run: float | None = None
        self._history: list[EpochRecord] = list(resume.history) if resume else []
        self._best_epoch = resume.metrics.best_epoch if resume else 0
        self._since_best = 0
        self._error: str | None = None
        self._run_dir: Path | None = self.resume_dir
        self._metrics: RunMetrics | None = None
        self._submitted = time.time()
        self._started: float | None = None
        self._ended: float | None = None
        self._epoch_mark = 0.0  # perf_counter when the previous epoch ended

    # --- read side ------------------------------------------------------------

    def snapshot(self) -> JobSnapshot:
        cfg = self.train_cfg
        with self._lock:
            return JobSnapshot(
                id=self.id, status=self._status, phase=self._phase, preset=self.preset,
                subset=self.subset, epochs=cfg.epochs, epoch=self._epoch, batch=self._batch,
                batches=self._batches, loss=self._loss, images_per_second=self._ips,
                eta_epoch=self._eta_epoch, eta_run=self._eta_run, history=tuple(self._history),
                best_epoch=self._best_epoch, epochs_without_improvement=self._since_best,
                patience=cfg.patience if cfg.early_stopping else None, monitor=cfg.monitor,
                error=self._error, run_dir=self._run_dir, submitted=self._submitted,
                started=self._started, ended=self._ended,
                stop_requested=self.stop_event.is_set(), metrics=self._metrics, owner=self.owner,
                train_images=self.train_images)

    @property
    def status(self) -> JobStatus:
        with self._lock:
            return self._status

    # --- lifecycle (called by the registry under its lock) ----------------------

    def launch(self, run_dir: Path, on_done: Callable[[Job], None]) -> None:
        with self._lock:
            self._status, self._phase = "running", "preparing"
            self._run_dir, self._started = run_dir, time.time()
        self.thread = threading.Thread(target=self._run, args=(on_done,), name=f"train-{self.id}",
                                       daemon=True)
        self.thread.start()

    def cancel(self, reason: str | None = None) -> None:
        """End a job that never started: stopped by request, or failed with ``reason``."""
        with self._lock:
            self._status = "failed" if reason else "stopped"
            self._phase, self._error, self._ended = "done", reason, time.time()

    # --- the thread -----------------------------------------------------------

    def _run(self, on_done: Callable[[Job], None]) -> None:
        status: JobStatus = "failed"
        metrics: RunMetrics | None = None
        error: str | None = None
        try:
            if self.resume_dir:
                self._epoch_mark = time.perf_counter()  # the first epoch here is not epoch 1
            metrics = self._train_remotely() if self.cluster else self._train_here()
            status = "stopped" if metrics.status == "stopped" else "finished"
        except (RunError, DataError, ValueError) as err:  # bad settings, unwritable folder: say what
            error = str(err)
        except Exception as err:  # keep the server alive; the page shows the message
            log.exception("training job %s failed", self.id)
            error = f"{type(err).__name__}: {err}"
        finally:
            if error and not self.resume_dir:
                # The folder reserved for a run that failed before writing anything (a device
                # this machine lacks, say) would stay behind as an empty, nameless entry.
                with contextlib.suppress(OSError):
                    self._run_dir.rmdir()  # only ever removes an empty folder
            with self._lock:
                self._status, self._phase, self._metrics = status, "done", metrics
                self._error, self._ended = error, time.time()
                self._eta_epoch = self._eta_run = None
            # Finished jobs are kept for their snapshots; they must not pin a dataset
            # the app has since reloaded (about 180 MB each).
            self.data = None
            on_done(self)

    def _train_here(self) -> RunMetrics:
        # Process-wide in effect (see the module docstring); same value for every job.
        torch.set_num_threads(self.torch_threads)
        torch.get_num_threads()  # fixes this thread's count before any page changes it
        yield_to_pages()
        data = subset(self.data, self.subset, seed=self.train_cfg.seed) if self.subset else self.data
        if self.resume_dir:
            return resume_run(self.resume_dir, data, on_event=self._on_event, stop=self.stop_event)
        return train_run(self.model_cfg, self.train_cfg, data, self._run_dir, on_event=self._on_event,
                         stop=self.stop_event, preset=self.preset, subset=self.subset, owner=self.owner)

    def _train_remotely(self) -> RunMetrics:
        return self.cluster.train(
            self._run_dir, self.data, self.model_cfg, self.train_cfg, preset=self.preset,
            subset=self.subset, owner=self.owner, resume=self.resume_dir is not None,
            on_event=self._on_event, stop=self.stop_event)

    def _on_event(self, event: Event) -> None:
        now = time.perf_counter()
        with self._lock:
            if isinstance(event, BatchEvent):
                self._on_batch(event, now)
            elif isinstance(event, EpochEvent):
                self._on_epoch(event, now)

    def _on_batch(self, event: BatchEvent, now: float) -> None:
        self._epoch, self._batch, self._batches = event.epoch, event.batch, event.batches
        self._loss, self._ips = event.loss, event.images_per_second
        self._phase = "validating" if event.batch == event.batches else "training"
        # Epoch 1 counts from the core's own start mark, leaving out model building.
        epoch_elapsed = event.elapsed if event.epoch == 1 and not self.resume_dir else now - self._epoch_mark
        per_batch = epoch_elapsed / event.batch
        self._eta_epoch = per_batch * (event.batches - event.batch)
        # Finished epochs' wall time includes validation, so it is the better estimate.
        per_epoch = (sum(r.seconds for r in self._history) / len(self._history)
                     if self._history else per_batch * event.batches)
        self._eta_run = self._eta_epoch + per_epoch * (self.train_cfg.epochs - event.epoch)

    def _on_epoch(self, event: EpochEvent, now: float) -> None:
        # A resumed run goes on from its checkpoint, which may be behind the history it had.
        self._history = [r for r in self._history if r.epoch < event.record.epoch] + [event.record]
        self._best_epoch, self._since_best = event.best_epoch, event.epochs_without_improvement
        self._epoch_mark = now
        self._phase = "testing" if event.last else "training"
        self._eta_epoch = 0.0 if event.last else None
        if event.last:
            self._eta_run = None


class JobRegistry:
    """All jobs of this process: submit, list, stop; at most ``max_jobs`` train at once."""

    def __init__(self, max_jobs: int | None = None, max_queued: int | None = None,
                 torch_threads: int | None = None, keep_finished: int | None = None,
                 cluster: Cluster | None = None) -> None:
        # Defaults come from the deployment profile (cifar_core.deployment); the
        # environment variables override them.
        profile = current_profile()
        self.cluster = cluster
        slots = cluster.slots() if cluster else profile.max_jobs or machine_slots()
        self.max_jobs = max_jobs if max_jobs is not None else _env_int("CIFAR_MAX_JOBS", slots)
        self.max_queued = (max_queued if max_queued is not None
                           else _env_int("CIFAR_MAX_QUEUED", profile.max_queued, minimum=0))
        self.torch_threads = torch_threads or default_torch_threads(self.max_jobs)
        self.keep_finished = keep_finished if keep_finished is not None else profile.keep_finished
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._queue: deque[Job] = deque()
        self._running: set[str] = set()
        self._ids = itertools.count(1)

    def submit(self, model_cfg: ModelConfig, train_cfg: TrainConfig, data: CifarData, *,
               preset: str | None = None, subset_size: int | None = None,
               runs_root: str | os.PathLike | None = None, owner: str | None = None,
               visitor: str | None = None) -> str:
        """Queue a run and start it as soon as a slot is free; returns the job id.

        ``owner`` is the trainer's name (ConfigError when it is not a valid one); ``visitor``
        identifies who submits, who may have one run waiting at a time (JobLimitError).
        """
        root = Path(runs_root) if runs_root else default_runs_root()
        owner = check_owner(owner)
        with self._lock:
            job = self._enqueue_locked(model_cfg, train_cfg, data, preset, subset_size or None, root,
                                       owner=owner, visitor=visitor)
        return job.id

    def resume(self, run: Run, data: CifarData, visitor: str | None = None) -> str:
        """Queue a job that goes on with ``run`` in its own folder; returns the job id.

        ``RunError`` when the run cannot be resumed or a job here is already on it, or when
        it read its training images another way than ``data`` holds them.
        """
        blocker = run.resume_blocker()
        if blocker:
            raise RunError(blocker)
        if run.config.channel_order != "correct":
            raise RunError(f"{run.name} was trained on images read as {run.config.channel_order}; "
                           "resume it from the command line")
        with self._lock:
            active = [job for job in self._jobs.values() if job.status in ACTIVE_STATUSES]
            if any(job.resume_dir == run.path for job in active):
                raise RunError(f"{run.name} is already being resumed")
            job = self._enqueue_locked(run.model_config, run.train_config, data, run.preset, run.subset,
                                       run.path.parent, run, visitor=visitor)
        return job.id

    def stop(self, job_id: str) -> bool:
        """Ask a job to stop (within one batch); a queued job is dropped. False if unknown or done."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job in self._queue:
                self._queue.remove(job)
                job.cancel()
                return True
            if job.status != "running":
                return False
            job.stop_event.set()
            return True

    def snapshot(self, job_id: str) -> JobSnapshot | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return self._snapshot_locked(job, self._starts_locked() if job in self._queue else None)

    def snapshots(self) -> list[JobSnapshot]:
        """Every known job, newest first."""
        with self._lock:
            starts = self._starts_locked()
            return [self._snapshot_locked(job, starts) for job in reversed(self._jobs.values())]

    def busy_threads(self) -> int:
        """Torch threads the running jobs use in this process (none while they train on a cluster)."""
        with self._lock:
            return sum(self._jobs[i].torch_threads for i in self._running if not self._jobs[i].cluster)

    def active(self) -> list[JobSnapshot]:
        """Running jobs, then queued ones in the order they will start."""
        with self._lock:
            starts = self._starts_locked()
            running = [self._snapshot_locked(self._jobs[i]) for i in self._running]
            queued = [self._snapshot_locked(job, starts) for job in self._queue]
        return sorted(running, key=lambda s: s.submitted) + queued

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until the job is done (or ``timeout`` passes); its latest snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.thread is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                job.thread.join(left)
            snap = self.snapshot(job_id)
            if snap is None or not snap.active:
                return snap
            if deadline is not None and time.monotonic() >= deadline:
                return snap
            time.sleep(0.02)  # still queued: poll until it starts

    # --- internals (callers hold self._lock) ------------------------------------

    def _enqueue_locked(self, model_cfg: ModelConfig, train_cfg: TrainConfig, data: CifarData,
                        preset: str | None, subset_size: int | None, root: Path,
                        resume: Run | None = None, owner: str | None = None,
                        visitor: str | None = None) -> Job:
        if visitor is not None and any(job.visitor == visitor for job in self._queue):
            raise JobLimitError("You already have a run waiting in the queue: it starts by itself. "
                                "Cancel it first to queue a different one.")
        if len(self._queue) >= self.max_queued and len(self._running) >= self.max_jobs:
            raise JobLimitError(
                f"{len(self._running)} run(s) training and {len(self._queue)} waiting: the queue "
                "is full. Try again when one has finished, or stop one you started.")
        job_id = f"{time.strftime('%H%M%S')}-{next(self._ids)}"
        job = Job(job_id, model_cfg, train_cfg, data, preset, subset_size, root, self.torch_threads,
                  resume, owner=owner, visitor=visitor, cluster=self.cluster)
        self._jobs[job_id] = job
        self._queue.append(job)
        self._dispatch_locked()
        self._forget_old_locked()
        return job

    def _snapshot_locked(self, job: Job, starts: dict[str, float | None] | None = None) -> JobSnapshot:
        snap = job.snapshot()
        if snap.status == "queued" and job in self._queue:
            return replace(snap, queue_position=self._queue.index(job) + 1,
                           starts_in=(starts or {}).get(job.id))
        return snap

    def _starts_locked(self) -> dict[str, float | None]:
        """Seconds until each queued job should start (``expected_starts``)."""
        rate = self._seconds_per_image_epoch_locked()
        left = []
        for job_id in self._running:
            snap = self._jobs[job_id].snapshot()
            left.append(snap.eta_run if snap.eta_run is not None else _time_left(snap, rate))
        lengths = [rate * job.train_images * job.train_cfg.epochs if rate else None for job in self._queue]
        starts = expected_starts(left, lengths, self.max_jobs)
        return {job.id: start for job, start in zip(self._queue, starts, strict=True)}

    def _seconds_per_image_epoch_locked(self) -> float | None:
        """Measured here: the newest job's mean epoch time (validation included) per training image."""
        for job in reversed(self._jobs.values()):
            history = job.snapshot().history
            if history and job.train_images:
                return sum(r.seconds for r in history) / len(history) / job.train_images
        return None

    def _dispatch_locked(self) -> None:
        while self._queue and len(self._running) < self.max_jobs:
            job = self._queue.popleft()
            try:
                run_dir = job.resume_dir or self._reserve_dir_locked(job)
            except (RunError, OSError) as err:
                job.cancel(f"cannot create a run folder: {err}")
                continue
            self._running.add(job.id)
            job.launch(run_dir, self._job_done)

    def _reserve_dir_locked(self, job: Job) -> Path:
        # new_run_dir only picks a free name; creating it here, under the lock, keeps two
        # jobs started in the same second from sharing a folder.
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.preset or "run").strip("-.") or "run"
        run_dir = new_run_dir(job.runs_root, label=label)
        run_dir.mkdir(parents=True, exist_ok=False)
        return run_dir

    def _job_done(self, job: Job) -> None:
        with self._lock:
            self._running.discard(job.id)
            self._dispatch_locked()

    def _forget_old_locked(self) -> None:
        done = [j for j in self._jobs.values() if j.id not in self._running and j not in self._queue]
        for job in done[:max(0, len(done) - self.keep_finished)]:
            del self._jobs[job.id]


def expected_starts(running_left: list[float | None], queued_lengths: list[float | None],
                    slots: int) -> list[float | None]:
    """When each queued job should start, in seconds from now, first come first served: a
    slot frees as a running job ends (``running_left``: its time left) and each queued job
    ahead holds one for its length. A slot whose end is unknown is left out (the estimate is
    then the latest start), and None once no slot's end is known."""
    free_at = list(running_left) + [0.0] * max(0, slots - len(running_left))
    known = sorted(t for t in free_at if t is not None)
    starts: list[float | None] = []
    for length in queued_lengths:
        if not known:
            starts.append(None)
            continue
        start = heapq.heappop(known)
        starts.append(start)
        if length is not None:
            heapq.heappush(known, start + length)
    return starts


def _time_left(snap: JobSnapshot, rate: float | None) -> float | None:
    """A running job's time left when it has no estimate of its own (preparing, testing)."""
    if rate is None or snap.started is None:
        return None
    return max(0.0, rate * snap.train_images * snap.epochs * (1 - snap.progress))


_registry: JobRegistry | None = None
_registry_lock = threading.Lock()


class ClusterError(RuntimeError):
    """``CIFAR_RAY_ADDRESS`` names a cluster this process cannot use; the message says what to do."""


# A cluster that could not be reached is tried again after this long, not on every page view.
CLUSTER_RETRY_SECONDS = 60.0
_cluster_failure: tuple[float, ClusterError] | None = None


def get_registry() -> JobRegistry:
    """The process-wide registry, created on first use (limits read from the environment then).
    ClusterError while the cluster that ``CIFAR_RAY_ADDRESS`` names cannot be reached."""
    global _registry, _cluster_failure
    with _registry_lock:
        if _registry is None:
            if _cluster_failure and time.monotonic() - _cluster_failure[0] < CLUSTER_RETRY_SECONDS:
                raise _cluster_failure[1]
            try:
                _registry = JobRegistry(cluster=connect_cluster())
            except ClusterError as err:
                _cluster_failure = (time.monotonic(), err)
                raise
        return _registry


def connect_cluster() -> Cluster | None:
    """The Ray cluster ``CIFAR_RAY_ADDRESS`` names, connected; None (and Ray never imported)
    when it is not set; ClusterError when Ray is missing or the cluster does not answer."""
    address = os.environ.get("CIFAR_RAY_ADDRESS", "").strip()
    if not address:
        return None
    advice = "start it (`ray start --head`) or unset CIFAR_RAY_ADDRESS to train on this machine"
    try:
        from .cluster import RayCluster  # only here: ray is an optional dependency
    except ImportError:
        raise ClusterError(f"CIFAR_RAY_ADDRESS is {address!r} but Ray is not installed: "
                           "pip install -r requirements-ray.txt, or unset CIFAR_RAY_ADDRESS") from None
    try:
        return RayCluster.connect(address)
    except Exception as err:  # ray.init raises ConnectionError, RuntimeError or ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"cannot use the Ray cluster at {address!r}: {reason}; {advice}") from None
