"""Exports: the run's files as is, the confusion matrix as CSV and PNG, the network as ONNX.

The ONNX tests run the exported file with onnxruntime and compare it with the app's own
PyTorch predictions; they are skipped (with the reason) where onnxruntime is missing.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_images
from PIL import Image
from streamlit.testing.v1 import AppTest

from cifar_core import export
from cifar_core.config import PRESETS, get_preset
from cifar_core.data import DEFAULT_CLASSES, load_cifar10
from cifar_core.export import ExportError
from cifar_core.model import build_model, predict_logits
from cifar_core.pipeline import train_run
from cifar_core.record import HISTORY_FILE, WEIGHTS_FILE, RunConfig
from cifar_core.runs import RunWriter, load_run

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
TOLERANCE = 1e-4  # largest difference allowed between ONNX and PyTorch logits


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def confusion(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 40, (10, 10))
    matrix[np.arange(10), np.arange(10)] = rng.integers(300, 900, 10)
    return matrix


def random_run(path: Path, preset: str, seed: int = 0, metrics: dict | None = None):
    """A run folder of ``preset`` with random weights and batch-norm statistics that matter."""
    p = get_preset(preset)
    torch.manual_seed(seed)
    model = build_model(p.model)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    writer = RunWriter(path, RunConfig(p.model, p.train, preset=preset))
    writer.save_weights(model.state_dict())
    writer.finish("finished", **(metrics or {}))
    return load_run(path)


def images_uint8(n: int, seed: int = 3) -> np.ndarray:
    rows, _ = synthetic_images(n, seed)
    return np.ascontiguousarray(rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))


def as_onnx_input(images: np.ndarray) -> np.ndarray:
    """What the ONNX file expects: float32 (N, 3, 32, 32) in [0, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255


def session(data: bytes):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX parity not checked")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


# --- the run's own files --------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory):
    data = load_cifar10(cifar_root, download=False)
    path = tmp_path_factory.mktemp("runs") / "tiny"
    preset = get_preset("quick")
    train_run(preset.model, replace(preset.train, epochs=1), data, path, preset="quick")
    return load_run(path)


@pytest.mark.slow
def test_weights_and_history_are_the_run_files_byte_for_byte(trained) -> None:
    assert export.weights_bytes(trained) == (trained.path / WEIGHTS_FILE).read_bytes()
    assert export.history_bytes(trained) == (trained.path / HISTORY_FILE).read_bytes()
    assert export.file_name(trained, "confusion.png") == f"{trained.name}-confusion.png"


@pytest.mark.slow
def test_missing_files_are_an_export_error(trained, tmp_path: Path) -> None:
    run = random_run(tmp_path / "r", "baseline")
    with pytest.raises(ExportError, match="no history.csv yet"):
        export.history_bytes(run)
    (run.path / WEIGHTS_FILE).unlink()
    with pytest.raises(ExportError, match="no weights yet"):
        export.onnx_bytes(run)


# --- confusion matrix ----------------------------------------------------------------

@pytest.mark.slow
def test_confusion_comes_from_metrics_with_the_run_classes(trained) -> None:
    matrix = trained.test_confusion()
    assert matrix.tolist() == trained.metrics.confusion_matrix
    assert matrix.sum() == 100  # the fixture's test images, each counted once
    assert trained.classes == trained.metrics.classes


@pytest.mark.parametrize("stored", [None, [[1, 2], [3, 4]], "junk", [[-1] * 10] * 10])
def test_no_or_malformed_confusion_gives_none(tmp_path: Path, stored: object) -> None:
    run = random_run(tmp_path / "r", "baseline", metrics={"confusion_matrix": stored})
    assert run.test_confusion() is None
    assert run.classes == DEFAULT_CLASSES


def test_confusion_csv_has_class_names_as_header_and_index() -> None:
    matrix = confusion()
    rows = list(csv.reader(io.StringIO(export.confusion_csv(matrix, DEFAULT_CLASSES).decode())))
    assert rows[0] == ["true \\ predicted", *DEFAULT_CLASSES]
    assert [r[0] for r in rows[1:]] == list(DEFAULT_CLASSES)
    assert np.array([[int(v) for v in r[1:]] for r in rows[1:]]).tolist() == matrix.tolist()


def test_confusion_png_is_a_shaded_heatmap() -> None:
    matrix = confusion()
    data = export.confusion_png(matrix, DEFAULT_CLASSES, "Test confusion matrix")
    assert data == export.confusion_png(matrix, DEFAULT_CLASSES, "Test confusion matrix")  # deterministic
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    assert 1000 < image.width < 2000 and 1000 < image.height < 2000
    # Find the cells: the matrix is the block of non-white pixels right of the labels.
    pixels = np.asarray(image).astype(int)
    dark = pixels.sum(axis=2)
    # The diagonal's cells (about 90% of their row) are darker than the off-diagonal ones.
    grid = _cell_centres(pixels)
    diagonal = [dark[y, x] for (y, x) in (grid[i][i] for i in range(10))]
    off = [dark[grid[i][j]] for i in range(10) for j in range(10) if i != j]
    assert max(diagonal) < min(off)


def _cell_centres(pixels: np.ndarray) -> list[list[tuple[int, int]]]:
    """Centres of the 10x10 cells, found from the light-grey grid lines."""
    grid = np.all(pixels == 200, axis=2)
    rows = np.flatnonzero(grid.sum(axis=1) > pixels.shape[1] // 2)
    cols = np.flatnonzero(grid.sum(axis=0) > pixels.shape[0] // 2)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    ys = [int(top + (bottom - top) * (i + 0.5) / 10) for i in range(10)]
    xs = [int(left + (right - left) * (j + 0.5) / 10) for j in range(10)]
    # Step off the centre, away from the number written there.
    return [[(y - (bottom - top) // 25, x - (right - left) // 25) for x in xs] for y in ys]


def test_confusion_png_handles_empty_rows() -> None:
    matrix = confusion()
    matrix[4] = 0  # a class with no test images: no division by zero, no NaN shade
    Image.open(io.BytesIO(export.confusion_png(matrix, DEFAULT_CLASSES))).verify()


# --- ONNX -------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(PRESETS))
def test_onnx_matches_pytorch(tmp_path: Path, preset: str) -> None:
    run = random_run(tmp_path / preset, preset)
    sess = session(export.onnx_bytes(run))
    model = run.load_model("cpu")
    images = images_uint8(37)
    # The app's own prediction path (standardisation inside the model, the run's test-time views).
    expected = predict_logits(model, images, torch.device("cpu"), tta=run.train_config.tta).numpy()
    got = sess.run(None, {export.INPUT_NAME: as_onnx_input(images)})[0]
    assert got.shape == (37, 10)
    assert np.abs(got - expected).max() < TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnx_batch_dimension_is_dynamic(tmp_path: Path) -> None:
    run = random_run(tmp_path / "r", "baseline")
    sess = session(export.onnx_bytes(run))
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == (export.INPUT_NAME, export.OUTPUT_NAME)
    assert inp.shape[1:] == [3, 32, 32] and isinstance(inp.shape[0], str)
    for n in (1, 2, 129):
        assert sess.run(None, {"images": as_onnx_input(images_uint8(n))})[0].shape == (n, 10)


def test_onnx_flip_averaging_follows_the_run(tmp_path: Path) -> None:
    run = random_run(tmp_path / "r", "quick")
    assert run.train_config.tta == "flip"
    images = as_onnx_input(images_uint8(8))
    sess = session(export.onnx_bytes(run))
    mirrored = images[..., ::-1].copy()
    # With the mirror average, an image and its mirror get the same logits.
    a, b = (sess.run(None, {"images": x})[0] for x in (images, mirrored))
    assert np.abs(a - b).max() < TOLERANCE


def test_onnx_carries_classes_and_interface_in_its_metadata(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx not installed: metadata not parsed")
    run = random_run(tmp_path / "r", "quick", metrics={"test_acc": 0.8125, "classes": list(DEFAULT_CLASSES)})
    model = onnx.load_from_string(export.onnx_bytes(run))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == list(DEFAULT_CLASSES)
    assert meta["test_accuracy"] == "0.8125" and meta["preset"] == "quick"
    assert meta["source_run"] == run.name and "[0, 1]" in meta["input"]
    assert [o.domain for o in model.opset_import if o.domain in ("", "ai.onnx")]


def test_with_metadata_appends_entries_protobuf_reads() -> None:
    onnx = pytest.importorskip("onnx", reason="onnx not installed: metadata not parsed")
    base = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    data = export.with_metadata(base.SerializeToString(), {"a": "1", "long": "x" * 300, "uni": "chat é"})
    assert {p.key: p.value for p in onnx.load_from_string(data).metadata_props} == {
        "a": "1", "long": "x" * 300, "uni": "chat é"}


@pytest.mark.slow
def test_dynamo_exporter_matches_too(tmp_path: Path) -> None:
    if not export.dynamo_available():
        pytest.skip("onnxscript not installed: torch.export-based ONNX exporter not checked")
    run = random_run(tmp_path / "r", "baseline-bn")
    sess = session(export.onnx_bytes(run, exporter="dynamo"))
    images = images_uint8(5)
    expected = predict_logits(run.load_model(), images, torch.device("cpu")).numpy()
    got = sess.run(None, {"images": as_onnx_input(images)})[0]
    assert np.abs(got - expected).max() < TOLERANCE


def test_a_failing_exporter_gives_a_message_that_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = random_run(tmp_path / "r", "baseline")

    def removed(*args: object) -> bytes:
        raise RuntimeError("the TorchScript-based exporter was removed")

    monkeypatch.setattr(export, "_export_torchscript", removed)
    monkeypatch.setattr(export, "dynamo_available", lambda: False)
    with pytest.raises(ExportError, match="pip install onnxscript"):
        export.onnx_bytes(run)


def hide_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the onnx package look absent, as on a server installed without it."""
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))


def test_without_the_onnx_package_export_says_what_to_install(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = random_run(tmp_path / "r", "baseline")
    assert export.onnx_unavailable() is None
    hide_onnx(monkeypatch)
    assert "pip install onnx" in export.onnx_unavailable()
    with pytest.raises(ExportError, match="needs the onnx package"):
        export.onnx_bytes(run)


@pytest.mark.realdata
def test_onnx_matches_pytorch_on_real_test_images(real_cifar_root: Path, tmp_path: Path) -> None:
    data = load_cifar10(real_cifar_root, download=False)
    run = random_run(tmp_path / "r", "fast")
    images = data.x_test[:500]
    expected = predict_logits(run.load_model(), images, torch.device("cpu"), tta="flip_translate").numpy()
    got = session(export.onnx_bytes(run)).run(None, {"images": as_onnx_input(images)})[0]
    assert np.abs(got - expected).max() < TOLERANCE


# --- the Train page's downloads ----------------------------------------------------------

@pytest.mark.slow
def test_train_page_offers_every_download(trained, cifar_env: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"  # CIFAR_RUNS_DIR (cifar_env)
    shutil.copytree(trained.path, runs / trained.name)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="train.export.run").value == str(runs / trained.name)
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    for label in ("Weights (.safetensors)", "History (.csv)", "Confusion matrix (.csv)",
                  "Confusion matrix (.png)"):
        assert label in buttons and not buttons[label].disabled, label
    assert "ONNX model (.onnx)" not in buttons  # made on request
    at.button(key="train.export.onnx").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    assert "ONNX model (.onnx)" in buttons


@pytest.mark.slow
def test_train_page_explains_a_missing_onnx_package(trained, cifar_env: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(trained.path, tmp_path / "runs" / trained.name)
    hide_onnx(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("needs the onnx package" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "train.export.onnx"]
    assert len(at.get("download_button")) == 4  # the other downloads do not need it
