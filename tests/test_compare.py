"""Confusion matrices through training, run comparison (cifar_core.compare), and the Evaluate page's views."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import array, gallery_pictures
from streamlit.testing.v1 import AppTest

from cifar_core.compare import config_diff, curves_frame, leaderboard
from cifar_core.config import ModelConfig, TrainConfig
from cifar_core.data import load_cifar10
from cifar_core.evaluation import evaluate
from cifar_core.formatting import format_setting as format_value
from cifar_core.pipeline import train_run
from cifar_core.record import EpochRecord, RunConfig, RunMetrics
from cifar_core.runs import Run, load_run

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
TINY = TrainConfig(epochs=3, augmentation="none", early_stopping=False, precision="fp32", device="cpu")


def make_run(name: str, model: ModelConfig | None = None, train: TrainConfig | None = None,
             preset: str | None = "baseline", subset: int | None = None,
             metrics: dict | None = None, history: list[EpochRecord] | None = None) -> Run:
    model, train = model or ModelConfig(), train or TrainConfig()
    config = RunConfig(model, train, preset, subset, created=f"2026-01-01T00:00:{len(name):02d}")
    return Run(Path("/nowhere") / name, config, history or [],
               RunMetrics.from_dict({"status": "finished", **(metrics or {})}))


@pytest.fixture(scope="module")
def runs_root(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs of three epochs: the baseline, and the baseline with batch norm and lr 3e-3."""
    root = tmp_path_factory.mktemp("compare-runs")
    data = load_cifar10(cifar_root, download=False)
    train_run(ModelConfig(), TINY, data, root / "a-baseline", preset="baseline")
    train_run(ModelConfig(batch_norm=True), replace(TINY, lr=3e-3), data, root / "b-bn", preset="baseline")
    return root


# --- the confusion matrix of every epoch ----------------------------------------------------

@pytest.mark.slow
def test_every_epoch_keeps_its_validation_matrix_and_the_best_one_matches_the_weights(
        runs_root: Path, cifar_root: Path) -> None:
    run = load_run(runs_root / "a-baseline")
    data = load_cifar10(cifar_root, download=False)
    matrices = run.val_confusions()
    assert matrices.shape == (3, 10, 10)
    assert (matrices.sum(axis=(1, 2)) == len(data.y_val)).all(), "each counts every validation image once"
    rows = matrices.sum(axis=2)
    assert (rows == np.bincount(data.y_val, minlength=10)).all(), "rows are the true classes"
    accuracy = np.trace(matrices, axis1=1, axis2=2) / len(data.y_val)
    assert accuracy == pytest.approx([row.val_acc for row in run.history], abs=1e-6)
    # The saved weights are the best epoch's, so a fresh evaluation gives that epoch's matrix.
    best = run.metrics.best_epoch
    fresh = evaluate(run.load_model(), data.x_val, data.y_val, data.classes, device="cpu")
    assert np.array_equal(fresh.confusion(), matrices[best - 1])


# --- config_diff, leaderboard, curves ---------------------------------------------------------

def test_config_diff_lists_exactly_the_settings_that_differ() -> None:
    a = make_run("a")
    b = make_run("b", ModelConfig(batch_norm=True), TrainConfig(lr=3e-3))
    diff = config_diff([a, b])
    assert list(diff.index) == ["model.batch_norm", "train.lr"]
    assert list(diff.columns) == ["a", "b"]
    assert diff.loc["model.batch_norm"].tolist() == [False, True]
    assert diff.loc["train.lr"].tolist() == [1e-3, 3e-3]

    c = make_run("c", ModelConfig(conv_filters=(16, 32, 64)), preset=None, subset=2000)
    diff = config_diff([a, b, c])
    assert list(diff.index) == ["model.conv_filters", "model.batch_norm", "train.lr", "preset", "subset"]
    assert diff.loc["model.conv_filters"].tolist() == [(32, 64, 128), (32, 64, 128), (16, 32, 64)]
    assert diff.loc["subset"].tolist() == [None, None, 2000]
    assert [format_value(v) for v in diff.loc["model.conv_filters"]][2] == "16, 32, 64"
    assert format_value(None) == "—" and format_value(True) == "yes" and format_value(()) == "(none)"


def test_config_diff_of_equal_or_single_runs_is_empty_and_ignores_the_start_time() -> None:
    assert config_diff([make_run("a"), make_run("abc")]).empty  # 'created' differs, not a setting
    single = config_diff([make_run("a")])
    assert single.empty and list(single.columns) == ["a"]
    # Two runs with one folder name (a bundled model and a run) get separate columns.
    assert list(config_diff([make_run("x"), make_run("x", train=TrainConfig(seed=1))]).columns) \
        == ["x", "x (2)"]


def test_leaderboard_sorts_by_validation_accuracy_with_unfinished_runs_last() -> None:
    runs = [
        make_run("slow", metrics={"val_acc": 0.61, "test_acc": 0.60, "epochs_run": 12,
                                  "images_per_second": 900.0, "train_seconds": 400.0}),
        make_run("fresh", metrics={"status": "stopped", "val_acc": None}),
        make_run("best", preset="quick", subset=2000,
                 metrics={"val_acc": 0.79, "test_acc": 0.78, "images_per_second": 3000.0,
                          "train_seconds": 60.5},
                 history=[EpochRecord.from_dict({"epoch": 1}), EpochRecord.from_dict({"epoch": 2})]),
    ]
    board = leaderboard(runs)
    assert list(board.columns) == ["run", "owner", "preset", "status", "val_acc", "test_acc", "epochs",
                                   "images", "images_per_second", "train_seconds"]
    assert list(board["run"]) == ["best", "slow", "fresh"]
    assert list(board["preset"]) == ["quick", "baseline", "baseline"]
    assert list(board["status"]) == ["finished", "finished", "stopped"]
    assert list(board["epochs"]) == [2, 12, 0], "epochs_run, else the history's length"
    assert board["images"][0] == 2000 and math.isnan(board["images"][1])
    assert math.isnan(board["val_acc"][2]) and board["train_seconds"][0] == 60.5


@pytest.mark.slow
def test_curves_frame_has_one_row_per_run_and_epoch(runs_root: Path) -> None:
    runs = [load_run(runs_root / "a-baseline"), load_run(runs_root / "b-bn")]
    curves = curves_frame(runs)
    assert list(curves.columns) == ["run", "epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    epochs = curves.groupby("run")["epoch"].apply(list).to_dict()
    assert epochs == {"a-baseline": [1, 2, 3], "b-bn": [1, 2, 3]}


# --- the Evaluate page -------------------------------------------------------------------------

def figures(at: AppTest) -> dict[str, dict]:
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


@pytest.fixture()
def evaluate_page(runs_root: Path, cifar_env: Path, monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path) -> AppTest:
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(runs_root))
    monkeypatch.setattr("app_state.bundled_runs", list)  # only the runs made here
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/evaluate.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.mark.slow
def test_evaluate_page_epoch_slider_shows_each_epochs_matrix_and_its_change(
        evaluate_page: AppTest, runs_root: Path) -> None:
    at = evaluate_page
    at.selectbox(key="evaluate.run").set_value(str(runs_root / "a-baseline"))
    assert "evaluate.epoch_confusion" not in figures(at), "drawn only when its section is open"
    at.session_state["evaluate.section"] = "Through training"
    at.run()
    matrices = load_run(runs_root / "a-baseline").val_confusions()
    slider = at.slider(key="evaluate.epoch")
    assert (slider.min, slider.max, slider.value) == (1, 3, 3)
    shown = figures(at)
    assert np.array_equal(array(shown["evaluate.epoch_confusion"]["data"][0]["z"]), matrices[2])
    change = shown["evaluate.epoch_change"]["data"][0]
    assert np.array_equal(array(change["customdata"]), matrices[2] - matrices[1])
    accuracy_line = shown["evaluate.epoch_accuracy"]["data"][-1]
    assert accuracy_line["name"] == "all classes"
    assert array(accuracy_line["y"]) == pytest.approx(np.trace(matrices, axis1=1, axis2=2) / 100)

    at.slider(key="evaluate.epoch").set_value(1).run()
    assert not at.exception, [e.message for e in at.exception]
    shown = figures(at)
    assert np.array_equal(array(shown["evaluate.epoch_confusion"]["data"][0]["z"]), matrices[0])
    assert "evaluate.epoch_change" not in shown, "nothing before epoch 1"
    label = "Validation accuracy after epoch 1"
    assert next(m.value for m in at.metric if m.label == label) == f"{np.trace(matrices[0]) / 100:.1%}"


@pytest.mark.slow
def test_evaluate_page_shows_the_images_of_a_chosen_cell(evaluate_page: AppTest) -> None:
    at = evaluate_page
    # The main matrix's cells can be clicked: an invisible marker per cell on top of the heatmap.
    matrix = figures(at)["evaluate.confusion"]
    assert [t["type"] for t in matrix["data"]] == ["heatmap", "scatter"]
    assert len(matrix["data"][1]["x"]) == 100
    counts = array(matrix["data"][0]["z"])
    diagonal = int(np.argmax(np.diag(counts)))
    name = at.selectbox(key="evaluate.true").options[diagonal + 1]
    at.selectbox(key="evaluate.true").set_value(name)
    at.selectbox(key="evaluate.predicted").set_value(name).run()
    assert not at.exception, [e.message for e in at.exception]
    captions = [picture.caption for picture in gallery_pictures(at)]
    assert len(captions) == min(24, counts[diagonal, diagonal]) > 0
    assert all(c.startswith(f"{name} → {name} (") for c in captions)
    confidences = [int(c.rsplit("(", 1)[1].rstrip("%)")) for c in captions]
    assert confidences == sorted(confidences, reverse=True), "most confident first"


@pytest.mark.slow
def test_evaluate_page_compares_runs(evaluate_page: AppTest) -> None:
    at = evaluate_page
    at.session_state["evaluate.view"] = "Compare runs"  # only the open tab is drawn
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    chosen = at.multiselect(key="evaluate.compare").value
    assert sorted(Path(p).name for p in chosen) == ["a-baseline", "b-bn"]
    shown = figures(at)
    assert sorted(t["name"] for t in shown["evaluate.compare_acc"]["data"]) == ["a-baseline", "b-bn"]
    assert sorted(t["name"] for t in shown["evaluate.compare_loss"]["data"]) == ["a-baseline", "b-bn"]
    # Read-only tables carry no key in AppTest: tell them apart by their columns.
    tables = [frame.value for frame in at.dataframe]
    diff = next(t for t in tables if "setting" in t.columns)
    assert list(diff["setting"]) == ["model.batch_norm", "train.lr"]
    assert sorted(diff.columns[1:]) == ["a-baseline", "b-bn"]
    assert diff.set_index("setting").loc["model.batch_norm"].tolist() in (["no", "yes"], ["yes", "no"])
    board = tables[-1]
    assert sorted(board["run"]) == ["a-baseline", "b-bn"]
    assert list(board["val_acc"]) == sorted(board["val_acc"], reverse=True)

    one = [p for p in at.multiselect(key="evaluate.compare").value if p.endswith("b-bn")]
    at.multiselect(key="evaluate.compare").set_value(one).run()
    assert not at.exception, [e.message for e in at.exception]
    assert not any("setting" in frame.value.columns for frame in at.dataframe)
    assert any("second run" in c.value for c in at.caption)
