"""What the pages share: the dataset (loaded once per process) and this session's configuration.

The dataset lives in ``st.cache_resource``, so every session and rerun reuses the same
uint8 arrays (about 180 MB); the configuration lives in ``st.session_state``, so each
visitor has their own and it survives moving between pages.
"""

from __future__ import annotations

import cProfile
import itertools
import json
import logging
import os
import threading
import time

import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from cifar_core.bundled import MODELS_DIR, bundled_runs
from cifar_core.data import CifarData, DataError, load_cifar10
from cifar_core.deployment import current_profile
from cifar_core.model import CifarCNN, ModelConfig
from cifar_core.presets import get_preset
from cifar_core.runs import WEIGHTS_FILE, Run, list_runs, load_run
from cifar_core.training import TrainConfig

DEFAULT_PRESET = "baseline"


@st.cache_resource(show_spinner="Loading CIFAR-10 (once for everyone)...")
def _load(data_dir: str | None) -> CifarData:
    return load_cifar10(data_dir, download=False)


def data_dir() -> str | None:
    return os.environ.get("CIFAR10_DIR")


def get_data() -> CifarData | None:
    """The dataset, or None (with an explanation drawn on the page) when it is not there yet."""
    try:
        return _load(data_dir())
    except DataError as err:
        st.warning(f"{err}. Open the **Dataset** page to download or upload it.")
        return None


def load_data() -> tuple[CifarData | None, DataError | None]:
    """(dataset, None), or (None, the reason it could not be read); draws nothing."""
    try:
        return _load(data_dir()), None
    except DataError as err:
        return None, err


def reload_data() -> None:
    """Forget the cached dataset, after a download or upload put a new one in place."""
    _load.clear()


def get_config() -> tuple[str, ModelConfig, TrainConfig]:
    """This session's (preset name, model config, train config); the baseline at first."""
    if "config" not in st.session_state:
        preset = get_preset(DEFAULT_PRESET)
        st.session_state.config = (preset.name, preset.model, preset.train)
    return st.session_state.config


def set_config(preset: str, model: ModelConfig, train: TrainConfig) -> None:
    st.session_state.config = (preset, model, train)


def trained_runs() -> list[Run]:
    """Runs that have weights (newest first), then the bundled pretrained models."""
    return [run for run in list_runs() if (run.path / WEIGHTS_FILE).exists()] + bundled_runs()


def run_label(run: Run) -> str:
    """How a trained run is named in a select box: folder, preset, accuracy, status."""
    accuracy = run.metrics.get("test_acc") or run.metrics.get("val_acc")
    shown = f", {accuracy:.1%} accuracy" if isinstance(accuracy, float) else ""
    bundled = " - bundled" if run.path.parent == MODELS_DIR else ""
    return f"{run.name} ({run.config.get('preset') or 'custom'}{shown}, {run.status}{bundled})"


# Fewer on a small cloud host (cifar_core.deployment): each model holds its weights and buffers.
@st.cache_resource(max_entries=current_profile().model_cache, show_spinner="Loading the model...")
def _load_model(path: str, weights_mtime: float) -> CifarCNN:
    return load_run(path).load_model("cpu")


def load_model(run: Run) -> CifarCNN:
    """The run's network on the CPU, cached; reloaded when a still-running job saves new weights."""
    return _load_model(str(run.path), (run.path / WEIGHTS_FILE).stat().st_mtime)


# --- how long each script run takes on the server ------------------------------------------

TIMING_LOG_ENV = "CIFAR_TIMING_LOG"  # a path: one JSON line per script run is appended there
TIMING_PROFILE_ENV = "CIFAR_TIMING_PROFILE"  # a folder: a cProfile of every script run lands there
timing_log = logging.getLogger("cifar_lab.timing")
_timing_lock = threading.Lock()
_profile_numbers = itertools.count(1)
# How a script run ended, by the name of what page.run() raised; "ok" when it returned.
_OUTCOMES = {"RerunException": "rerun", "StopException": "stopped"}


def run_page(page: st.Page) -> None:
    """Run the navigation's page (``st.navigation(...)``'s result) and time it on the server.

    Every script run is logged to ``cifar_lab.timing`` (page, session, wall and CPU
    seconds, how it ended) and, with ``CIFAR_TIMING_LOG`` set, appended to that file as a
    JSON line for benchmarks/load.py (with torch's thread count in this script thread, which a
    training job lowers process-wide). Fragment reruns (the Train page's live view) run
    only their fragment, not the page, so they are not in it.
    """
    ctx = get_script_run_ctx()
    profile_dir = os.environ.get(TIMING_PROFILE_ENV)
    profiler = cProfile.Profile() if profile_dir else None  # this thread only (Python 3.11)
    started, wall, cpu = time.time(), time.perf_counter(), time.thread_time()
    outcome = "error"
    try:
        if profiler is not None:
            profiler.enable()
        page.run()
        outcome = "ok"
    except BaseException as err:
        outcome = _OUTCOMES.get(type(err).__name__, "error")
        raise
    finally:
        if profiler is not None:
            profiler.disable()
        record = {"t": round(started, 3), "page": page.title,
                  "session": ctx.session_id if ctx else None,
                  "seconds": round(time.perf_counter() - wall, 4),
                  "cpu": round(time.thread_time() - cpu, 4), "outcome": outcome,
                  "threads": torch.get_num_threads()}
        if ctx is not None and ctx.query_string:
            record["query"] = ctx.query_string
        _record_timing(record, profiler, profile_dir)


def _record_timing(record: dict, profiler: cProfile.Profile | None, profile_dir: str | None) -> None:
    timing_log.info("page %s session %s: %.3f s (%.3f s CPU, %s)", record["page"], record["session"],
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
