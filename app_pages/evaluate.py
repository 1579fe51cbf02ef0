"""Evaluate: how good is a trained network, class by class, and where does it go wrong."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import streamlit as st

from app_state import get_data, load_model, trained_runs
from cifar_core.bundled import MODELS_DIR
from cifar_core.data import CifarData
from cifar_core.evaluation import Evaluation, evaluate
from cifar_core.jobs import get_registry
from cifar_core.plots import confusion_figure, per_class_figure, upscale
from cifar_core.runs import WEIGHTS_FILE, Run, RunError

SPLITS = {"val": "Validation", "test": "Test"}
EVALUABLE = ("finished", "stopped", "interrupted")
GALLERY_COLUMNS = 8
CACHED_EVALUATIONS = 8

HELP_SPLIT = (
    "**Validation** images (20% of the training set, never trained on) chose the best epoch "
    "during training, so the score on them is a little optimistic. **Test** images (10,000) "
    "played no part in training at all: their score is the honest estimate of how the network "
    "does on new photos.")
HELP_CONFUSION = (
    "Each row is the images of one true class; each column is what the network answered. The "
    "diagonal holds the correct answers, everything else is a mistake: a bright cell off the "
    "diagonal, say in row *cat* and column *dog*, means many cats were taken for dogs. With "
    "**row shares** on, each row adds up to 100%, so the diagonal is each class's recall.")
HELP_PER_CLASS = (
    "**Precision**: of the images the network *called* this class, the share that really are. "
    "**Recall**: of the images that really *are* this class, the share it found. A network "
    "that calls everything 'cat' has perfect recall for cats and poor precision. "
    "**F1** is the harmonic mean of the two, high only when both are. **Support** is the "
    "number of images of the class in this split.")
HELP_MISTAKES = (
    "Wrong answers, the most confident first: these are the images the network was surest "
    "about and still got wrong. They often show what it really learned (backgrounds, colours) "
    "or a label that is debatable.")


# --- which run, and its evaluation (computed once per run, split and weights) ------

@st.cache_resource
def _evaluations() -> tuple[threading.Lock, OrderedDict]:
    # Shared by every session: an evaluation of the test set takes seconds on a CPU and
    # is the same for everyone. A plain store rather than st.cache_data because the
    # progress bar must be drawn by this page while the computation runs.
    return threading.Lock(), OrderedDict()


def run_label(run: Run) -> str:
    if run.path.parent == MODELS_DIR:
        prefix = f"Bundled model '{run.name}'"
    else:
        prefix = f"{run.name} ({run.status})"
    details = [run.config.get("preset") or "custom"]
    if run.config.get("subset"):
        details.append(f"{run.config['subset']:,} images")
    if isinstance(run.metrics.get("test_acc"), float):
        details.append(f"test {run.metrics['test_acc']:.1%}")
    return f"{prefix} · {' · '.join(details)}"


def choose_run(runs: list[Run]) -> Run:
    by_path = {str(run.path): run for run in runs}
    latest = st.session_state.get("eval.last_trained")
    job_dir = last_trained_dir()
    if job_dir in by_path and job_dir != latest:
        # A run this session just trained: show it, once, instead of the old choice.
        st.session_state["eval.run"] = job_dir
        st.session_state["eval.last_trained"] = job_dir
    if st.session_state.get("eval.run") not in by_path:
        st.session_state.pop("eval.run", None)
    path = st.selectbox("Run", list(by_path), format_func=lambda p: run_label(by_path[p]),
                        key="eval.run", help="Finished, stopped and interrupted runs that have "
                        "saved weights, newest first, then the pretrained models shipped with the app.")
    return by_path[path]


def last_trained_dir() -> str | None:
    """The run folder of this session's last job on the Train page, once that job has ended."""
    job_id = st.session_state.get("train.job_id")
    snap = get_registry().snapshot(job_id) if job_id else None
    return str(snap.run_dir) if snap is not None and snap.run_dir and not snap.active else None


def get_evaluation(run: Run, split: str, data: CifarData) -> Evaluation:
    images, labels = data.split(split)
    weights = run.path / WEIGHTS_FILE
    key = (str(run.path), split, weights.stat().st_mtime, str(data.source), len(labels))
    lock, store = _evaluations()
    with lock:
        if key in store:
            store.move_to_end(key)
            return store[key]
    bar = st.progress(0.0, text=f"Classifying {len(labels):,} {SPLITS[split].lower()} images...")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Classifying {SPLITS[split].lower()} images: {done:,} / {total:,}")

    cfg = run.train_config
    result = evaluate(load_model(run), images, labels, data.classes, precision=cfg.precision,
                      tta_flip=cfg.tta_flip, progress=progress)
    bar.empty()
    with lock:
        store[key] = result
        while len(store) > CACHED_EVALUATIONS:
            store.popitem(last=False)
    return result


# --- the figures ------------------------------------------------------------------

def show_accuracy(result: Evaluation, run: Run, split: str) -> None:
    correct = int((result.predicted == result.labels).sum())
    cols = st.columns(3)
    cols[0].metric(f"{SPLITS[split]} accuracy", f"{result.accuracy:.1%}", help=HELP_SPLIT)
    cols[1].metric("Correct", f"{correct:,} / {len(result.labels):,}")
    cols[2].metric("Guessing", f"{1 / len(result.classes):.0%}",
                   help="What picking a class at random would score: the floor to beat.")
    if run.config.get("subset"):
        st.caption(f"This run trained on {run.config['subset']:,} images and was tested on a matching "
                   "share of the test set; here it is scored on the whole split.")


def show_confusion(result: Evaluation, split: str) -> None:
    st.subheader("Confusion matrix")
    normalized = st.toggle("Row shares instead of counts", key="eval.normalize",
                           help="Divide each row by its total, so classes compare on the same scale.")
    fig = confusion_figure(result.confusion(normalize=normalized), result.classes, normalized,
                           title=f"{SPLITS[split]} set: true class (rows) vs prediction (columns)")
    st.plotly_chart(fig, width="stretch", key="eval.confusion")
    with st.expander("How to read a confusion matrix"):
        st.markdown(HELP_CONFUSION)


def show_per_class(result: Evaluation) -> None:
    st.subheader("Per class")
    report = result.per_class()
    left, right = st.columns([2, 3])
    left.dataframe(report, hide_index=True, width="stretch", key="eval.per_class", column_config={
        "precision": st.column_config.NumberColumn(format="percent"),
        "recall": st.column_config.NumberColumn(format="percent"),
        "f1": st.column_config.NumberColumn("F1", format="percent"),
    })
    right.plotly_chart(per_class_figure(report), width="stretch", key="eval.per_class_bars")
    st.caption(HELP_PER_CLASS)


def show_mistakes(result: Evaluation, images: np.ndarray) -> None:
    st.subheader("Most confident mistakes")
    st.caption(HELP_MISTAKES)
    names = ["any", *result.classes]
    a, b, c = st.columns(3)
    true_name = a.selectbox("True class", names, key="eval.true")
    predicted_name = b.selectbox("Predicted as", names, key="eval.predicted")
    limit = c.slider("How many", 8, 64, 24, step=8, key="eval.limit")
    mistakes = result.mistakes(None if true_name == "any" else names.index(true_name) - 1,
                               None if predicted_name == "any" else names.index(predicted_name) - 1,
                               limit=limit)
    if mistakes.empty:
        st.info("No mistakes with these classes.")
        return
    rows = mistakes.to_dict("records")
    for start in range(0, len(rows), GALLERY_COLUMNS):
        for column, row in zip(st.columns(GALLERY_COLUMNS), rows[start:start + GALLERY_COLUMNS],
                               strict=False):
            column.image(upscale(images[row["index"]], 3),
                         caption=f"{row['true']} → {row['predicted']} ({row['confidence']:.0%})")


# --- the page ---------------------------------------------------------------------

st.title("Evaluate")
st.caption("How well a trained network does on images it never learned from: overall, class by "
           "class, and the mistakes it is surest about.")
runs = [r for r in trained_runs() if r.status in EVALUABLE or Path(r.path).parent == MODELS_DIR]
if not runs:
    st.info("No trained networks yet, and no pretrained models are bundled with this copy of the "
            "app. Train one first; even a quick run on a few thousand images will do.")
    st.page_link("app_pages/train.py", label="Go to the Train page", icon=":material/model_training:")
    st.stop()
data = get_data()
if data is None:
    st.stop()
left, right = st.columns([3, 1], vertical_alignment="bottom")
with left:
    run = choose_run(runs)
split = right.radio("Images", list(SPLITS), format_func=SPLITS.get, index=1, horizontal=True,
                    key="eval.split", help=HELP_SPLIT)
try:
    result = get_evaluation(run, split, data)
except (RunError, OSError, RuntimeError, ValueError) as err:
    # Weights from a different network shape, a file removed under us: say so, keep serving.
    st.error(f"Could not evaluate {run.name}: {err}")
    st.stop()
show_accuracy(result, run, split)
show_confusion(result, split)
show_per_class(result)
show_mistakes(result, data.split(split)[0])
