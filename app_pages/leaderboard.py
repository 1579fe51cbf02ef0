"""Leaderboard: every run on this server, whose it is, what it changed, how far it got.

Built for a projector: large type, one row per run, refreshed every few seconds while runs
train (from the job registry's snapshots). The sort and filter are in the URL (app_views), so
a teacher can hand out a link that opens this same view. The table is computed once per refresh for
every viewer (``board``), not once per viewer.
"""

from __future__ import annotations

import html
import math
import time

import pandas as pd
import streamlit as st

import app_state
import app_views
from cifar_core.compare import run_table
from cifar_core.config import PRESETS, changes_from_preset
from cifar_core.formatting import MISSING, format_images, format_percent, format_seconds
from cifar_core.jobs import JobSnapshot, get_registry
from cifar_core.runs import Run, list_runs

REFRESH_SECONDS = 3.0
SORTS = {"accuracy": "Best accuracy first", "newest": "Newest first", "name": "By name"}
ALL = "all"
BOARD_CSS = """<style>
table.board {width: 100%; border-collapse: collapse; font-size: 1.35rem;}
table.board th {text-align: left; border-bottom: 2px solid #888; padding: 0.3rem 0.6rem;}
table.board td {border-bottom: 1px solid #ddd; padding: 0.35rem 0.6rem; vertical-align: top;}
table.board td.num {text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;}
table.board td.changes {font-size: 1.0rem; color: #555;}
table.board tr.active td {background: rgba(255, 200, 0, 0.12);}
</style>"""


def changes(run: Run) -> str:
    """What the run changed from its preset, its training images included, in a few words."""
    if run.preset not in PRESETS:
        return "own settings"
    diff = changes_from_preset(run.preset, run.model_config, run.train_config)
    planned = PRESETS[run.preset].train_images
    if run.subset != planned:
        diff.append(f"images: {format_images(planned)} → {format_images(run.subset)}")
    return "; ".join(diff) if diff else "preset as it is"


def progress(snap: JobSnapshot) -> str:
    if snap.status == "queued":
        return f"waiting (#{snap.queue_position})"
    if not snap.epoch:
        return "starting"
    return f"epoch {snap.epoch}/{snap.epochs} · {format_percent(snap.progress, 0)}"


@st.cache_data(ttl=REFRESH_SECONDS - 0.5, show_spinner=False)
def board() -> pd.DataFrame:
    """Every run in the runs folder and every queued job, with live progress where a job trains it.

    Columns: name, preset, changes, val_acc, test_acc (only once finished), status, seconds
    (training time, or time so far), created.
    """
    runs = list_runs()
    snaps = {str(s.run_dir): s for s in get_registry().snapshots() if s.run_dir is not None}
    table = run_table(runs)
    now = time.time()
    rows = []
    for run, row in zip(runs, table.itertuples(index=False), strict=True):
        snap = snaps.get(str(run.path))
        live = snap is not None and snap.active
        rows.append({
            "name": run.owner or "", "preset": run.preset, "changes": changes(run),
            "val_acc": row.val_acc, "test_acc": row.test_acc if row.status == "finished" else math.nan,
            "status": progress(snap) if live else row.status,
            "seconds": now - snap.started if live and snap.started else row.train_seconds,
            "created": row.created, "active": live})
    for snap in get_registry().active():
        if snap.status == "queued":
            rows.append({"name": snap.owner or "", "preset": snap.preset or "custom", "changes": "",
                         "val_acc": math.nan, "test_acc": math.nan, "status": progress(snap),
                         "seconds": math.nan, "created": pd.Timestamp.fromtimestamp(snap.submitted),
                         "active": True})
    return pd.DataFrame(rows, columns=["name", "preset", "changes", "val_acc", "test_acc", "status",
                                       "seconds", "created", "active"])


def shown(frame: pd.DataFrame, sort: str, preset: str, finished_only: bool) -> pd.DataFrame:
    if preset != ALL:
        frame = frame[frame["preset"] == preset]
    if finished_only:
        frame = frame[frame["status"] == "finished"]
    if sort == "accuracy":
        frame = frame.assign(best=frame["test_acc"].fillna(frame["val_acc"]))
        frame = frame.sort_values("best", ascending=False, na_position="last", kind="stable")
    elif sort == "newest":
        frame = frame.sort_values("created", ascending=False, na_position="last", kind="stable")
    else:  # runs without a name last
        frame = frame.sort_values("name", key=lambda names: names.str.lower().replace("", "\uffff"),
                                  kind="stable")
    return frame.reset_index(drop=True)


def board_html(frame: pd.DataFrame) -> str:
    """The table in large type; every value escaped."""
    head = "".join(f"<th>{title}</th>" for title in
                   ("#", "Name", "Preset", "Changed", "Val acc", "Test acc", "Status", "Time"))
    rows = []
    for rank, row in enumerate(frame.itertuples(index=False), start=1):
        cells = [(str(rank), "num"), (row.name or MISSING, ""), (row.preset, ""),
                 (row.changes or MISSING, "changes"),
                 (format_percent(_value(row.val_acc)), "num"), (format_percent(_value(row.test_acc)), "num"),
                 (row.status, ""), (format_seconds(_value(row.seconds)), "num")]
        tds = "".join(f'<td class="{css}">{html.escape(text)}</td>' for text, css in cells)
        rows.append(f'<tr class="{"active" if row.active else ""}">{tds}</tr>')
    return (f'{BOARD_CSS}<table class="board"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _value(number: float) -> float | None:
    return None if number is None or (isinstance(number, float) and math.isnan(number)) else number


def draw_board(sort: str, preset: str, finished_only: bool) -> None:
    @app_state.fragment("Leaderboard: table", run_every=REFRESH_SECONDS)
    def live() -> None:
        frame = shown(board(), sort, preset, finished_only)
        if frame.empty:
            st.info("No runs yet. Start one on the Train page; it appears here at once.",
                    icon=":material/leaderboard:")
            return
        training = int(frame["active"].sum())
        st.caption(f"{len(frame)} runs · {training} training or waiting · refreshed every "
                   f"{REFRESH_SECONDS:.0f} s. Test accuracy appears when a run has finished; "
                   "until then the validation accuracy of its best epoch so far.")
        st.markdown(board_html(frame), unsafe_allow_html=True)

    live()


# --- the page -------------------------------------------------------------------------

st.title("Leaderboard")
DEFAULTS = {"leaderboard.sort": "accuracy", "leaderboard.preset": ALL, "leaderboard.finished": False}
for key, default in DEFAULTS.items():
    st.session_state.setdefault(key, default)
app_views.sync("leaderboard", sort=app_views.choice("leaderboard.sort", SORTS),
               preset=app_views.choice("leaderboard.preset", [ALL, *PRESETS]),
               finished=app_views.named("leaderboard.finished", {"yes": True, "no": False}))
left, middle, right = st.columns([3, 2, 1], vertical_alignment="bottom")
left.segmented_control("Sort", list(SORTS), format_func=SORTS.get, key="leaderboard.sort", required=True)
middle.selectbox("Preset", [ALL, *PRESETS], key="leaderboard.preset",
                 format_func=lambda p: "every preset" if p == ALL else p)
right.toggle("Finished only", key="leaderboard.finished")
draw_board(st.session_state["leaderboard.sort"], st.session_state["leaderboard.preset"],
           st.session_state["leaderboard.finished"])
