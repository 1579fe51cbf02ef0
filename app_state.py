"""What the pages share, and what is Streamlit-specific: caches across sessions, this session's state.

The dataset lives in ``st.cache_resource``, so every session and rerun reuses the same
uint8 arrays (about 180 MB); so do loaded models and evaluations. The configuration lives
in ``st.session_state``, so each visitor has their own and it survives moving between pages.
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from cifar_core.bundled import bundled_runs
from cifar_core.config import ModelConfig, TrainConfig, get_preset
from cifar_core.data import (
    ARCHIVE_MD5,
    ARCHIVE_URL,
    BackgroundDownload,
    CifarData,
    DataError,
    DownloadStatus,
    candidate_dirs,
    load_cifar10,
    locate,
)
from cifar_core.deployment import current_profile
from cifar_core.evaluation import Evaluation, evaluate
from cifar_core.jobs import ClusterError, get_registry, use_page_threads
from cifar_core.model import CifarCNN
from cifar_core.runs import Run, default_run, list_runs, load_run
from cifar_core.shared import SharedCache

ProgressFn = Callable[[int, int], None]

# Every torch call releases Python's interpreter lock and must get it back afterwards; while
# other threads run Python (other visitors' scripts, the web server, the training loop) that
# takes up to the switch interval, 5 ms by default, per call. With three threads busy in
# Python a photo's prediction took 1.3 s at 5 ms and 0.23 s at 1 ms, and at thirty visitors
# every page's server p95 came under 2 s; training went 4-20% slower meanwhile
# (benchmarks/contention.py, benchmarks/RESULTS.md).
sys.setswitchinterval(0.001)

DEFAULT_PRESET = "baseline"
TRAIN_JOB_KEY = "train.job_id"  # this session's job on the Train page
VISITOR_KEY = "app.visitor"  # who this browser session is to the job queue (one run waiting each)


@st.cache_resource(show_spinner="Loading CIFAR-10 (once for everyone)...")
def _load(data_dir: str | None) -> CifarData:
    return load_cifar10(data_dir, download=False)


def data_dir() -> str | None:
    return os.environ.get("CIFAR10_DIR")


def install_folder() -> Path:
    """The folder the app reads from, where a downloaded or uploaded archive is installed."""
    path = candidate_dirs(data_dir())[0]
    return path.parent if path.is_file() else path


def get_data(what: str = "This part of the page") -> CifarData | None:
    """The dataset, or None when it is not there yet, with a note drawn on the page: the
    download's progress while it runs (the page reloads itself when it is done), or what
    ``what`` needs and where to get it."""
    data, err = load_data()
    if data is None:
        draw_data_missing(what, err)
    return data


def load_data() -> tuple[CifarData | None, DataError | None]:
    """(dataset, None), or (None, the reason it could not be read); draws nothing. Starts the
    download in the background when there is nothing to read yet (see ``downloader``)."""
    try:
        return _load(data_dir()), None
    except DataError as err:
        if locate(data_dir()) is None:
            start_download()
        return None, err


def reload_data() -> None:
    """Forget the cached dataset, after a download or upload put a new one in place."""
    _load.clear()


# --- how long each script run takes on the server ------------------------------------------

TIMING_LOG_ENV = "CIFAR_TIMING_LOG"  # a path: one JSON line per script or fragment run is appended
TIMING_PROFILE_ENV = "CIFAR_TIMING_PROFILE"  # a folder: a cProfile of every script run lands there
timing_log = logging.getLogger("cifar_lab.timing")
_timing_lock = threading.Lock()
_profile_numbers = itertools.count(1)
# How a timed run (a page or a fragment) ended, by the name of what it raised; "ok" when it returned.
_OUTCOMES = {"RerunException": "rerun", "StopException": "stopped"}


# Set while run_page runs a page: a fragment drawn inside that run is part of its timing.
_in_page_run = threading.local()


def run_page(page: st.Page) -> None:
    """Run the navigation's page (``st.navigation(...)``'s result) and time it on the server.

    Every script run is logged to ``cifar_lab.timing`` (page, session, wall and CPU
    seconds, how it ended) and, with ``CIFAR_TIMING_LOG`` set, appended to that file as a
    JSON line for benchmarks/load.py (with torch's thread count in this script thread).
    A fragment's reruns on their own are timed by ``fragment``.
    """
    # Each script run is a new thread: give it the cores training leaves free, not the one
    # thread a training job set process-wide.
    use_page_threads()
    _in_page_run.active = True
    try:
        with _timed(page.title):
            page.run()
    except ClusterError as err:  # a page that trains or lists jobs, with the cluster down
        st.error(f"Training is unavailable on this server: {err}.", icon=":material/cloud_off:")
    finally:
        _in_page_run.active = False


def fragment(label: str, run_every: float | None = None) -> Callable[[Callable], Callable]:
    """``st.fragment``, its reruns on their own (a live view's refresh, a click inside it)
    timed like a page's script run under ``label`` (``timed_fragment``)."""
    return lambda draw: st.fragment(timed_fragment(label, draw), run_every=run_every)


def timed_fragment(label: str, draw: Callable) -> Callable:
    """``draw``, timed under ``label`` and marked ``"fragment": true`` when it runs on its own;
    within a page's script run it is part of that run's time."""
    @functools.wraps(draw)
    def timed(*args: object, **kwargs: object) -> object:
        if getattr(_in_page_run, "active", False):
            return draw(*args, **kwargs)
        with _timed(label, fragment=True):
            return draw(*args, **kwargs)

    return timed


@contextlib.contextmanager
def _timed(label: str, fragment: bool = False) -> Iterator[None]:
    ctx = get_script_run_ctx()
    profile_dir = os.environ.get(TIMING_PROFILE_ENV)
    profiler = cProfile.Profile() if profile_dir else None  # this thread only (Python 3.11)
    started, wall, cpu = time.time(), time.perf_counter(), time.thread_time()
    outcome = "error"
    try:
        if profiler is not None:
            profiler.enable()
        yield
        outcome = "ok"
    except BaseException as err:
        outcome = _OUTCOMES.get(type(err).__name__, "error")
        raise
    finally:
        if profiler is not None:
            profiler.disable()
        record = {"t": round(started, 3), "page": label,
                  "session": ctx.session_id if ctx else None,
                  "seconds": round(time.perf_counter() - wall, 4),
                  "cpu": round(time.thread_time() - cpu, 4), "outcome": outcome,
                  "threads": torch.get_num_threads()}
        if fragment:
            record["fragment"] = True
        if ctx is not None and ctx.query_string:
            record["query"] = ctx.query_string
        _record_timing(record, profiler, profile_dir)


def _record_timing(record: dict, profiler: cProfile.Profile | None, profile_dir: str | None) -> None:
    timing_log.info("%s %s session %s: %.3f s (%.3f s CPU, %s)",
                    "fragment" if record.get("fragment") else "page", record["page"], record["session"],
                    record["seconds"], record["cpu"], record["outcome"])
    path = os.environ.get(TIMING_LOG_ENV)
    try:
        if profiler is not None and profile_dir:
            name = f"{record['page']}-{record['session']}-{next(_profile_numbers)}.prof"
            profiler.dump_stats(os.path.join(profile_dir, name.replace("/", "_")))
            record["profile"] = name
        if path:
            with _timing_lock, open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
    except OSError as err:  # a measurement must never break the page
        timing_log.warning("cannot write timing to %s: %s", path or profile_dir, err)


# --- the download in the background, one for every session ---------------------------

def auto_download() -> bool:
    """Whether the app fetches the dataset by itself when it finds none (CIFAR_AUTO_DOWNLOAD=0: no)."""
    return os.environ.get("CIFAR_AUTO_DOWNLOAD", "1").strip().lower() not in ("0", "false", "no", "off")


@st.cache_resource
def _downloader(folder: str, url: str, md5: str) -> BackgroundDownload:
    return BackgroundDownload(Path(folder), url, md5)


def downloader() -> BackgroundDownload:
    """The process's one download of the archive into the data folder. CIFAR10_URL and
    CIFAR10_MD5 name a mirror (or a local file:// copy) and its checksum."""
    return _downloader(str(install_folder()), os.environ.get("CIFAR10_URL") or ARCHIVE_URL,
                       os.environ.get("CIFAR10_MD5") or ARCHIVE_MD5)


def start_download(explicit: bool = False) -> DownloadStatus:
    """Start the background download (by itself only once: a failed one waits for a click)."""
    fetch = downloader()
    status = fetch.status()
    if explicit or (status.state == "idle" and auto_download()):
        fetch.start()
    return fetch.status()


def draw_data_missing(what: str, err: DataError | None = None) -> None:
    """In place of a part that needs the images: the download's progress, or how to get them."""
    status = downloader().status()
    if status.active or status.state == "done":
        draw_download_progress()
        return
    reason = f" The download failed: {status.error}" if status.state == "failed" else ""
    st.info(f"{what} needs the CIFAR-10 images, which are not on this server yet.{reason} "
            "Open the **Dataset** page to download or upload them.", icon=":material/cloud_off:")


@fragment("Download progress", run_every=1.0)
def draw_download_progress() -> None:
    """The shared download's progress bar, refreshed every second; when the data is in
    place, the whole page runs again with it."""
    status = downloader().status()
    if status.state in ("done", "failed"):
        reload_data()
        st.rerun(scope="app")  # with the data, or with the reason it failed
    if status.state == "checking":
        st.progress(1.0, text="Downloaded; checking every batch of CIFAR-10...")
    elif status.active:
        size = f" of {status.total / 2**20:.0f} MB" if status.total else ""
        st.progress(status.share, text=f"Downloading CIFAR-10 for everyone on this server: "
                                       f"{status.done / 2**20:.0f}{size}")
    elif status.state == "failed":
        st.error(f"The download failed: {status.error}")


# --- parts drawn only when open ---------------------------------------------------------------

def tabs_drawn_when_open(key: str, tabs: dict[str, Callable[[], None]]) -> None:
    """Tabs named by ``tabs``'s keys, of which only the open one is drawn (its function
    called): the others cost the server and the visitor's browser nothing until opened.
    Setting ``st.session_state[key]`` to a name opens that tab."""
    for tab, draw in zip(st.tabs(list(tabs), key=key, on_change="rerun"), tabs.values(), strict=True):
        if tab.open:
            with tab:
                draw()


def panel_drawn_when_open(label: str, key: str, icon: str, draw: Callable[[], None]) -> None:
    """A collapsed expander whose content is drawn only while a visitor has it open."""
    panel = st.expander(label, icon=icon, key=key, on_change="rerun")
    if panel.open:
        with panel:
            draw()


def get_config() -> tuple[str, ModelConfig, TrainConfig]:
    """This session's (preset name, model config, train config); the baseline at first."""
    if "config" not in st.session_state:
        preset = get_preset(DEFAULT_PRESET)
        st.session_state.config = (preset.name, preset.model, preset.train)
    return st.session_state.config


def set_config(preset: str, model: ModelConfig, train: TrainConfig) -> None:
    st.session_state.config = (preset, model, train)


def all_runs() -> list[Run]:
    """Every readable run in the runs folder (newest first), then the bundled models."""
    return list_runs() + bundled_runs()


def trained_runs() -> list[Run]:
    """Runs that have weights (newest first), then the bundled pretrained models."""
    return [run for run in list_runs() if run.has_weights] + bundled_runs()


# Fewer on a small cloud host (cifar_core.deployment): each model holds its weights and buffers.
@st.cache_resource(max_entries=current_profile().model_cache, show_spinner="Loading the model...")
def _load_model(path: str, weights_mtime: float) -> CifarCNN:
    return load_run(path).load_model("cpu")


def load_model(run: Run) -> CifarCNN:
    """The run's network on the CPU, cached; reloaded when a still-running job saves new weights."""
    return _load_model(str(run.path), run.weights_mtime())


# --- evaluations, shared by every session -------------------------------------------

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
CACHED_EVALUATIONS = 8


@st.cache_resource
def _evaluations() -> SharedCache[Evaluation]:
    # An evaluation of the test set takes seconds to a minute on a CPU and is the same for
    # everyone: computed once, with every visitor who asks meanwhile waiting on that one.
    return SharedCache(CACHED_EVALUATIONS, worker_setup=use_page_threads)


def stored_evaluation(run: Run) -> Evaluation | None:
    """The test predictions shipped with a run (the bundled models), read once per process."""
    key = ("stored", str(run.path), run.weights_mtime())
    store = _evaluations()
    found = store.get(key)
    if found is None and (found := run.stored_test_predictions()) is not None:
        store.put(key, found)
    return found


def stored_on_disk(run: Run, stored: Evaluation, data: CifarData) -> Evaluation | None:
    """The stored test predictions rearranged to the test images on disk, matched by content
    (the same images in another order or file layout still match); None when the disk holds
    other images. Files without digests match only when the labels agree position by position."""
    if stored.image_digests is None:
        return stored if np.array_equal(stored.labels, data.y_test) else None
    key = ("stored on disk", str(run.path), run.weights_mtime(), str(data.source))
    store = _evaluations()
    if (found := store.get(key)) is None and \
            (found := stored.in_order_of(data.test_digests, data.y_test)) is not None:
        store.put(key, found)
    return found


def evaluation(run: Run, split: str, data: CifarData | None) -> Evaluation | None:
    """The run's predictions on a split: the stored ones where they fit (with or without the
    data), else computed once per run, split and weights for all sessions, with a progress
    bar while that runs. None without data and without stored predictions."""
    stored = stored_evaluation(run) if split == "test" else None
    if stored is not None and (data is None or (stored := stored_on_disk(run, stored, data)) is not None):
        return stored
    if data is None:
        return None
    images, labels = data.split(split)
    key = (str(run.path), split, run.weights_mtime(), str(data.source), len(labels))
    store = _evaluations()
    if (found := store.get(key)) is not None:
        return found
    what = f"{SPLIT_NAMES[split]} images"
    bar = st.progress(0.0, text=f"Classifying {len(labels):,} {what} (once for everyone)...")

    def progress(done: int, total: int) -> None:
        if total:
            bar.progress(done / total, text=f"Classifying {what}: {done:,} / {total:,}")

    def compute(report: ProgressFn) -> Evaluation:
        cfg = run.train_config
        return evaluate(load_model(run), images, labels, data.classes, precision=cfg.precision,
                        tta=cfg.tta, progress=report)

    result = store.get_or_compute(key, compute, on_progress=progress)
    bar.empty()
    return result


def images_for(result: Evaluation, split: str, data: CifarData | None) -> np.ndarray | None:
    """The split's images behind ``result``, when the data on disk is the one it was made on."""
    if data is None:
        return None
    images, labels = data.split(split)
    return images if np.array_equal(labels, result.labels) else None


# --- which run a page opens on ----------------------------------------------------------

def preselect_run(page: str, runs: list[Run]) -> None:
    """Put the default run in the ``<page>.run`` selector: the run this session's job has
    just finished (once, whatever was chosen before), else keep the visitor's own choice,
    else the most accurate finished run (cifar_core.runs.default_run)."""
    key, seen = f"{page}.run", f"{page}.last_trained"
    by_path = {str(run.path): run for run in runs}
    job_dir = last_trained_dir()
    if job_dir in by_path and job_dir != st.session_state.get(seen):
        st.session_state[key] = job_dir
        st.session_state[seen] = job_dir
    elif st.session_state.get(key) not in by_path:
        chosen = default_run(runs)
        if chosen is not None:
            st.session_state[key] = str(chosen.path)


def resume_job(run: Run, data: CifarData) -> str:
    """Go on with a stopped or interrupted run in a background job, which becomes this
    session's job on the Train page; ``RunError`` or ``JobLimitError`` say why not."""
    job_id = get_registry().resume(run, data, visitor=visitor_id())
    st.session_state[TRAIN_JOB_KEY] = job_id
    return job_id


def visitor_id() -> str:
    """This browser session's identity in the job queue; no login, so nothing more than that."""
    return st.session_state.setdefault(VISITOR_KEY, uuid.uuid4().hex)


def last_trained_dir() -> str | None:
    """The run folder of this session's last job on the Train page, once that job has ended."""
    job_id = st.session_state.get(TRAIN_JOB_KEY)
    snap = get_registry().snapshot(job_id) if job_id else None
    return str(snap.run_dir) if snap is not None and snap.run_dir and not snap.active else None
