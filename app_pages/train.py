"""Train: start a run in the background, watch it learn, stop it; every run so far.

The run itself lives in the process-wide job registry (cifar_core.jobs), not in this
page: leaving the page or closing the tab does not stop it, and coming back shows it
again. This page only submits (or resumes a stopped or interrupted run), reads snapshots
once a second and sends stop requests.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import app_state
from app_figures import training_curves_figure
from app_state import get_config, get_data, trained_runs
from cifar_core import export
from cifar_core.compare import run_table
from cifar_core.config import (
    OWNER_MAX_LENGTH,
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
)
from cifar_core.data import CifarData
from cifar_core.deployment import current_profile
from cifar_core.formatting import MISSING, format_count, format_images, format_percent, format_seconds
from cifar_core.jobs import JobLimitError, JobSnapshot, get_registry
from cifar_core.model import build_model, count_parameters
from cifar_core.runs import HISTORY_FILE, WEIGHTS_FILE, Run, RunError, RunMetrics, list_runs, load_run

SAVED_SETTINGS = "train.saved_settings"  # {widget key: (its default then, value)}
REFRESH_SECONDS = 1.0

HELP_EARLY_STOPPING = (
    "**Early stopping** watches the validation score after every epoch. When it has not "
    "improved for *patience* epochs in a row, training stops and the weights of the best "
    "epoch are kept: more epochs would only make the network memorise the training images "
    "(overfitting) instead of learning what generalises.")
HELP_PATIENCE = (
    "Epochs since the validation score last improved. Training stops when this reaches "
    "the patience; a new best epoch resets it to 0.")
HELP_VALIDATION = (
    "The **training** curve is measured on the images the network learns from. The "
    "**validation** curve is measured on 20% of the training set held back: the network "
    "never learns from them, so they show how well it generalises. When the two curves "
    "drift apart, the network is overfitting.")
HELP_TEST = (
    "The **test** set (10,000 images) is used once, at the end, on the best epoch's weights. "
    "Validation accuracy picked that epoch, so it is slightly optimistic; the test accuracy "
    "is the honest figure to report.")
HELP_IPS = "Training images processed per second, including the augmentation, so far in this run."
PHASES = {"waiting": "waiting for a free slot", "preparing": "preparing",
          "training": "training", "validating": "checking the validation images",
          "testing": "testing the best weights on the test set", "done": "done"}


# --- configuration and start ----------------------------------------------------

def draw_config(preset: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    stopping = (f"early stopping on {train_cfg.monitor.replace('_', ' ')}, patience {train_cfg.patience}"
                if train_cfg.early_stopping else "no early stopping")
    params = count_parameters(build_model(model_cfg))
    with st.container(border=True):
        st.markdown(f"**{preset}** · {params:,} parameters · {train_cfg.optimizer}, learning rate "
                    f"{train_cfg.lr:g} · batch {train_cfg.batch_size} "
                    f"· {stopping} · augmentation {train_cfg.augmentation}",
                    help=HELP_EARLY_STOPPING)
        st.page_link("app_pages/model.py", label="Change the network and its settings on the Model page",
                     icon=":material/tune:")


def restore_setting(key: str, default: int, maximum: int) -> None:
    """Give a start setting this session's last value, unless its default has changed since.

    Streamlit forgets a widget's state when its page is left, so without this the subset
    and epochs would fall back to "all images" and the preset's epochs after every visit
    to another page.
    """
    saved = st.session_state.get(SAVED_SETTINGS, {}).get(key)
    if key not in st.session_state:
        st.session_state[key] = min(saved[1], maximum) if saved and saved[0] == default else default


def save_setting(key: str, default: int, value: int) -> None:
    st.session_state.setdefault(SAVED_SETTINGS, {})[key] = (default, value)


def draw_start_controls(data: CifarData, preset: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
                   own: JobSnapshot | None) -> None:
    n_train = len(data.y_train)
    profile = current_profile()  # a small cloud host starts with fewer images and epochs
    preset_images = PRESETS[preset].train_images if preset in PRESETS else None
    preset_images = preset_images if preset_images and preset_images < n_train else None
    default_subset = min(filter(None, (preset_images, profile.default_training_images(n_train))), default=0)
    default_epochs = profile.default_epochs(train_cfg.epochs)
    restore_setting("train.subset", default_subset, n_train)
    restore_setting("train.epochs", default_epochs, 500)
    name_col, left, middle, right = st.columns(4, vertical_alignment="bottom")
    owner = name_col.text_input(
        "Your name (optional)", key="train.owner", max_chars=OWNER_MAX_LENGTH,
        placeholder="shown with your run", help="Shown with your run in the run lists and on the "
        "Leaderboard, so you can find it. Letters, digits, spaces and . - _ ' only; no login.")
    size = left.number_input(
        f"Training images (0 = all {n_train:,})", min_value=0, max_value=n_train,
        step=500, key="train.subset",
        help="A quick run on part of the training set: a few thousand images and one or two "
             "epochs take seconds to a minute and show the whole process. Validation and test "
             "sets shrink in proportion.")
    epochs = middle.number_input("Epochs", min_value=1, max_value=500, key="train.epochs",
                                 help="The most epochs to train; early stopping may end sooner. "
                                      "One epoch is one pass over every training image.")
    save_setting("train.subset", default_subset, int(size))
    save_setting("train.epochs", default_epochs, int(epochs))
    if profile.name == "cloud":
        st.caption(f"Shared cloud server ({profile.reason}): runs start with "
                   f"{profile.default_subset:,} images and at most {profile.max_default_epochs} epochs, "
                   "and one run trains at a time. Raise them if you are willing to wait.")
    busy = own is not None and own.active
    if right.button("Start training", type="primary", key="train.start", disabled=busy,
                    icon=":material/play_arrow:", width="stretch",
                    help="Your run is still going: stop it first." if busy else None):
        submit(data, preset, model_cfg, train_cfg, int(size), int(epochs), owner)


def submit(data: CifarData, preset: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
           size: int, epochs: int, owner: str) -> None:
    try:
        model_cfg, train_cfg = apply_overrides(model_cfg, train_cfg, {"epochs": epochs})
        job_id = get_registry().submit(model_cfg, train_cfg, data, preset=preset,
                                       subset_size=size or None, owner=owner,
                                       visitor=app_state.visitor_id())
    except (JobLimitError, ConfigError) as err:
        st.error(str(err))
        return
    st.session_state[app_state.TRAIN_JOB_KEY] = job_id
    st.rerun()  # redraw the whole page: Start disabled, the live view polling


def current_job() -> tuple[JobSnapshot | None, bool]:
    """(the job to show, whether this session started it): its own, else one running on the server."""
    registry = get_registry()
    own_id = st.session_state.get(app_state.TRAIN_JOB_KEY)
    own = registry.snapshot(own_id) if own_id else None
    if own is not None:
        return own, True
    active = registry.active()
    return (active[0], False) if active else (None, False)


# --- the live view ----------------------------------------------------------------

def draw_live_view(job_id: str, poll: bool) -> None:
    """Redraws itself every second while ``poll``; a full rerun follows when the job ends."""

    @app_state.fragment("Train: live view", run_every=REFRESH_SECONDS if poll else None)
    def view() -> None:
        snap = get_registry().snapshot(job_id)
        if snap is None:
            st.info("That run is no longer in memory; it is in the run list below.")
            return
        draw_job(snap)
        if poll and not snap.active:
            st.rerun()  # the whole page: stop polling, show final figures and the new run

    view()


def job_title(snap: JobSnapshot) -> str:
    """'**quick** on 5,000 images by Ada': what a job trains, and whose it is."""
    return (f"**{snap.preset or 'custom'}**" + (f" on {snap.subset:,} images" if snap.subset else "")
            + (f" by {snap.owner}" if snap.owner else ""))


def expected_start(snap: JobSnapshot) -> str:
    if snap.starts_in is None:
        return "its start time is not known yet (no run has finished an epoch here)"
    if snap.starts_in < 60:
        return "it should start within a minute"
    return f"it should start in about {format_seconds(snap.starts_in)}"


def draw_job(snap: JobSnapshot) -> None:
    what = job_title(snap)
    if snap.status == "queued":
        st.info(f"{what} is waiting: **number {snap.queue_position} in the queue**; "
                f"{expected_start(snap)}. Only as many runs train at once as this server has cores "
                "for, so they don't slow each other down; it starts by itself when a slot frees.",
                icon=":material/hourglass_top:")
        draw_stop_button(snap, "Cancel")
        return
    if snap.active:
        draw_progress(snap, what)
    else:
        draw_result(snap, what)
    draw_curves(snap)


def draw_progress(snap: JobSnapshot, what: str) -> None:
    stopping = " (stop requested: finishing this batch, then testing)" if snap.stop_requested else ""
    if snap.epoch:
        st.progress(snap.batch / snap.batches,
                    text=f"{what} · epoch {snap.epoch}/{snap.epochs} · batch {snap.batch}/{snap.batches} "
                         f"· {PHASES[snap.phase]}{stopping}")
    else:
        st.progress(0.0, text=f"{what} · {PHASES[snap.phase]}")
    st.progress(snap.progress,
                text=f"Whole run: {format_percent(snap.progress, 0)} of {snap.epochs} planned epochs"
                + (" (early stopping may end it sooner)" if snap.patience else ""))
    cols = st.columns(6)
    cols[0].metric("Epoch ETA", format_seconds(snap.eta_epoch),
                   help="Time for the rest of this epoch's training batches.")
    cols[1].metric("Run ETA", format_seconds(snap.eta_run),
                   help="Time left if every planned epoch runs"
                        + ("; early stopping may end the run sooner." if snap.patience else "."))
    cols[2].metric("Images/s", format_count(snap.images_per_second), help=HELP_IPS)
    cols[3].metric("Batch loss", f"{snap.loss:.3f}" if snap.loss is not None else MISSING,
                   help="Cross-entropy of the latest batch: lower is better; it jumps around "
                        "from batch to batch, the epoch curves below are smoother.")
    draw_stopping(snap, cols[4], cols[5])
    draw_stop_button(snap, "Stop")


def draw_stopping(snap: JobSnapshot, best_col: DeltaGenerator, patience_col: DeltaGenerator) -> None:
    best = snap.history[snap.best_epoch - 1] if snap.best_epoch else None
    best_col.metric("Best epoch", str(snap.best_epoch) if best else MISSING,
                    f"val {format_percent(best.val_acc)}" if best else None, delta_color="off",
                    delta_arrow="off",
                    help=f"The epoch with the best {snap.monitor.replace('_', ' ')} so far; "
                         "its weights are the ones kept.")
    if snap.patience:
        patience_col.metric("Patience", f"{snap.epochs_without_improvement} / {snap.patience}",
                            help=HELP_PATIENCE + " " + HELP_EARLY_STOPPING)
    else:
        patience_col.metric("Early stopping", "off", help=HELP_EARLY_STOPPING)


def draw_stop_button(snap: JobSnapshot, label: str) -> None:
    if st.button(label, key=f"train.stop.{snap.id}", icon=":material/stop:",
                 disabled=snap.stop_requested,
                 help="Stops after the current batch. The epochs done so far are kept, the best "
                      "weights are tested and saved as a run marked 'stopped'."):
        get_registry().stop(snap.id)
        st.rerun(scope="fragment")


def draw_result(snap: JobSnapshot, what: str) -> None:
    if snap.status == "failed":
        st.error(f"{what} failed: {snap.error}", icon=":material/error:")
        return
    if snap.status == "stopped" and not snap.history:
        st.warning(f"{what} was stopped before any epoch finished.", icon=":material/stop_circle:")
        return
    m = snap.metrics or RunMetrics()  # a job ended before training began has no figures
    how = "finished" if snap.status == "finished" else "was stopped"
    early = " (early stopping ended it)" if m.stopped_early else ""
    epochs = f"{len(snap.history)} epoch{'s' if len(snap.history) != 1 else ''}"
    st.success(f"{what} {how} after {epochs}{early}. Run folder: `{snap.run_dir}`",
               icon=":material/check_circle:")
    cols = st.columns(5)
    cols[0].metric("Best epoch", m.best_epoch or MISSING)
    cols[1].metric("Val accuracy", format_percent(m.val_acc), help=HELP_VALIDATION)
    cols[2].metric("Test accuracy", format_percent(m.test_acc), help=HELP_TEST)
    cols[3].metric("Training time", format_seconds(m.train_seconds))
    cols[4].metric("Images/s", format_count(m.images_per_second), help=HELP_IPS)
    st.page_link("app_pages/evaluate.py", label="See its confusion matrix and mistakes on the Evaluate page",
                 icon=":material/grid_on:")


def draw_curves(snap: JobSnapshot) -> None:
    if not snap.history:
        if snap.active:  # a run that ended without an epoch has no curves to come
            st.caption("The loss and accuracy curves appear after the first epoch.")
        return
    left, right = st.columns(2)
    for column, metric in ((left, "loss"), (right, "accuracy")):
        fig = training_curves_figure(snap.history, metric, snap.best_epoch, snap.epochs)
        column.plotly_chart(fig, width="stretch", key=f"train.curve.{metric}")
    st.caption(HELP_VALIDATION)


def draw_other_jobs(shown: JobSnapshot | None) -> None:
    others = [s for s in get_registry().active() if shown is None or s.id != shown.id]
    if not others:
        return
    st.caption("Also on this server: " + "; ".join(
        f"{s.preset or 'custom'}{f' by {s.owner}' if s.owner else ''} "
        f"({s.status}{f', #{s.queue_position} in queue' if s.queue_position else ''})"
        for s in others))


# --- every run so far ---------------------------------------------------------------

def run_list(runs: list[Run]) -> pd.DataFrame:
    """The run table as this page lists it: newest first, subsets as text, page column names."""
    table = run_table(runs)
    table["images"] = [format_images(v) for v in table["images"]]
    table["owner"] = table["owner"].fillna("")
    shown = table[["run", "owner", "status", "preset", "images", "epochs", "best_epoch", "val_acc",
                   "test_acc", "images_per_second", "created"]]
    return shown.rename(columns={"owner": "name", "best_epoch": "best epoch", "val_acc": "val acc",
                                 "test_acc": "test acc", "images_per_second": "images/s"})


def draw_runs(runs: list[Run]) -> None:
    st.subheader("All runs")
    if not runs:
        st.caption("No runs yet. Each run you start here (or with `python -m cifar_core train`) "
                   "is saved as a folder and listed here.")
        return
    st.dataframe(run_list(runs), hide_index=True, width="stretch", key="train.runs", placeholder=MISSING,
                 column_config={
                     "val acc": st.column_config.NumberColumn(format="percent", help=HELP_VALIDATION),
                     "test acc": st.column_config.NumberColumn(format="percent", help=HELP_TEST),
                     "images": st.column_config.TextColumn(help="Training images the run used"),
                     "images/s": st.column_config.NumberColumn(format="%.0f", help=HELP_IPS),
                     "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                     "status": st.column_config.TextColumn(
                         help="finished; stopped (by you; still tested and saved); interrupted "
                              "(the server stopped mid-run; the best epoch so far is kept). "
                              "Stopped and interrupted runs can be resumed below."),
                 })


def draw_resume(runs: list[Run], data: CifarData, own: JobSnapshot | None) -> None:
    """Resume for runs that were stopped or interrupted before their planned epochs."""
    resumable = {str(run.path): run for run in runs if run.resumable}
    if not resumable:
        return
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    path = left.selectbox("Resume a stopped or interrupted run", list(resumable), key="train.resume.run",
                          format_func=lambda p: resumable[p].label)
    busy = own is not None and own.active
    if right.button("Resume", key="train.resume", icon=":material/play_circle:", disabled=busy,
                    width="stretch",
                    help="Your run is still going: stop it first." if busy else
                         "Goes on from the run's last complete epoch in its own folder, with its own "
                         "settings, exactly as if it had never stopped."):
        try:
            app_state.resume_job(resumable[path], data)
        except (JobLimitError, RunError) as err:
            st.error(str(err), icon=":material/error:")
            return
        st.rerun()  # the whole page: the live view of the resumed run


# --- downloads ------------------------------------------------------------------------

EXPORT_RUN = "train.export.run"
EXPORT_ONNX = "train.export.onnx_made"  # "<run folder>:<weights mtime>" once its ONNX file is made
HELP_ONNX = (
    "The network in the ONNX format, to run outside this app (onnxruntime, OpenCV, browsers, "
    "phones). Input `images`: float32 (N, 3, 32, 32), RGB scaled to [0, 1]; output `logits`: "
    "(N, 10), in the class order stored in the file's metadata. It includes input "
    "standardisation and, where the run used it, the mirror average, so it gives the "
    "app's figures.")


@st.cache_data(max_entries=2, show_spinner=False)
def onnx_file(path: str, weights_mtime: float) -> bytes:
    return export.onnx_bytes(load_run(path))


def draw_downloads() -> None:
    st.subheader("Download a run")
    runs = {str(run.path): run for run in trained_runs()}
    if not runs:
        st.caption("Runs with weights can be downloaded here.")
        return
    if st.session_state.get(EXPORT_RUN) not in runs:
        st.session_state.pop(EXPORT_RUN, None)
    path = st.selectbox("Run", list(runs), key=EXPORT_RUN, format_func=lambda p: runs[p].label)
    run = runs[path]
    matrix, classes = run.test_confusion(), run.classes
    has_history = (run.path / HISTORY_FILE).exists()
    title = f"Test confusion matrix: {run.name}"
    row = st.container(horizontal=True)
    row.download_button(
        "Weights (.safetensors)", data=lambda: export.weights_bytes(run),
        file_name=export.file_name(run, WEIGHTS_FILE), mime="application/octet-stream",
        on_click="ignore", icon=":material/download:", key="train.export.weights",
        help="The best epoch's weights as saved by the run; `config.json` in the run folder "
             "rebuilds the network.")
    row.download_button(
        "History (.csv)", data=lambda: export.history_bytes(run), disabled=not has_history,
        file_name=export.file_name(run, HISTORY_FILE), mime="text/csv", on_click="ignore",
        icon=":material/download:", key="train.export.history",
        help="One row per finished epoch: loss and accuracy on training and validation "
             "images, learning rate, seconds.")
    row.download_button(
        "Confusion matrix (.csv)", disabled=matrix is None,
        data=lambda: export.confusion_csv(matrix, classes),
        file_name=export.file_name(run, "confusion.csv"), mime="text/csv", on_click="ignore",
        icon=":material/download:", key="train.export.confusion_csv",
        help="Test images counted by true class (rows) and predicted class (columns).")
    row.download_button(
        "Confusion matrix (.png)", disabled=matrix is None,
        data=lambda: export.confusion_png(matrix, classes, title),
        file_name=export.file_name(run, "confusion.png"), mime="image/png", on_click="ignore",
        icon=":material/download:", key="train.export.confusion_png")
    onnx_key = f"{run.path}:{run.weights_mtime()}"
    missing = export.onnx_unavailable()
    if missing:
        st.info(missing, icon=":material/info:")
    elif st.session_state.get(EXPORT_ONNX) == onnx_key:
        row.download_button("ONNX model (.onnx)", data=onnx_file(str(run.path), run.weights_mtime()),
                            file_name=export.file_name(run, "model.onnx"),
                            mime="application/octet-stream", on_click="ignore",
                            icon=":material/download:", key="train.export.onnx_download", help=HELP_ONNX)
    elif row.button("Export to ONNX", icon=":material/conversion_path:", key="train.export.onnx",
                    help=HELP_ONNX):
        try:
            with st.spinner("Exporting to ONNX..."):
                onnx_file(str(run.path), run.weights_mtime())
        except export.ExportError as err:
            st.error(str(err), icon=":material/error:")
        else:
            st.session_state[EXPORT_ONNX] = onnx_key
            st.rerun()
    if matrix is None:
        st.caption("The confusion matrix is ready once the run has been tested (at its end).")


# --- the page -------------------------------------------------------------------------

st.title("Train")
st.caption("Train the network configured on the Model page. The run keeps going in the background "
           "when you leave this page; come back any time to watch it.")
preset, model_cfg, train_cfg = get_config()
draw_config(preset, model_cfg, train_cfg)
data = get_data()
shown, is_own = current_job()
if data is not None:
    draw_start_controls(data, preset, model_cfg, train_cfg, shown if is_own else None)
    shown, is_own = current_job()  # a run started just now
if shown is not None:
    st.subheader("This run" if is_own else "A run started in another session")
    draw_live_view(shown.id, poll=shown.active)
    draw_other_jobs(shown)
runs = list_runs()
draw_runs(runs)
if data is not None:
    draw_resume(runs, data, shown if is_own else None)
draw_downloads()
