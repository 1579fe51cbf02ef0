"""Plotly figures and pixel pictures the pages draw: functions of arrays and frames.

The app side of plotting, so the core never imports plotly. Every plotly figure, and the
PNG of a picture (``png``), is ``shared``: built once per server process for the same
inputs and handed to every session as the same object, so a page must not change one.
``confusion_figure(pickable=True)`` is the one figure that knows about Streamlit's
selection events.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import ParamSpec, TypeVar

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from cifar_core.model import LayerRow
from cifar_core.record import HISTORY_COLUMNS, EpochRecord
from cifar_core.stats import CHANNELS

P = ParamSpec("P")
T = TypeVar("T")

# Building a figure costs 20-150 ms of Python (plotly validates every property; plotly
# express more), most of a page's script time, and a class opening the same page at once
# would queue that work behind one interpreter lock; so did encoding the same pictures as
# PNG for every visitor. st.cache_resource keeps the object itself, without pickling;
# st.plotly_chart and st.image only read it. Per function.
SHARED_ENTRIES = 128


def shared(build: Callable[P, T]) -> Callable[P, T]:
    """``build``, its results kept per process for the same arguments and shared by all sessions."""
    return st.cache_resource(max_entries=SHARED_ENTRIES, show_spinner=False)(build)


@shared
def png(pixels: np.ndarray, scale: int = 1) -> bytes:
    """A uint8 picture (H, W, 3), enlarged ``scale`` times (``upscale``), as PNG for st.image:
    pictures every visitor sees alike (the gallery of mistakes, the Dataset page) are
    enlarged and encoded once."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upscale(pixels, scale))).save(out, format="PNG")
    return out.getvalue()


# --- dataset, model and prediction views ----------------------------------------

CHANNEL_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4"}


@shared
def class_counts_figure(counts: pd.DataFrame) -> go.Figure:
    """Grouped bars: one group per class, one bar per split."""
    fig = px.bar(counts, x="class", y="images", color="split", barmode="group",
                 title="Images per class")
    fig.update_layout(xaxis_title=None, yaxis_title="images", legend_title=None,
                      margin={"t": 50, "b": 10}, height=380)
    return fig


@shared
def channel_histogram_figure(histograms: np.ndarray) -> go.Figure:
    """Share of pixels at each value 0..255, one line per colour channel."""
    share = histograms / histograms.sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"value": np.tile(np.arange(256), 3),
                          "share of pixels": share.ravel(),
                          "channel": np.repeat(CHANNELS, 256)})
    fig = px.line(frame, x="value", y="share of pixels", color="channel",
                  color_discrete_map=CHANNEL_COLOURS, title="Pixel values per channel")
    fig.update_layout(xaxis_title="pixel value (0 = dark, 255 = bright)", legend_title=None,
                      yaxis_tickformat=".1%", margin={"t": 50, "b": 10})
    return fig


@shared
def top_k_figure(top: list[tuple[str, float]], height: int = 220) -> go.Figure:
    """Horizontal bars of the k most likely classes, the most likely on top."""
    # go.Bar, not plotly express: each upload draws its own, and px took 100 ms against 10.
    labels, probabilities = zip(*top)
    fig = go.Figure(go.Bar(x=probabilities, y=labels, orientation="h", texttemplate="%{x:.1%}",
                           textposition="outside", cliponaxis=False,
                           marker_color=["#3b6fd4"] + ["#9bb4e6"] * (len(top) - 1),
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_layout(yaxis={"autorange": "reversed", "title": None},
                      xaxis={"range": [0, 1], "tickformat": ".0%", "title": None},
                      height=height, margin={"t": 10, "b": 10, "l": 10, "r": 10})
    return fig


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge an (H, W, C) image by repeating pixels, so small images stay crisp, not blurred."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def image_row(images: np.ndarray, scale: int = 3, gap: int = 2,
              background: int = 255) -> np.ndarray:
    """Images (N, H, W, 3) side by side, each enlarged ``scale`` times, ``gap`` pixels apart."""
    n, h, w, c = images.shape
    big_h, big_w = h * scale, w * scale
    row = np.full((big_h, n * big_w + (n - 1) * gap, c), background, dtype=np.uint8)
    for i, image in enumerate(images):
        left = i * (big_w + gap)
        row[:, left:left + big_w] = upscale(image, scale)
    return row


def filter_images(weights: np.ndarray) -> np.ndarray:
    """First-layer conv weights (F, 3, k, k) -> F small RGB images (F, k, k, 3), uint8.

    Each filter is scaled on its own, symmetric around zero, so mid-grey means 0 and
    the colours show which inputs the filter weighs up or down.
    """
    w = weights.transpose(0, 2, 3, 1).astype(np.float64)
    scale = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, 1, 1, 1)
    return np.uint8(np.clip(127.5 + 127.5 * w / np.maximum(scale, 1e-12), 0, 255))


_LAYER_COLOURS = {"Conv2d": "#c9daf8", "BatchNorm2d": "#e4d7f5", "MaxPool2d": "#fde2c4",
                  "AvgPool2d": "#fde2c4", "Dropout": "#eeeeee", "Flatten": "#fff2b3",
                  "AdaptiveMaxPool2d": "#fde2c4", "AdaptiveAvgPool2d": "#fde2c4",
                  "Linear": "#cfe8cf"}


def network_dot(rows: list[LayerRow], rankdir: str = "TB") -> str:
    """A Graphviz DOT description of the network, one box per layer with its output shape."""
    def shape(s: tuple[int, ...]) -> str:
        return " × ".join(str(v) for v in s)

    lines = [f"digraph network {{ rankdir={rankdir}; nodesep=0.15; ranksep=0.18;",
             'node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
             'margin="0.12,0.04", color="#888888"];',
             'edge [color="#888888", arrowsize=0.6];',
             'input [label="input\\n32 × 32 × 3", fillcolor="#ffffff"];']
    previous = "input"
    for i, row in enumerate(rows):
        base = row.kind.split(" ")[0]
        colour = "#f6c4c4" if row.name == "logits" else _LAYER_COLOURS.get(base, "#ffffff")
        params = f" · {row.params:,} params" if row.params else ""
        label = f"{row.name}: {row.kind}\\n{shape(row.output_shape)}{params}"
        style = ', style="rounded,filled,dashed"' if base == "Dropout" else ""
        lines.append(f'n{i} [label="{label}", fillcolor="{colour}"{style}];')
        lines.append(f"{previous} -> n{i};")
        previous = f"n{i}"
    lines.append("}")
    return "\n".join(lines)


# --- training and evaluation views ----------------------------------------------

TRAIN_COLOUR, VAL_COLOUR, BEST_COLOUR = "#3b6fd4", "#e4572e", "#2ca02c"
def history_frame(history: Sequence[EpochRecord]) -> pd.DataFrame:
    """Epoch records as a frame, one row per epoch."""
    return pd.DataFrame([asdict(r) for r in history], columns=list(HISTORY_COLUMNS))


@shared
def training_curves_figure(history: Sequence[EpochRecord], metric: str = "loss",
                           best_epoch: int | None = None, epochs: int | None = None) -> go.Figure:
    """Train and validation ``loss`` or ``accuracy`` per epoch, the best epoch marked.

    ``epochs`` fixes the x axis to the planned length, so a live curve grows to the right
    instead of rescaling every epoch.
    """
    key = "acc" if metric == "accuracy" else "loss"
    frame = history_frame(history)
    fig = go.Figure()
    for split, colour, name in (("train", TRAIN_COLOUR, "train"), ("val", VAL_COLOUR, "validation")):
        fig.add_scatter(x=frame["epoch"], y=frame[f"{split}_{key}"], name=name, mode="lines+markers",
                        line={"color": colour}, hovertemplate=f"{name}: %{{y:.4f}}<extra></extra>")
    if best_epoch:
        fig.add_vline(x=best_epoch, line_dash="dash", line_color=BEST_COLOUR,
                      annotation_text=f"best epoch {best_epoch}", annotation_position="top left")
    last = max([epochs or 0, int(frame["epoch"].max()) if len(frame) else 1, 1])
    fig.update_layout(title="Accuracy" if key == "acc" else "Loss", hovermode="x unified",
                      xaxis={"title": "epoch", "range": [0.5, last + 0.5],
                             "dtick": 1 if last <= 20 else None},
                      yaxis={"title": "accuracy" if key == "acc" else "cross-entropy loss",
                             "tickformat": ".0%" if key == "acc" else None,
                             "range": [0, 1] if key == "acc" else None, "rangemode": "tozero"},
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 50, "b": 10})
    return fig


@shared
def confusion_figure(matrix: np.ndarray, classes: Sequence[str], normalized: bool = False,
                     title: str = "Confusion matrix", pickable: bool = False) -> go.Figure:
    """Heatmap with true classes as rows (top to bottom) and predicted classes as columns;
    ``pickable`` makes its cells clickable in Streamlit (``_add_cell_picker``)."""
    labels = list(classes)
    value = "%{z:.0%}" if normalized else "%{z:,}"
    fig = go.Figure(go.Heatmap(
        z=np.asarray(matrix), x=labels, y=labels, colorscale="Blues", zmin=0,
        zmax=1 if normalized else None, texttemplate=value,
        hovertemplate=f"true: %{{y}}<br>predicted: %{{x}}<br>{value}<extra></extra>",
        colorbar={"tickformat": ".0%" if normalized else ","}))
    fig.update_layout(title=title, height=560, margin={"t": 50, "b": 10},
                      xaxis={"title": "predicted class", "side": "bottom", "constrain": "domain"},
                      yaxis={"title": "true class", "autorange": "reversed", "scaleanchor": "x"})
    return _add_cell_picker(fig, labels) if pickable else fig


@shared
def per_class_figure(report: pd.DataFrame) -> go.Figure:
    """Grouped bars of precision, recall and F1 per class (columns of Evaluation.per_class())."""
    long = report.melt(id_vars="class", value_vars=["precision", "recall", "f1"],
                       var_name="metric", value_name="score")
    fig = px.bar(long, x="class", y="score", color="metric", barmode="group", range_y=[0, 1],
                 title="Precision, recall and F1 per class",
                 color_discrete_sequence=["#3b6fd4", "#e4572e", "#2ca02c"])
    fig.update_layout(xaxis_title=None, yaxis_title=None, yaxis_tickformat=".0%", legend_title=None,
                      margin={"t": 50, "b": 10})
    return fig


# --- confusion through training, run comparison ---------------------------------------

def _add_cell_picker(fig: go.Figure, classes: Sequence[str]) -> go.Figure:
    """Make a confusion heatmap's cells clickable in Streamlit.

    Streamlit's plotly selection events carry nothing for heatmap traces, so an invisible
    marker sits on every cell; a click selects it and the selection names the cell
    (x: predicted class, y: true class). Plotly only reports clicks on points that can
    be hovered, so the markers take over the heatmap's hover text. The heatmap stays trace 0.
    """
    labels = list(classes)
    n = len(labels)
    heatmap = fig.data[0]
    z = np.asarray(heatmap.z)
    template = heatmap.hovertemplate or ""
    value = "%{customdata:.0%}" if "%{z:.0%}" in template else "%{customdata:,}"
    fig.add_scatter(x=[labels[j] for _ in range(n) for j in range(n)],
                    y=[labels[i] for i in range(n) for _ in range(n)],
                    customdata=z.ravel(), mode="markers", name="cells", showlegend=False,
                    hovertemplate=f"true: %{{y}}<br>predicted: %{{x}}<br>{value}<br>"
                                  "click to see these images<extra></extra>",
                    marker={"symbol": "square", "size": 28, "color": "rgba(0,0,0,0)"},
                    selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}})
    heatmap.hoverinfo = "skip"
    heatmap.hovertemplate = None
    fig.update_layout(clickmode="event+select", dragmode=False)
    return fig


@shared
def confusion_change_figure(current: np.ndarray, previous: np.ndarray, classes: Sequence[str],
                            title: str = "Change since the previous epoch") -> go.Figure:
    """What changed between two confusion matrices, coloured by whether it is progress.

    Each cell shows the signed change in count. Green is better (more right answers on
    the diagonal, fewer of a mistake off it), red is worse, white is no change.
    """
    delta = np.asarray(current, dtype=np.int64) - np.asarray(previous, dtype=np.int64)
    good = np.where(np.eye(len(delta), dtype=bool), delta, -delta)
    top = max(int(np.abs(good).max()), 1)
    labels = list(classes)
    text = [[f"{v:+,}" if v else "·" for v in row] for row in delta]
    fig = go.Figure(go.Heatmap(
        z=good, x=labels, y=labels, zmin=-top, zmax=top, text=text, texttemplate="%{text}",
        customdata=delta, colorscale=[[0, "#c0392b"], [0.5, "#ffffff"], [1, "#1e8449"]],
        hovertemplate="true: %{y}<br>predicted: %{x}<br>change: %{customdata:+,}<extra></extra>",
        colorbar={"tickvals": [-top, 0, top], "ticktext": ["worse", "same", "better"]}))
    fig.update_layout(title=title, height=560, margin={"t": 50, "b": 10},
                      xaxis={"title": "predicted class", "side": "bottom", "constrain": "domain"},
                      yaxis={"title": "true class", "autorange": "reversed", "scaleanchor": "x"})
    return fig


@shared
def epoch_accuracy_figure(matrices: np.ndarray, classes: Sequence[str], epoch: int | None = None,
                          best_epoch: int | None = None) -> go.Figure:
    """Validation accuracy per epoch read from the matrices (E, K, K), and each class's recall.

    Accuracy is the diagonal over the total; a class's recall is its diagonal cell over its
    row. ``epoch`` (1-based) is marked with a line, ``best_epoch`` with a dashed one.
    """
    matrices = np.asarray(matrices, dtype=np.float64)
    epochs = np.arange(1, len(matrices) + 1)
    diagonal = np.diagonal(matrices, axis1=1, axis2=2)
    accuracy = diagonal.sum(1) / np.maximum(matrices.sum((1, 2)), 1)
    recall = diagonal / np.maximum(matrices.sum(2), 1)
    fig = go.Figure()
    for k, name in enumerate(classes):
        fig.add_scatter(x=epochs, y=recall[:, k], name=name, mode="lines", line={"width": 1},
                        opacity=0.6, hovertemplate=f"{name}: %{{y:.1%}}<extra></extra>")
    fig.add_scatter(x=epochs, y=accuracy, name="all classes", mode="lines+markers",
                    line={"color": "#222222", "width": 3},
                    hovertemplate="accuracy: %{y:.1%}<extra></extra>")
    if best_epoch:
        fig.add_vline(x=best_epoch, line_dash="dash", line_color=BEST_COLOUR,
                      annotation_text=f"best {best_epoch}", annotation_position="bottom right")
    if epoch:
        fig.add_vline(x=epoch, line_color=VAL_COLOUR, line_width=2,
                      annotation_text=f"epoch {epoch}", annotation_position="top left")
    fig.update_layout(title="Validation accuracy (thick) and each class's recall", hovermode="x unified",
                      xaxis={"title": "epoch", "range": [0.5, len(epochs) + 0.5],
                             "dtick": 1 if len(epochs) <= 20 else None},
                      yaxis={"title": None, "tickformat": ".0%", "range": [0, 1]},
                      legend={"font": {"size": 11}}, margin={"t": 50, "b": 10}, height=400)
    return fig


@shared
def comparison_curves_figure(curves: pd.DataFrame, metric: str = "val_acc") -> go.Figure:
    """One line per run of ``metric`` (val_acc or val_loss) per epoch; ``curves`` is long
    format with columns run, epoch and the metric (``compare.curves_frame``).

    A loss that spans more than a factor of 20 (one run that diverged at first) is drawn
    on a log scale, so the other runs do not flatten into a line at the bottom.
    """
    accuracy = metric.endswith("acc")
    values = curves[metric].to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    log = not accuracy and len(positive) > 0 and positive.max() / positive.min() > 20
    title = "Validation accuracy" if accuracy else "Validation loss" + (" (log scale)" if log else "")
    fig = px.line(curves, x="epoch", y=metric, color="run", markers=True, title=title,
                  color_discrete_sequence=px.colors.qualitative.D3)
    fig.update_traces(hovertemplate="%{y:.4f}<extra>%{fullData.name}</extra>")
    last = int(curves["epoch"].max()) if len(curves) else 1
    fig.update_layout(xaxis={"title": "epoch", "dtick": 1 if last <= 20 else None},
                      yaxis={"title": None, "tickformat": ".0%" if accuracy else None,
                             "type": "log" if log else "linear",
                             "rangemode": "normal" if log else "tozero"},
                      legend={"orientation": "h", "y": -0.25, "title": None},
                      margin={"t": 50, "b": 10}, hovermode="x unified")
    return fig


# --- where the model looked ------------------------------------------------------

# Anchor colours of a dark-blue -> cyan -> yellow -> red map, like the usual "jet" of
# Grad-CAM papers but without its black and its dark ends.
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_COLOURS = np.array([[48, 18, 120], [40, 140, 230], [90, 220, 110], [250, 200, 40],
                          [220, 30, 20]], dtype=np.float64)


def colourize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (..., 3) on the heat scale."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)
    rgb = [np.interp(v, _HEAT_STOPS, _HEAT_COLOURS[:, c]) for c in range(3)]
    return np.uint8(np.round(np.stack(rgb, axis=-1)))


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, strength: float = 0.65) -> np.ndarray:
    """The image (H, W, 3) uint8 with ``heat`` (H, W) in [0, 1] painted over it.

    Colour covers each pixel in proportion to its heat, so cold places show the
    picture and hot ones the heat colour.
    """
    alpha = strength * np.clip(np.asarray(heat, dtype=np.float64), 0, 1)[..., None]
    blended = (1 - alpha) * image.astype(np.float64) + alpha * colourize(heat)
    return np.uint8(np.round(blended))


@shared
def explanation_figure(panels: Sequence[tuple[str, np.ndarray]], height: int = 300) -> go.Figure:
    """RGB images (H, W, 3) side by side, each with its title, pixels drawn as squares."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels],
                        horizontal_spacing=0.03)
    for i, (_title, image) in enumerate(panels, start=1):
        fig.add_trace(go.Image(z=np.asarray(image), hoverinfo="skip"), row=1, col=i)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)  # image traces keep square pixels on their own axes
    fig.update_annotations(font_size=13)
    fig.update_layout(height=height, margin={"t": 40, "b": 0, "l": 0, "r": 0})
    return fig


def feature_grid(maps: np.ndarray, columns: int = 8, scale: int = 1, gap: int = 2) -> np.ndarray:
    """Feature maps (C, H, W) as one RGB uint8 image, ``columns`` per row.

    Each map is scaled by its own maximum (the activations after a ReLU are >= 0; maps
    of other activations are shifted to start at 0), so a channel that does not fire
    for this image is all dark and one that fires anywhere shows where.
    """
    maps = np.asarray(maps, dtype=np.float64)
    c, h, w = maps.shape
    low = np.minimum(maps.reshape(c, -1).min(1), 0).reshape(c, 1, 1)
    shifted = maps - low
    top = shifted.reshape(c, -1).max(1).reshape(c, 1, 1)
    tiles = colourize(np.where(top > 0, shifted / np.maximum(top, 1e-12), 0))
    rows = -(-c // columns)
    big_h, big_w = h * scale, w * scale
    grid = np.full((rows * big_h + (rows - 1) * gap, min(c, columns) * (big_w + gap) - gap, 3),
                   255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top_row, left = (i // columns) * (big_h + gap), (i % columns) * (big_w + gap)
        grid[top_row:top_row + big_h, left:left + big_w] = upscale(tile, scale)
    return grid


# --- experiments -----------------------------------------------------------------

@shared
def arms_curves_figure(arms: Sequence[tuple[str, Sequence[EpochRecord]]],
                       with_train: bool = False) -> go.Figure:
    """Validation accuracy per epoch, one line per arm; ``with_train`` adds dashed train lines."""
    rows = []
    for label, history in arms:
        for r in history:
            rows.append({"arm": label, "epoch": r.epoch, "accuracy": r.val_acc, "split": "validation"})
            if with_train:
                rows.append({"arm": label, "epoch": r.epoch, "accuracy": r.train_acc, "split": "train"})
    frame = pd.DataFrame(rows)
    fig = px.line(frame, x="epoch", y="accuracy", color="arm", markers=True,
                  line_dash="split" if with_train else None)
    fig.update_layout(yaxis={"tickformat": ".0%", "title": None}, height=340,
                      legend={"orientation": "h", "y": -0.25, "title": None},
                      margin={"t": 20, "b": 10}, hovermode="x unified")
    return fig


@shared
def grad_norms_figure(arms: Sequence[tuple[str, Sequence[Mapping[str, float]]]]) -> go.Figure:
    """Mean gradient norm per layer in the last epoch, input to output, on a log scale."""
    rows = []
    for label, norms in arms:
        if not norms:
            continue
        last = norms[-1]
        rows += [{"arm": label, "layer": k, "gradient norm": v} for k, v in last.items() if k != "epoch"]
    fig = px.line(pd.DataFrame(rows), x="layer", y="gradient norm", color="arm", markers=True, log_y=True)
    fig.update_layout(height=340, legend={"orientation": "h", "y": -0.3, "title": None},
                      margin={"t": 20, "b": 10}, xaxis={"title": "layer (input -> output)"})
    return fig
