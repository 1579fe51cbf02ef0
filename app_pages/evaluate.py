"""Evaluate: how good is a trained network, class by class, and where does it go wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import app_state
import app_views
from app_figures import (
    comparison_curves_figure,
    confusion_change_figure,
    confusion_figure,
    epoch_accuracy_figure,
    per_class_figure,
    png,
)
from cifar_core.compare import config_diff, curves_frame, leaderboard
from cifar_core.config import IMAGE_SIDE
from cifar_core.data import DEFAULT_CLASSES
from cifar_core.evaluation import Evaluation, matrix_accuracy
from cifar_core.formatting import MISSING, format_images, format_percent, format_setting
from cifar_core.runs import Run, RunError

SPLITS = {"val": "Validation", "test": "Test"}
EVALUABLE = ("finished", "stopped", "interrupted")
GALLERY_SCALE = 4  # 128-pixel pictures: room under each for its caption
MISTAKES = "Most confident mistakes"  # the first section under the confusion matrix
# The sections under the matrix, by their names in a URL (?section=mistakes).
SECTIONS = {"mistakes": MISTAKES, "per-class": "Per class", "through-training": "Through training"}
VIEWS = ("One run", "Compare runs")

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
    "or a label that is debatable. Choose a true and a predicted class, or click a cell of "
    "the confusion matrix above, to see the images behind that cell; a cell on the diagonal "
    "shows the right answers it was surest of. Set a class back to *any* to see mistakes only.")
HELP_EPOCHS = (
    "After every epoch, training classified the validation images and kept the confusion "
    "matrix. Move the slider to see how the answers changed: early on most images fall into "
    "a few columns (the network answers the same class for almost everything), then the "
    "diagonal fills in. The right-hand matrix shows the change from the epoch before: green "
    "is progress (more right answers, or fewer of a mistake), red is the opposite.")
HELP_COMPARE = (
    "Pick runs to put side by side: their validation curves, the settings in which they "
    "differ, and their results. The leaderboard below lists every run in the runs folder.")


# --- which run ------------------------------------------------------------------

def draw_run_choice(runs: list[Run]) -> Run:
    by_path = {str(run.path): run for run in runs}
    app_state.preselect_run("evaluate", runs)
    path = st.selectbox("Run", list(by_path), format_func=lambda p: by_path[p].label,
                        key="evaluate.run", help="Finished, stopped and interrupted runs that have "
                        "saved weights, newest first, then the pretrained models shipped with the app. "
                        "It opens on the most accurate, or on the run you have just trained.")
    return by_path[path]


# --- the figures ------------------------------------------------------------------

def draw_accuracy(result: Evaluation, run: Run, split: str) -> None:
    correct = int((result.predicted == result.labels).sum())
    cols = st.columns(3)
    cols[0].metric(f"{SPLITS[split]} accuracy", f"{format_percent(result.accuracy)}", help=HELP_SPLIT)
    cols[1].metric("Correct", f"{correct:,} / {len(result.labels):,}")
    cols[2].metric("Guessing", f"{format_percent(1 / len(result.classes), 0)}",
                   help="What picking a class at random would score: the floor to beat.")
    if run.subset:
        st.caption(f"This run trained on {run.subset:,} images and was tested on a matching "
                   "share of the test set; here it is scored on the whole split.")


def pick_cell(classes: tuple[str, ...]) -> None:
    """Callback of a click on the confusion matrix: show that cell's images in the gallery."""
    event = st.session_state.get("evaluate.confusion")
    points = (event or {}).get("selection", {}).get("points", [])
    if points and points[0].get("x") in classes and points[0].get("y") in classes:
        st.session_state["evaluate.true"] = points[0]["y"]
        st.session_state["evaluate.predicted"] = points[0]["x"]
        st.session_state["evaluate.section"] = MISTAKES


def draw_confusion(result: Evaluation, split: str) -> None:
    st.subheader("Confusion matrix")
    normalized = st.toggle("Row shares instead of counts", key="evaluate.normalize",
                           help="Divide each row by its total, so classes compare on the same scale.")
    fig = confusion_figure(result.confusion(normalize=normalized), result.classes, normalized,
                           title=f"{SPLITS[split]} set: true class (rows) vs prediction (columns)",
                           pickable=True)
    st.plotly_chart(fig, width="stretch", key="evaluate.confusion",
                    on_select=lambda: pick_cell(result.classes), selection_mode="points")
    st.caption("Click a cell to see its images below, the most confident first.")
    with st.expander("How to read a confusion matrix"):
        st.markdown(HELP_CONFUSION)


def draw_epochs(run: Run, classes: tuple[str, ...]) -> None:
    """The validation confusion matrix after each epoch, what changed, and accuracy per epoch."""
    matrices = run.val_confusions()
    if matrices is None or matrices.ndim != 3 or len(matrices) == 0:
        st.info("This run has no confusion matrices per epoch: it was trained before they were "
                "recorded, or its file of them is missing. Its final matrix is above.")
        return
    epochs = len(matrices)
    best = run.metrics.best_epoch or None
    if epochs > 1:
        if st.session_state.get("evaluate.epoch_run") != str(run.path) or \
                st.session_state.get("evaluate.epoch", 0) > epochs:
            st.session_state["evaluate.epoch"] = epochs  # another run: start at its last epoch
            st.session_state["evaluate.epoch_run"] = str(run.path)
        epoch = st.slider("Epoch", 1, epochs, key="evaluate.epoch",
                          help="The validation matrix after this epoch of training.")
    else:
        epoch = 1
        st.caption("This run trained for one epoch: there is one matrix and nothing to compare it with.")
    current = matrices[epoch - 1]
    images = int(current.sum())
    accuracy = matrix_accuracy(current)
    cols = st.columns(3)
    cols[0].metric(f"Validation accuracy after epoch {epoch}", f"{format_percent(accuracy)}",
                   delta=(f"{100 * (accuracy - matrix_accuracy(matrices[epoch - 2])):+.1f} points "
                          f"since epoch {epoch - 1}" if epoch > 1 else None))
    cols[1].metric("Right answers", f"{int(np.trace(current)):,} / {images:,}")
    if best:
        cols[2].metric("Best epoch (saved weights)", f"{best}",
                       help="The epoch whose weights were kept; the rest of this page uses them.")
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(current, classes, title=f"After epoch {epoch}"),
                      width="stretch", key="evaluate.epoch_confusion")
    if epoch > 1:
        right.plotly_chart(confusion_change_figure(current, matrices[epoch - 2], classes,
                                                   title=f"Change from epoch {epoch - 1} to {epoch}"),
                           width="stretch", key="evaluate.epoch_change")
    else:
        right.info("Epoch 1 has no epoch before it: move the slider to see what each epoch changed.")
    st.plotly_chart(epoch_accuracy_figure(matrices, classes, epoch, best), width="stretch",
                    key="evaluate.epoch_accuracy")
    st.caption(HELP_EPOCHS + f" These are the {images:,} validation images used while training"
               + (" (a share matching the training subset)." if run.subset else "."))


def draw_per_class(result: Evaluation) -> None:
    report = result.per_class()
    left, right = st.columns([2, 3])
    left.dataframe(report, hide_index=True, width="stretch", key="evaluate.per_class", column_config={
        "precision": st.column_config.NumberColumn(format="percent"),
        "recall": st.column_config.NumberColumn(format="percent"),
        "f1": st.column_config.NumberColumn("F1", format="percent"),
    })
    right.plotly_chart(per_class_figure(report), width="stretch", key="evaluate.per_class_bars")
    st.caption(HELP_PER_CLASS)


def draw_mistakes(result: Evaluation, images: np.ndarray | None) -> None:
    if images is None:
        app_state.draw_data_missing("The gallery of mistakes")
        return
    st.caption(HELP_MISTAKES)
    names = ["any", *result.classes]
    a, b, c = st.columns(3)
    true_name = a.selectbox("True class", names, key="evaluate.true")
    predicted_name = b.selectbox("Predicted as", names, key="evaluate.predicted")
    limit = c.slider("How many", 8, 64, 24, step=8, key="evaluate.limit")
    true_class = None if true_name == "any" else names.index(true_name) - 1
    predicted_class = None if predicted_name == "any" else names.index(predicted_name) - 1
    if true_class is not None and predicted_class is not None:
        cell = result.cell(true_class, predicted_class, limit)
        if cell.empty:
            st.info(f"No {true_name} images were predicted as {predicted_name}.")
            return
        what = "right answers" if true_name == predicted_name else "images"
        total = int(result.confusion()[true_class, predicted_class])
        st.markdown(f"**{true_name} predicted as {predicted_name}**: {what} in this cell, the most "
                    f"confident first ({len(cell)} shown of {total:,}).")
        rows = cell.to_dict("records")
    else:
        mistakes = result.mistakes(true_class, predicted_class, limit=limit)
        if mistakes.empty:
            st.info("No mistakes with these classes.")
            return
        rows = mistakes.to_dict("records")
    # One element for the whole gallery, its pictures wrapping in rows: a column and an image
    # element per picture cost a message each, most of this section's server time.
    st.image([png(images[row["index"]], scale=GALLERY_SCALE) for row in rows], output_format="PNG",
             width=IMAGE_SIDE * GALLERY_SCALE, caption=[f"{row['true']} → {row['predicted']} "
                                                f"({format_percent(row['confidence'], 0)})" for row in rows])


# --- run comparison -----------------------------------------------------------------

def draw_comparison() -> None:
    runs = app_state.all_runs()
    if not runs:
        st.info("No runs yet: train one on the **Train** page to compare it with others.")
        return
    st.caption(HELP_COMPARE)
    by_path = {str(run.path): run for run in runs}
    stored = [p for p in st.session_state.get("evaluate.compare", []) if p in by_path]
    st.session_state["evaluate.compare"] = (stored if "evaluate.compare" in st.session_state
                                            else list(by_path)[:3])
    chosen = st.multiselect("Runs to compare", list(by_path), key="evaluate.compare",
                            format_func=lambda p: by_path[p].label,
                            placeholder="Choose two or more runs")
    selected = [by_path[p] for p in chosen]
    if selected:
        curves = curves_frame(selected)
        if curves.empty:
            st.info("None of these runs has finished an epoch yet.")
        else:
            left, right = st.columns(2)
            left.plotly_chart(comparison_curves_figure(curves, "val_acc"), width="stretch",
                              key="evaluate.compare_acc")
            right.plotly_chart(comparison_curves_figure(curves, "val_loss"), width="stretch",
                               key="evaluate.compare_loss")
        figures_of = leaderboard(selected)
        st.markdown("##### Results")
        draw_leaderboard(figures_of, "evaluate.compare_results")
        st.markdown("##### Settings that differ")
        diff = config_diff(selected)
        if len(selected) < 2:
            st.caption("Choose a second run to see how their settings differ.")
        elif diff.empty:
            st.caption("These runs have exactly the same settings (only their seeds of chance "
                       "or their start times differ).")
        else:
            st.dataframe(diff.map(format_setting).reset_index(), hide_index=True, width="stretch",
                         key="evaluate.config_diff", height=35 * (len(diff) + 1) + 3)
    st.markdown("##### Leaderboard: every run, best validation accuracy first")
    draw_leaderboard(leaderboard(runs), "evaluate.leaderboard")


def draw_leaderboard(frame: pd.DataFrame, key: str) -> None:
    """A leaderboard frame as a table: accuracies in percent, 'all' for the whole training set."""
    shown = frame.assign(
        val_acc=frame["val_acc"] * 100, test_acc=frame["test_acc"] * 100,
        images=[format_images(v) for v in frame["images"]])
    st.dataframe(shown, hide_index=True, width="stretch", key=key, placeholder=MISSING,
                 height=35 * (len(shown) + 1) + 3 if len(shown) <= 15 else "auto", column_config={
        "val_acc": st.column_config.NumberColumn("val acc", format="%.1f%%"),
        "test_acc": st.column_config.NumberColumn("test acc", format="%.1f%%"),
        "images": st.column_config.TextColumn("train images",
                                              help="How many training images the run used"),
        "images_per_second": st.column_config.NumberColumn("images/s", format="%.0f"),
        "train_seconds": st.column_config.NumberColumn("train s", format="%.1f"),
    })


# --- the page ---------------------------------------------------------------------

def draw_one_run() -> None:
    runs = [r for r in app_state.trained_runs() if r.status in EVALUABLE or r.is_bundled]
    if not runs:
        st.info("No trained networks yet, and no pretrained models are bundled with this copy of the "
                "app. Train one first; even a quick run on a few thousand images will do.")
        st.page_link("app_pages/train.py", label="Go to the Train page", icon=":material/model_training:")
        return
    data, _ = app_state.load_data()  # not needed for a model that ships its test results
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    with left:
        run = draw_run_choice(runs)
    split = right.radio("Images", list(SPLITS), format_func=SPLITS.get, index=1, horizontal=True,
                        key="evaluate.split", help=HELP_SPLIT)
    if data is None and split == "val":
        app_state.draw_data_missing("The validation set")
        return
    try:
        result = app_state.evaluation(run, split, data)
    except (RunError, OSError, RuntimeError, ValueError) as err:
        # Weights from a different network shape, a file removed under us: say so, keep serving.
        st.error(f"Could not evaluate {run.name}: {err}")
        return
    if result is None:
        app_state.draw_data_missing(f"Evaluating {run.name}")
        return
    if data is None:
        st.caption("From the test-set predictions stored with this model; the images themselves "
                   "are not on this server yet.")
    draw_accuracy(result, run, split)
    draw_confusion(result, split)
    # One section at a time: each of the other two is a table or several charts that every
    # view would otherwise build and the browser draw (benchmarks/RESULTS.md). The mistakes
    # come first, right under the matrix whose cells pick them.
    app_state.tabs_drawn_when_open("evaluate.section", dict(zip(SECTIONS.values(), (
        lambda: draw_mistakes(result, app_state.images_for(result, split, data)),
        lambda: draw_per_class(result), lambda: draw_epochs(run, result.classes)), strict=True)))


st.title("Evaluate")
st.caption("How well a trained network does on images it never learned from: overall, class by "
           "class, and the mistakes it is surest about; and how runs compare.")
CLASS_CHOICES = ("any", *DEFAULT_CLASSES)
app_views.sync("evaluate", tab=app_views.tab("evaluate.view", VIEWS), run=app_views.run("evaluate.run"),
               split=app_views.choice("evaluate.split", SPLITS),
               section=app_views.named("evaluate.section", SECTIONS),
               true=app_views.choice("evaluate.true", CLASS_CHOICES),
               predicted=app_views.choice("evaluate.predicted", CLASS_CHOICES))
# Only the open tab is drawn (the comparison reads every run folder).
app_state.tabs_drawn_when_open("evaluate.view",
                               dict(zip(VIEWS, (draw_one_run, draw_comparison), strict=True)))
