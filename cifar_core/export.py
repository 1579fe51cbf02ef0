"""Files to take a run elsewhere: weights, history, confusion matrix (CSV, PNG), ONNX.

Everything here returns bytes, so the app can offer them as downloads and tests can
check them without writing files:

- ``weights_bytes`` and ``history_bytes``: the run's own ``weights.safetensors`` and
  ``history.csv``, byte for byte.
- ``confusion_csv`` and ``confusion_png``: the test confusion matrix of ``metrics.json``
  (rows true, columns predicted), as a table with the class names as header and index,
  and as an annotated heatmap drawn with Pillow (no browser, no plotting library).
- ``onnx_bytes``: the network as ONNX. Input ``images``: float32 (N, 3, 32, 32), RGB in
  [0, 1], any N; output ``logits``: (N, 10), in the run's class order (softmax gives
  probabilities). Input standardisation, and the run's test-time augmentation (``tta``:
  the mirror and shifted views it averages), are part of the graph, so the file gives the
  figures the app shows.

ONNX export uses PyTorch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``), which needs the ``onnx`` package (torch imports it to finish the
file) and takes a fraction of a second and about 50 MB. The newer torch.export-based
exporter (``dynamo=True``, the default of ``torch.onnx.export``) also needs
``onnxscript``, takes several seconds and a few hundred MB more; it is used only where
the TorchScript one fails (a later torch that has dropped it) and onnxscript is there.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .config import TTA
from .model import tta_logits
from .record import HISTORY_FILE, WEIGHTS_FILE, RunError
from .runs import Run

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17  # onnxruntime 1.11+ (2022) and every current runtime read it
Exporter = Literal["auto", "torchscript", "dynamo"]

_export_lock = threading.Lock()  # tracing is process-global state in torch: one export at a time


class ExportError(Exception):
    """An export could not be made; the message says why in words a user can act on."""


# --- the run's own files ---------------------------------------------------------

def weights_bytes(run: Run) -> bytes:
    """The run's weights.safetensors, as is (the best epoch's weights)."""
    return _read(run, WEIGHTS_FILE)


def history_bytes(run: Run) -> bytes:
    """The run's history.csv, as is: one row per finished epoch."""
    return _read(run, HISTORY_FILE)


def _read(run: Run, name: str) -> bytes:
    try:
        return (run.path / name).read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{run.name} has no {name} yet") from None
    except OSError as err:
        raise ExportError(f"cannot read {run.path / name}: {err.strerror}") from None


def file_name(run: Run, suffix: str) -> str:
    """A download name that says which run it came from: ``<run>-<suffix>``."""
    return f"{run.name}-{suffix}"


# --- the confusion matrix ------------------------------------------------------------

def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Counts with the class names as header (predicted) and first column (true)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, np.asarray(matrix)):
        writer.writerow([name, *(int(v) for v in row)])
    return out.getvalue().encode()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def _blue(t: float) -> tuple[int, int, int]:
    """White (0) to a deep blue (1), close to plotly's "Blues" used on the Evaluate page."""
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    mid = np.array([107, 174, 214])
    t = min(1.0, max(0.0, t))
    color = light + (mid - light) * (t / 0.5) if t < 0.5 else mid + (dark - mid) * ((t - 0.5) / 0.5)
    return tuple(int(round(c)) for c in color)


def confusion_png(matrix: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix",
                  scale: int = 2) -> bytes:
    """An annotated heatmap: counts in the cells, shaded by each true class's share (row %)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    s = scale
    cell, pad = 58 * s, 16 * s
    label_font, cell_font, title_font = _font(13 * s), _font(13 * s), _font(17 * s)
    axis_font = _font(13 * s)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(probe.textlength(c, font=label_font) for c in classes)
    left = int(pad + 22 * s + label_w + 8 * s)  # axis title, class names, gap
    top = int(pad + 52 * s)  # title and what the cells mean
    bottom = int(label_w * 0.75 + 40 * s)  # slanted class names, axis title
    width, height = left + n * cell + pad + 10 * s, top + n * cell + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill=(30, 30, 30), font=title_font)
    draw.text((pad, pad + 24 * s), "Cells: test images. Shade: share of the true class (row).",
              fill=(100, 100, 100), font=_font(12 * s))

    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            color = _blue(share[i, j])
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color)
            text = f"{matrix[i, j]:,}"
            ink = "white" if share[i, j] > 0.45 else (30, 30, 30)
            bold = s // 2 if i == j else 0  # the diagonal (correct answers) in bold
            draw.text((x0 + cell / 2, y0 + cell / 2), text, fill=ink, font=cell_font, anchor="mm",
                      stroke_width=bold, stroke_fill=ink)
    grid = (200, 200, 200)
    for k in range(n + 1):
        draw.line([left + k * cell, top, left + k * cell, top + n * cell], fill=grid, width=1)
        draw.line([left, top + k * cell, left + n * cell, top + k * cell], fill=grid, width=1)

    for i, name in enumerate(classes):  # true classes down the left
        draw.text((left - 8 * s, top + i * cell + cell / 2), name, fill=(30, 30, 30),
                  font=label_font, anchor="rm")
    for j, name in enumerate(classes):  # predicted classes along the bottom, slanted
        w = int(probe.textlength(name, font=label_font)) + 4 * s
        h = 20 * s
        tile = Image.new("RGBA", (w, h), (255, 255, 255, 0))
        ImageDraw.Draw(tile).text((w, h / 2), name, fill=(30, 30, 30), font=label_font, anchor="rm")
        tile = tile.rotate(40, expand=True, resample=Image.Resampling.BICUBIC)
        x = left + j * cell + cell // 2 - tile.width + 6 * s
        image.paste(tile, (int(x), top + n * cell + 4 * s), tile)

    draw.text((left + n * cell / 2, height - 12 * s), "predicted class", fill=(60, 60, 60),
              font=axis_font, anchor="mb")
    axis = Image.new("RGBA", (int(n * cell), 20 * s), (255, 255, 255, 0))
    ImageDraw.Draw(axis).text((n * cell / 2, 10 * s), "true class", fill=(60, 60, 60), font=axis_font,
                              anchor="mm")
    axis = axis.rotate(90, expand=True)
    image.paste(axis, (pad - 4 * s, top), axis)

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- ONNX ------------------------------------------------------------------------------

class _ForExport(nn.Module):
    """The network as the app uses it: logits, averaged over the run's test-time views."""

    def __init__(self, model: nn.Module, tta: TTA) -> None:
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, images, self.tta)


def onnx_unavailable() -> str | None:
    """Why ONNX export cannot work here (a missing package), or None when it can."""
    if importlib.util.find_spec("onnx") is None:
        return ("ONNX export needs the onnx package, which is not installed on this server "
                "(`pip install onnx`, or install the project's requirements.txt).")
    return None


def dynamo_available() -> bool:
    """Whether torch's torch.export-based ONNX exporter can run (it needs onnxscript)."""
    return importlib.util.find_spec("onnxscript") is not None


def export_onnx(model: nn.Module, *, tta: TTA = "none", metadata: Mapping[str, str] | None = None,
                exporter: Exporter = "auto") -> bytes:
    """The model as a serialized ONNX ModelProto with a dynamic batch dimension.

    ``exporter="auto"`` uses the TorchScript-based exporter and falls back to the
    torch.export-based one if that fails and onnxscript is installed.
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"unknown exporter {exporter!r}")
    missing = onnx_unavailable()
    if missing:
        raise ExportError(missing)
    module = _ForExport(model, tta).to("cpu").eval()
    example = torch.rand(2, 3, 32, 32)
    with _export_lock, torch.no_grad():
        if exporter == "dynamo":
            data = _export_dynamo(module, example)
        else:
            try:
                data = _export_torchscript(module, example)
            except Exception as err:
                if exporter == "torchscript" or not dynamo_available():
                    raise ExportError(_unavailable_message(err)) from err
                data = _export_dynamo(module, example)
    return with_metadata(data, metadata or {})


def _unavailable_message(err: Exception) -> str:
    detail = " ".join(str(err).split())[:300]
    return (f"ONNX export failed ({type(err).__name__}: {detail}). If this PyTorch no longer has "
            "the TorchScript-based exporter, `pip install onnxscript` enables the newer one.")


def _export_torchscript(module: nn.Module, example: torch.Tensor) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        # "legacy TorchScript-based ONNX export" deprecation: a choice made on purpose (module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # The shifted views' slices are left to run rather than folded into constants, which the
        # exporter notes; the graph still gives PyTorch's logits (tests/test_export.py).
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(module, (example,), out, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return out.getvalue()


def _export_dynamo(module: nn.Module, example: torch.Tensor) -> bytes:
    if not dynamo_available():
        raise ExportError("ONNX export with torch.export needs the onnxscript package: "
                          "`pip install onnxscript`.")
    try:
        program = torch.onnx.export(
            module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, dynamo=True,
            verbose=False)
        return program.model_proto.SerializeToString()
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"ONNX export failed: {type(err).__name__}: "
                          f"{' '.join(str(err).split())[:300]}") from err


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def with_metadata(model_proto: bytes, metadata: Mapping[str, str]) -> bytes:
    """Add ``metadata_props`` entries to a serialized ONNX model, without the onnx package.

    Protocol buffers merge repeated fields that appear more than once, so appending
    encoded ``StringStringEntryProto`` entries (ModelProto field 14) is a valid edit.
    """
    extra = b"".join(
        _length_delimited(14, _length_delimited(1, str(k).encode()) + _length_delimited(2, str(v).encode()))
        for k, v in metadata.items())
    return model_proto + extra


def run_metadata(run: Run) -> dict[str, str]:
    """What travels inside the ONNX file: what goes in, what comes out, where it came from."""
    meta = {
        "classes": json.dumps(list(run.classes)),
        "input": "images: float32 (N, 3, 32, 32), RGB scaled to [0, 1], CIFAR-10 sized 32x32",
        "output": "logits: float32 (N, 10) in the order of 'classes'; softmax gives probabilities",
        "source_run": run.name,
        "preset": run.preset,
        "tta": run.train_config.tta,
    }
    if run.metrics.test_acc is not None:
        meta["test_accuracy"] = f"{run.metrics.test_acc:.4f}"
    return meta


def onnx_bytes(run: Run, exporter: Exporter = "auto") -> bytes:
    """The run's best weights as an ONNX model (see the module docstring for its interface)."""
    try:
        model = run.load_model("cpu")
    except RunError as err:
        raise ExportError(str(err)) from None
    return export_onnx(model, tta=run.train_config.tta, metadata=run_metadata(run),
                       exporter=exporter)
