"""The Dataset, Model and Predict pages, driven through the app's entrypoint with streamlit's AppTest."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from conftest import CLASSES, make_archive, write_cifar
from PIL import Image
from streamlit.testing.v1 import AppTest

import app_content
import app_state
from cifar_core.config import LIMITS, PRESETS, ModelConfig, TrainConfig
from cifar_core.data import load_cifar10
from cifar_core.inference import MAX_FILE_BYTES, predict_files
from cifar_core.model import build_model, count_parameters
from cifar_core.pipeline import train_run
from cifar_core.runs import load_run

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def figures(at: AppTest) -> dict[str, dict]:
    """The plotly charts on the page, by their key, as figure dicts."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def pictures(at: AppTest) -> list:
    """The page's images other than the grids of feature maps (captioned 'convN: ...')."""
    return [image for image in at.image if not image.proto.imgs[0].caption.startswith("conv")]


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def no_bundled_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pages see only the runs a test makes, whatever models/ holds."""
    monkeypatch.setattr("cifar_core.bundled.MODELS_DIR", tmp_path / "no-bundled-models")


@pytest.fixture(scope="module")
def trained_runs_dir(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding one tiny finished run (one epoch of the baseline on the tiny data)."""
    root = tmp_path_factory.mktemp("runs")
    data = load_cifar10(cifar_root, download=False)
    train_run(ModelConfig(), TrainConfig(epochs=1, augmentation="none", early_stopping=False,
                                         precision="fp32", device="cpu"),
              data, root / "tiny-baseline", preset="baseline")
    return root


# --- Dataset -----------------------------------------------------------------------------

def open_section(at: AppTest, name: str) -> AppTest:
    """Open one of the Dataset page's tabs (only the open one is drawn)."""
    at.session_state["dataset.section"] = name
    at.run()
    assert_ok(at)
    return at


def test_dataset_page_shows_the_classes_counts_and_images(cifar_env: Path) -> None:
    at = open_page()
    assert metric(at, "Classes") == "10"
    assert metric(at, "Training images") == "400"
    assert metric(at, "Test images") == "100"
    assert all(name in texts(at) for name in CLASSES)

    # It opens on one row of pictures per class, and only the open tab is drawn: no chart,
    # so a visitor's browser need not load the charting library to see the landing page.
    assert len(at.image) == 10 and not at.get("plotly_chart")
    counts = figures(open_section(at, "Classes"))["dataset.class_counts"]
    assert counts["layout"]["title"]["text"] == "Images per class"
    assert [trace["name"] for trace in counts["data"]] == ["train", "validation", "test"]
    assert all(list(trace["x"]) == CLASSES for trace in counts["data"])
    assert not at.image and "dataset.histograms" not in figures(at)
    # The augmentation preview; the channel-order comparison.
    assert len(open_section(at, "Augmentation").image) == 2 * 5
    assert len(open_section(at, "Channel-order mistake").image) == 2
    # Sent as PNG: st.image's default for arrays is a quality-100 JPEG, several times larger.
    assert all(image.proto.imgs[0].url.endswith(".png") for image in at.image)
    assert "dataset.histograms" in figures(open_section(at, "Pixel statistics"))

    stats = at.dataframe[0].value
    assert list(stats["channel"]) == ["red", "green", "blue"]
    assert ((stats["mean"] > 0) & (stats["mean"] < 1)).all()


def test_dataset_page_reshuffles_and_rerolls(cifar_env: Path) -> None:
    at = open_section(open_page(), "Images")
    before = [image.proto.imgs[0].url for image in at.image]
    at.button(key="dataset.reshuffle").click().run()
    assert_ok(at)
    after = [image.proto.imgs[0].url for image in at.image]
    assert at.session_state["dataset.grid_seed"] == 1
    assert after != before and len(after) == len(before) == 10  # new pictures in the class grid
    open_section(at, "Augmentation")
    shown = [image.proto.imgs[0].url for image in at.image]
    at.button(key="dataset.reroll").click().run()
    assert_ok(at)
    rerolled = [image.proto.imgs[0].url for image in at.image]
    assert at.session_state["dataset.aug_seed"] == 1
    assert rerolled != shown
    at.radio(key="dataset.aug_kind").set_value("crop_flip").run()
    assert_ok(at)
    assert "pad the image by 4 pixels" in texts(at)
    assert len(at.image) == len(shown)


def test_dataset_page_installs_an_uploaded_archive(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data"
    monkeypatch.setenv("CIFAR10_DIR", str(target))
    archive = make_archive(write_cifar(tmp_path / "source", per_batch=20),
                           tmp_path / "cifar-10-python.tar.gz").read_bytes()
    at = open_page()
    assert "No usable CIFAR-10 yet" in at.warning[0].value
    assert at.button(key="dataset.download")

    at.file_uploader(key="dataset.upload").set_value(
        ("cifar-10-python.tar.gz", b"\x1f\x8b not really gzip", "application/gzip")).run()
    at.button(key="dataset.install").click().run()
    assert_ok(at)
    assert "not installed" in at.error[0].value
    assert not (target / "cifar-10-batches-py").exists()

    at.file_uploader(key="dataset.upload").set_value(
        ("cifar-10-python.tar.gz", archive, "application/gzip")).run()
    at.button(key="dataset.install").click().run()
    assert_ok(at)
    assert (target / "cifar-10-batches-py" / "test_batch").is_file()
    assert "installed" in at.success[0].value
    assert metric(at, "Classes") == "10"
    assert metric(at, "Training images") == "80"


# --- Model -------------------------------------------------------------------------------

def test_model_page_counts_parameters_and_follows_the_widgets(cifar_env: Path) -> None:
    at = open_page("app_pages/model.py")
    assert metric(at, "Total params") == "167,818"
    assert len(at.dataframe[0].value) == 13
    # One view of the network at a time: the summary and the diagram are built when opened.
    assert not at.code and not at.get("graphviz_chart")
    at.session_state["model.view"] = "Keras-style summary"
    at.run()
    assert "Total params: 167,818" in at.code[0].value and not at.dataframe
    at.session_state["model.view"] = "Diagram"
    at.run()
    assert "conv1" in at.get("graphviz_chart")[0].proto.spec
    at.session_state["model.view"] = "Layer table"

    at.toggle(key="model.batch_norm").set_value(True).run()
    assert_ok(at)
    with_bn = count_parameters(build_model(ModelConfig(batch_norm=True)))
    assert with_bn != 167_818
    assert metric(at, "Total params") == f"{with_bn:,}"
    assert at.session_state["config"][1].batch_norm is True
    at.number_input(key="model.bn_momentum").set_value(0.4).run()
    assert at.session_state["config"][1].bn_momentum == 0.4

    # The configuration is per session and survives a visit to another page.
    at.switch_page("app_pages/dataset.py").run()
    at.switch_page("app_pages/model.py").run()
    assert_ok(at)
    assert at.toggle(key="model.batch_norm").value is True
    assert metric(at, "Total params") == f"{with_bn:,}"


def test_model_page_loads_presets_and_reports_bad_combinations(cifar_env: Path) -> None:
    at = open_page("app_pages/model.py")
    at.selectbox(key="model.preset").set_value("fast").run()
    assert_ok(at)
    fast = PRESETS["fast"]
    assert metric(at, "Total params") == f"{count_parameters(build_model(fast.model)) / 1e6:.2f} M"
    assert at.radio(key="model.head").value == "global_max"
    assert at.session_state["config"][0] == "fast"
    assert at.session_state["config"][2].lr == fast.train.lr
    assert at.session_state["config"][1] == fast.model  # every field, not just the count

    at.selectbox(key="model.preset").set_value("baseline").run()
    at.slider(key="model.blocks").set_value(6).run()  # valid padding shrinks 32 pixels to nothing
    assert_ok(at)
    assert "shrinks to nothing" in at.error[0].value
    assert not at.metric  # no layer table for a network that cannot be built
    assert len(at.session_state["config"][1].conv_filters) == 3  # the last valid one is kept


def limit_name(widget_key: str) -> str:
    """The LIMITS entry a Model page widget offers: its key without the prefix and layer number."""
    name = widget_key.removeprefix("model.").rstrip("0123456789")
    return "dropout" if name.endswith("_dropout") else name


def test_model_page_widgets_offer_the_limits_config_declares(cifar_env: Path) -> None:
    at = open_page("app_pages/model.py")
    at.slider(key="model.dense_layers").set_value(4).run()  # every kind of layer widget drawn
    widgets = [w for w in [*at.slider, *at.number_input] if w.key and w.key.startswith("model.")]
    offered = {}
    for widget in widgets:
        offered.setdefault(limit_name(widget.key), set()).add(
            (widget.proto.min, widget.proto.max, widget.proto.step))
    for name, ranges in offered.items():
        limit = LIMITS[name]
        assert ranges == {(*limit.widget_range, limit.step or 1)}, name
    assert set(offered) == set(LIMITS) - {"batch_size"}
    batch_sizes = at.select_slider(key="model.batch_size").options
    assert all(int(size) in LIMITS["batch_size"] for size in batch_sizes)
    # The help beside each widget is its setting's text from content/.
    assert at.slider(key="model.blocks").help == app_content.sections("model-settings")["blocks"]


@pytest.mark.slow
def test_model_page_shows_first_layer_filters_of_a_run(cifar_env: Path, trained_runs_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       no_bundled_models: None) -> None:
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(trained_runs_dir))
    at = open_page("app_pages/model.py")
    assert not at.image, "the filters are read when their panel is opened"
    at.session_state["model.filters_open"] = True
    at.run()
    assert "tiny-baseline" in at.selectbox(key="model.filters_run").value
    # 32 first-layer filters, 16 to a row.
    assert len(at.image) == 2
    assert any(c.value.startswith("The 32 filters of the first convolution, 3×3 weights") for c in at.caption)


# --- Predict -----------------------------------------------------------------------------

def test_predict_page_without_a_model_points_to_training(cifar_env: Path, no_bundled_models: None) -> None:
    at = open_page("app_pages/predict.py")
    assert "Train" in at.info[0].value
    assert not at.get("file_uploader")


@pytest.mark.slow
def test_predict_page_classifies_uploads_and_reports_bad_files(
        cifar_env: Path, trained_runs_dir: Path, monkeypatch: pytest.MonkeyPatch,
        no_bundled_models: None) -> None:
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(trained_runs_dir))
    at = open_page("app_pages/predict.py")
    # The browser refuses files over the decoder's limit before they reach the server.
    assert at.file_uploader(key="predict.files").proto.max_upload_size_mb == MAX_FILE_BYTES >> 20 == 20
    red, blue = png_bytes((220, 30, 30)), png_bytes((20, 40, 200), size=(30, 90))
    at.file_uploader(key="predict.files").set_value([
        ("red.png", red, "image/png"),
        ("broken.png", b"\x89PNG\r\n\x1a\n not a picture", "image/png"),
        ("blue.png", blue, "image/png")]).run()
    assert_ok(at)

    assert len(at.error) == 1 and "broken.png" in at.error[0].value
    run = load_run(trained_runs_dir / "tiny-baseline")
    expected = predict_files(run.load_model(), [("red.png", red), ("blue.png", blue)], tuple(CLASSES))
    headings = [m.value for m in at.markdown if m.value.startswith("#### Prediction:")]
    assert headings == [f"#### Prediction: {p.label} ({p.top(1)[0][1]:.0%})" for p in expected]
    charts = figures(at)
    top_k = {key for key in charts if key.startswith("predict.top_k.")}
    assert top_k == {"predict.top_k.0", "predict.top_k.2"}
    bars = charts["predict.top_k.0"]["data"][0]
    assert len(bars["y"]) == 5 and bars["y"][0] == expected[0].label
    # The 32x32 picture the model saw is shown, enlarged, next to each original (the feature
    # maps of the "where the model looked" section below are images too).
    assert len(pictures(at)) == 4


@pytest.mark.slow
def test_predict_page_random_test_images(cifar_env: Path, trained_runs_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         no_bundled_models: None) -> None:
    monkeypatch.setenv("CIFAR_RUNS_DIR", str(trained_runs_dir))
    at = open_page("app_pages/predict.py")
    at.radio(key="predict.mode").set_value("Random test images").run()
    at.slider(key="predict.n").set_value(8).run()
    assert_ok(at)
    summary = next(m.value for m in at.markdown if "correct**" in m.value)
    correct = int(summary.split("**")[1].split(" of ")[0])
    assert 0 <= correct <= 8 and " of 8 correct" in summary
    verdicts = [m.value for m in at.markdown if m.value.startswith((":green[", ":red["))]
    assert len(verdicts) == 8
    assert sum(v.startswith(":green[") for v in verdicts) == correct
    assert len(pictures(at)) == 8
    at.button(key="predict.shuffle").click().run()
    assert_ok(at)
    assert at.session_state["predict.seed"] == 1


def test_every_script_run_is_timed_on_the_server(cifar_env: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "timing.jsonl"
    monkeypatch.setenv("CIFAR_TIMING_LOG", str(log))
    with caplog.at_level("INFO", logger="cifar_lab.timing"):
        at = open_page("app_pages/model.py")
        at.switch_page("app_pages/experiments.py")
        at.run()
    assert_ok(at)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["page"] for r in records] == ["Dataset", "Model", "Experiments"]
    assert len({r["session"] for r in records}) == 1 and records[0]["session"]
    assert all(r["outcome"] == "ok" and 0 < r["seconds"] < 60 and r["cpu"] >= 0 for r in records)
    assert [r.getMessage().split(" session")[0] for r in caplog.records
            if r.name == "cifar_lab.timing"] == ["page Dataset", "page Model", "page Experiments"]


def test_a_fragment_rerun_on_its_own_is_timed_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "timing.jsonl"
    monkeypatch.setenv("CIFAR_TIMING_LOG", str(log))
    calls = []
    # What st.fragment runs, on a rerun of the fragment alone or within its page's run
    # (outside a running app, st.fragment itself draws nothing).
    draw = app_state.timed_fragment("Test: live view", lambda: calls.append(time.perf_counter()))

    class Page:
        title = "Test"
        run = staticmethod(draw)

    draw()  # a rerun of the fragment alone, as its run_every timer starts one
    app_state.run_page(Page())  # the fragment drawn within its page's run: part of that run
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["page"], r.get("fragment", False), r["outcome"]) for r in records] == [
        ("Test: live view", True, "ok"), ("Test", False, "ok")]
    assert len(calls) == 2
