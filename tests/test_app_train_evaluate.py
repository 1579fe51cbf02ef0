"""The Train and Evaluate pages, driven through the app's entrypoint with streamlit's AppTest."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import array, gallery_pictures
from PIL import Image
from streamlit.testing.v1 import AppTest

from cifar_core.bundled import bundled_runs
from cifar_core.config import get_preset
from cifar_core.data import load_cifar10
from cifar_core.pipeline import train_run

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")

# Slow: each test trains a run through the app.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_jobs_left_running")]


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """The plotly charts on the page, by their key, as figure dicts."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def wait_until(at: AppTest, done, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception, [e.message for e in at.exception]
        if done(at):
            return
        time.sleep(0.2)
    raise AssertionError("page never reached the expected state: "
                         f"{[s.value for s in at.success + at.warning + at.error + at.info]}")


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def start_run(at: AppTest, images: int, epochs: int) -> None:
    at.number_input(key="train.subset").set_value(images)
    at.number_input(key="train.epochs").set_value(epochs)
    at.button(key="train.start").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]




def test_a_device_this_machine_lacks_fails_the_run_and_leaves_nothing(
        cifar_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = open_page("app_pages/model.py")
    at.selectbox(key="model.device").set_value("cuda")
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    start_run(at, images=200, epochs=1)
    wait_until(at, lambda a: bool(a.error))
    assert "failed: device 'cuda' requested but no CUDA GPU is available" in at.error[0].value
    captions = " ".join(c.value for c in at.caption)
    assert "No runs yet" in captions, "no run folder left behind"
    assert "curves appear" not in captions, "a failed run has no curves to come"


def test_tiny_run_trains_to_completion_then_evaluates(cifar_env: Path) -> None:
    at = open_page("app_pages/train.py")
    assert "**baseline** · 167,818 parameters" in at.markdown[0].value
    assert "No runs yet" in " ".join(c.value for c in at.caption)

    start_run(at, images=200, epochs=2)
    wait_until(at, lambda a: any("finished" in s.value for s in a.success))

    assert "on 200 images finished after 2 epochs" in at.success[0].value
    assert metric(at, "Test accuracy").endswith("%")
    assert metric(at, "Val accuracy").endswith("%")
    curves = figures(at)
    loss = curves["train.curve.loss"]
    assert [trace["name"] for trace in loss["data"]] == ["train", "validation"]
    assert [array(trace["x"]).tolist() for trace in loss["data"]] == [[1, 2], [1, 2]]
    val_acc = array(curves["train.curve.accuracy"]["data"][1]["y"])
    assert len(val_acc) == 2 and ((0 <= val_acc) & (val_acc <= 1)).all()
    table = at.dataframe[0].value
    assert list(table["status"]) == ["finished"] and list(table["preset"]) == ["baseline"]
    assert list(table["images"]) == ["200"] and list(table["epochs"]) == [2]

    # The run this session just trained is preselected on the Evaluate page.
    at.switch_page("app_pages/evaluate.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert Path(at.selectbox(key="evaluate.run").value).name == table["run"][0]
    heatmap = figures(at)["evaluate.confusion"]["data"][0]
    assert heatmap["type"] == "heatmap"
    counts = array(heatmap["z"])
    assert counts.shape == (10, 10)
    assert counts.sum() == 100, "every test image is counted once"
    accuracy = float(metric(at, "Test accuracy").rstrip("%")) / 100
    assert accuracy == pytest.approx(np.trace(counts) / counts.sum(), abs=0.0005)


def test_stop_button_stops_the_live_run(cifar_env: Path) -> None:
    at = open_page("app_pages/train.py")
    start_run(at, images=0, epochs=200)
    wait_until(at, lambda a: any(b.key.startswith("train.stop.") for b in a.button)
               and "batch" in (a.get("progress")[0].proto.text if a.get("progress") else ""))
    assert any(m.label == "Patience" for m in at.metric)
    assert at.button(key="train.start").disabled, "one run at a time per session"
    next(b for b in at.button if b.key.startswith("train.stop.")).click()
    at.run()
    wait_until(at, lambda a: any("was stopped" in s.value for s in a.success))
    assert list(at.dataframe[0].value["status"]) == ["stopped"]


@pytest.fixture()
def trained_run(cifar_env: Path, tmp_path: Path) -> Path:
    preset = get_preset("baseline")
    data = load_cifar10(cifar_env, download=False)
    run_dir = tmp_path / "runs" / "20260101-000000-baseline"
    train_run(preset.model, replace(preset.train, epochs=1), data, run_dir, preset="baseline")
    return run_dir


def test_evaluate_page_normalises_switches_split_and_filters_mistakes(trained_run: Path) -> None:
    at = open_page("app_pages/evaluate.py")
    # It opens on the most accurate finished model (a bundled one, against a one-epoch run).
    top = max(bundled_runs(), key=lambda run: run.accuracy)
    assert at.selectbox(key="evaluate.run").value == str(top.path)
    at.selectbox(key="evaluate.run").set_value(str(trained_run)).run()

    at.toggle(key="evaluate.normalize").set_value(True).run()
    shares = array(figures(at)["evaluate.confusion"]["data"][0]["z"])
    rows = shares.sum(axis=1)
    assert np.allclose(rows[rows > 0], 1.0)

    at.toggle(key="evaluate.normalize").set_value(False)
    at.radio(key="evaluate.split").set_value("val").run()
    assert not at.exception
    assert any(m.label == "Validation accuracy" for m in at.metric)
    counts_on = array(figures(at)["evaluate.confusion"]["data"][0]["z"])
    assert counts_on.shape == (10, 10) and counts_on.sum() == 100

    # Under the matrix one section is drawn at a time, the gallery of mistakes first.
    assert len(gallery_pictures(at)) == 24
    assert not at.dataframe and "evaluate.per_class_bars" not in figures(at)
    at.session_state["evaluate.section"] = "Per class"
    at.run()
    assert not at.get("image")
    report = at.dataframe[0].value
    assert list(report.columns) == ["class", "precision", "recall", "f1", "support"]
    assert report["support"].sum() == 100
    bars = figures(at)["evaluate.per_class_bars"]["data"]
    assert [trace["name"] for trace in bars] == ["precision", "recall", "f1"]

    # The gallery, filtered to the true class with the most mistakes, shows exactly those.
    at.session_state["evaluate.section"] = "Most confident mistakes"
    at.run()
    wrong = counts_on.sum(axis=1) - np.diag(counts_on)
    worst = int(np.argmax(wrong))
    assert wrong[worst] > 0, "a network trained for one epoch makes mistakes"
    name = report["class"][worst]
    at.selectbox(key="evaluate.true").set_value(name).run()
    gallery = [picture.caption for picture in gallery_pictures(at)]
    assert len(gallery) == min(24, wrong[worst])
    assert all(caption.startswith(f"{name} → ") for caption in gallery)


def test_a_second_visitor_gets_the_gallery_pictures_without_encoding_them(
        trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def gallery() -> list[str]:
        at = open_page("app_pages/evaluate.py")
        at.selectbox(key="evaluate.run").set_value(str(trained_run)).run()
        assert not at.exception, [e.message for e in at.exception]
        return [picture.url for picture in gallery_pictures(at)]

    first = gallery()
    encoded = []
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save",
                        lambda self, *args, **kwargs: encoded.append(1) or save(self, *args, **kwargs))
    assert gallery() == first and len(first) >= 8  # the same files, served from memory
    assert not encoded


def test_evaluate_page_without_runs_points_to_training(cifar_env: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import app_state

    monkeypatch.setattr(app_state, "bundled_runs", list)  # as if models/ were still empty
    at = open_page("app_pages/evaluate.py")
    assert "No trained networks yet" in at.info[0].value
    assert not at.get("plotly_chart")
