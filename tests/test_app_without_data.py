"""A fresh copy of the app without CIFAR-10 on disk: what every page still does, the
download that starts by itself, and which model Evaluate and Predict open on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import plotly.graph_objects as go
import pytest
from conftest import make_archive, write_cifar
from streamlit.testing.v1 import AppTest
from test_app_pages import APP, assert_ok, figures, metric, open_page, png_bytes, texts

import app_state
from cifar_core.bundled import bundled_runs
from cifar_core.formatting import format_percent
from cifar_core.runs import MODELS_DIR

# The page default: the most accurate bundled model.
TOP = max(bundled_runs(), key=lambda run: run.accuracy)


@pytest.fixture()
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CIFAR10_DIR is an empty folder, runs go to a fresh one, and the download, if it
    starts, finds nothing (as offline)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CIFAR10_DIR", str(empty))
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CIFAR10_URL", (tmp_path / "offline.tar.gz").as_uri())
    return empty


def test_landing_page_offline_says_what_works_and_how_to_get_the_data(
        no_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAR_AUTO_DOWNLOAD", "1")
    at = open_page()
    app_state.downloader().wait(30)
    at.run()
    assert_ok(at)
    assert "No usable CIFAR-10 yet" in at.warning[0].value
    assert "download failed" in at.warning[0].value + " ".join(c.value for c in at.caption)
    text = texts(at)
    for page in ("**Model**", "**Predict**", "**Evaluate**", "**Experiments**"):
        assert page in text
    assert "cifar-10-python.tar.gz" in text  # where to get it and where to put it
    assert at.button(key="dataset.download")


def test_the_data_downloads_by_itself_once_for_everyone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data"
    archive = make_archive(write_cifar(tmp_path / "source", per_batch=20), tmp_path / "mirror.tar.gz")
    monkeypatch.setenv("CIFAR10_DIR", str(target))
    monkeypatch.setenv("CIFAR10_URL", archive.as_uri())
    monkeypatch.setenv("CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv("CIFAR_AUTO_DOWNLOAD", "1")
    first = AppTest.from_file(APP, default_timeout=60)
    first.run()
    assert_ok(first)
    fetch = app_state.downloader()
    second = open_page("app_pages/evaluate.py")  # another visitor, another page: the same download
    assert app_state.downloader() is fetch and not fetch.start()
    assert fetch.wait(30).state == "done"
    first.run()
    assert_ok(first)
    assert metric(first, "Test images") == "20"
    second.run()
    assert_ok(second)


def test_evaluate_draws_the_bundled_model_from_its_stored_results(no_data: Path) -> None:
    start = time.perf_counter()
    at = open_page("app_pages/evaluate.py")
    seconds = time.perf_counter() - start
    # The most accurate model, drawn from its stored predictions, without the images.
    assert at.selectbox(key="evaluate.run").value == str(TOP.path)
    assert metric(at, "Test accuracy") == format_percent(TOP.accuracy)
    assert metric(at, "Correct").endswith(" / 10,000")
    assert "evaluate.confusion" in figures(at)
    assert any("gallery of mistakes needs the CIFAR-10 images" in info.value for info in at.info)
    assert not at.get("image")
    assert seconds < 10, seconds  # in-process, with the app's imports; well under 1 s warm
    at.session_state["evaluate.section"] = "Per class"
    at.run()
    assert_ok(at)
    assert at.dataframe[0].value["support"].tolist() == [1000] * 10
    at.radio(key="evaluate.split").set_value("val").run()
    assert_ok(at)
    assert any("validation set needs the CIFAR-10 images" in info.value for info in at.info)


def test_every_visitor_gets_the_same_figures_built_once(no_data: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = figures(open_page("app_pages/evaluate.py"))
    built = []
    original = go.Figure.__init__
    monkeypatch.setattr(go.Figure, "__init__",
                        lambda self, *args, **kwargs: built.append(1) or original(self, *args, **kwargs))
    second = figures(open_page("app_pages/evaluate.py"))  # another visitor, the same model
    assert not built  # every figure came from the first visitor's
    assert second == first  # and no page changed a shared figure after drawing it
    assert len(second["evaluate.confusion"]["data"]) == 2  # the heatmap and its clickable cells


def test_predict_classifies_uploads_without_the_data(no_data: Path) -> None:
    at = open_page("app_pages/predict.py")
    assert at.selectbox(key="predict.run").value == str(TOP.path)
    red = ("red.png", png_bytes((220, 30, 30)), "image/png")
    at.file_uploader(key="predict.files").set_value([red]).run()
    assert_ok(at)
    assert any(m.value.startswith("#### Prediction:") for m in at.markdown)
    # Grad-CAM and the feature maps wait until their panel is opened.
    assert "predict.explain" not in figures(at)
    assert [image.proto.imgs[0].url.rsplit(".", 1)[-1] for image in at.image] == ["jpg", "png"]
    at.session_state["predict.explain_open"] = True
    at.session_state["predict.features_open"] = True
    at.run()
    assert_ok(at)
    assert "predict.explain" in figures(at)
    assert any(image.proto.imgs[0].caption.startswith("conv") for image in at.image)
    at.radio(key="predict.mode").set_value("Random test images").run()
    assert_ok(at)
    assert any("Random test images needs the CIFAR-10 images" in info.value for info in at.info)


def test_model_and_experiments_work_without_the_data(no_data: Path) -> None:
    assert open_page("app_pages/model.py").metric  # the parameter count and friends
    at = open_page("app_pages/experiments.py")
    assert at.success  # the shipped verdict


def copy_model(name: str, runs: Path, as_name: str, **metrics: object) -> Path:
    path = shutil.copytree(MODELS_DIR / name, runs / as_name)
    values = json.loads((path / "metrics.json").read_text())
    values.update(metrics)
    (path / "metrics.json").write_text(json.dumps(values))
    (path / "test_predictions.npz").unlink()
    return path


def test_a_weak_demo_run_or_one_still_training_is_not_the_default(no_data: Path,
                                                                  tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    copy_model("baseline", runs, "20991231-000000-demo", test_acc=0.30)
    copy_model("baseline", runs, "20991231-000001-training", status="running", test_acc=0.95,
               pid=os.getpid(), host=socket.gethostname())
    for page in ("predict", "evaluate"):
        at = open_page(f"app_pages/{page}.py")
        assert at.selectbox(key=f"{page}.run").value == str(TOP.path), page
    # A run without stored results and no data: Evaluate says what it needs.
    at.selectbox(key="evaluate.run").set_value(str(runs / "20991231-000000-demo")).run()
    assert_ok(at)
    assert any("needs the CIFAR-10 images" in info.value for info in at.info)
