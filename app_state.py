"""What the pages share, and what is Streamlit-specific: caches across sessions, this session's state.

The dataset lives in ``st.cache_resource``, so every session and rerun reuses the same
uint8 arrays (about 180 MB); so do loaded models and evaluations. The configuration lives
in ``st.session_state``, so each visitor has their own and it survives moving between pages.
"""

from __future__ import annotations

import os

import streamlit as st

from cifar_core.bundled import bundled_runs
from cifar_core.config import ModelConfig, TrainConfig, get_preset
from cifar_core.data import CifarData, DataError, load_cifar10
from cifar_core.deployment import current_profile
from cifar_core.evaluation import Evaluation, EvaluationStore, evaluate
from cifar_core.jobs import get_registry
from cifar_core.model import CifarCNN
from cifar_core.runs import Run, list_runs, load_run

DEFAULT_PRESET = "baseline"
TRAIN_JOB_KEY = "train.job_id"  # this session's job on the Train page


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
def _evaluations() -> EvaluationStore:
    # An evaluation of the test set takes seconds on a CPU and is the same for everyone. A
    # plain store rather than st.cache_data because the progress bar must be drawn while
    # the computation runs.
    return EvaluationStore(CACHED_EVALUATIONS)


def evaluation(run: Run, split: str, data: CifarData) -> Evaluation:
    """The run's predictions on a split, computed once per run, split and weights (with a
    progress bar while it is computed)."""
    images, labels = data.split(split)
    key = (str(run.path), split, run.weights_mtime(), str(data.source), len(labels))
    store = _evaluations()
    found = store.get(key)
    if found is not None:
        return found
    what = f"{SPLIT_NAMES[split]} images"
    bar = st.progress(0.0, text=f"Classifying {len(labels):,} {what}...")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Classifying {what}: {done:,} / {total:,}")

    cfg = run.train_config
    result = evaluate(load_model(run), images, labels, data.classes, precision=cfg.precision,
                      tta_flip=cfg.tta_flip, progress=progress)
    bar.empty()
    store.put(key, result)
    return result


def resume_job(run: Run, data: CifarData) -> str:
    """Go on with a stopped or interrupted run in a background job, which becomes this
    session's job on the Train page; ``RunError`` or ``JobLimitError`` say why not."""
    job_id = get_registry().resume(run, data)
    st.session_state[TRAIN_JOB_KEY] = job_id
    return job_id


def last_trained_dir() -> str | None:
    """The run folder of this session's last job on the Train page, once that job has ended."""
    job_id = st.session_state.get(TRAIN_JOB_KEY)
    snap = get_registry().snapshot(job_id) if job_id else None
    return str(snap.run_dir) if snap is not None and snap.run_dir and not snap.active else None
