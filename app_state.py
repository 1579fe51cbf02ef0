"""What the pages share: the dataset (loaded once per process) and this session's configuration.

The dataset lives in ``st.cache_resource``, so every session and rerun reuses the same
uint8 arrays (about 180 MB); the configuration lives in ``st.session_state``, so each
visitor has their own and it survives moving between pages.
"""

from __future__ import annotations

import os

import streamlit as st

from cifar_core.bundled import MODELS_DIR, bundled_runs
from cifar_core.config import ModelConfig, TrainConfig, get_preset
from cifar_core.data import CifarData, DataError, load_cifar10
from cifar_core.deployment import current_profile
from cifar_core.model import CifarCNN
from cifar_core.runs import WEIGHTS_FILE, Run, list_runs, load_run

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
