"""Predict page: classify your own pictures, or random test images, with a trained model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image

import app_state
from cifar_core import plots
from cifar_core.bundled import DEFAULT_CLASSES
from cifar_core.inference import ImageError, Prediction, decode_image, predict_pixels, to_cifar
from cifar_core.runs import Run, RunError

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
THUMBNAIL = (320, 320)


@dataclass(frozen=True)
class Picture:
    """One uploaded file, decoded: a thumbnail and the 32x32 pixels, or why it could not be read."""

    name: str
    size: tuple[int, int] = (0, 0)
    thumbnail: Image.Image | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


@st.cache_resource(max_entries=64, show_spinner="Reading the pictures...")
def read_picture(name: str, raw: bytes) -> Picture:
    # Cached on the file's bytes, so moving a slider does not decode every photo again
    # (a resource cache: a Picture is never changed, and page classes cannot be pickled).
    try:
        image = decode_image(raw, name)
    except ImageError as err:
        return Picture(name, error=str(err))
    thumbnail = image.copy()
    thumbnail.thumbnail(THUMBNAIL)
    return Picture(name, image.size, thumbnail, to_cifar(image))


def classify(model: torch.nn.Module, pictures: list[Picture], classes: tuple[str, ...],
             tta_flip: bool) -> list[Prediction | None]:
    """A prediction for every readable picture (one batch for all of them), None for the others."""
    good = [p for p in pictures if p.pixels is not None]
    predictions = iter(predict_pixels(model, np.stack([p.pixels for p in good]), classes,
                                      [p.name for p in good], tta_flip) if good else [])
    return [next(predictions) if p.pixels is not None else None for p in pictures]


def choose_model() -> tuple[Run, torch.nn.Module] | None:
    runs = app_state.trained_runs()
    if not runs:
        st.info("There is no trained model yet. Train one on the **Train** page (the *quick* preset "
                "is the shortest), then come back here to try it on your own pictures.",
                icon=":material/model_training:")
        st.page_link("app_pages/train.py", label="Go to the Train page", icon=":material/arrow_forward:")
        return None
    by_path = {str(run.path): run for run in runs}
    path = st.selectbox("Model", list(by_path), key="p.run",
                        format_func=lambda p: app_state.run_label(by_path[p]),
                        help="Your runs that have saved weights (newest first), then the models "
                             "that come with the app.")
    run = by_path[path]
    if run.status == "running":
        st.caption("This run is still training: predictions use the best weights saved so far.")
    try:
        return run, app_state.load_model(run)
    except (RunError, OSError) as err:
        st.error(f"Could not load this model: {err}")
        return None


def show_picture(picture: Picture, prediction: Prediction | None, top_k: int, index: int) -> None:
    with st.container(border=True):
        if prediction is None:
            st.error(picture.error, icon=":material/broken_image:")
            return
        original, seen, chart = st.columns([3, 2, 5], gap="medium")
        original.image(picture.thumbnail, caption=f"{picture.name} ({picture.size[0]}×{picture.size[1]})")
        seen.image(plots.upscale(prediction.pixels, 6), caption="What the model sees: 32×32 pixels")
        with chart:
            label, probability = prediction.top(1)[0]
            st.markdown(f"#### Prediction: {label} ({probability:.0%})")
            if probability < 0.5:
                st.caption("The model is unsure: no class gets more than half of the probability.")
            st.plotly_chart(plots.top_k_figure(prediction.top(top_k), height=60 + 28 * top_k),
                            key=f"p.top_k.{index}")


def upload_mode(model: torch.nn.Module, classes: tuple[str, ...], tta_flip: bool, top_k: int) -> None:
    files = st.file_uploader(
        "Pictures to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="p.files",
        help="PNG, JPEG, WebP, BMP or GIF (first frame), up to 20 MB and 40 megapixels each.")
    if not files:
        st.caption(
            "Each picture is cut to a centred square and shrunk to 32×32 pixels, like a CIFAR-10 "
            "image, before the model sees it. Photos where the object fills the frame work best. "
            "The model only knows its 10 classes, so anything else is forced into one of them.")
        return
    pictures = [read_picture(f.name, f.getvalue()) for f in files]
    predictions = classify(model, pictures, classes, tta_flip)
    for index, (picture, prediction) in enumerate(zip(pictures, predictions, strict=True)):
        show_picture(picture, prediction, top_k, index)


def test_images_mode(model: torch.nn.Module, classes: tuple[str, ...], tta_flip: bool) -> None:
    data = app_state.get_data()
    if data is None:
        return
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    n = left.slider("How many test images", 4, 36, 12, step=4, key="p.n")
    if right.button("New images", icon=":material/shuffle:", key="p.shuffle"):
        st.session_state["p.seed"] = st.session_state.get("p.seed", 0) + 1
    rng = np.random.default_rng(st.session_state.setdefault("p.seed", 0))
    index = rng.choice(len(data.y_test), size=min(n, len(data.y_test)), replace=False)
    predictions = predict_pixels(model, data.x_test[index], classes,
                                 [f"test image {i}" for i in index], tta_flip)
    truth = [data.classes[i] for i in data.y_test[index]]
    correct = sum(p.label == t for p, t in zip(predictions, truth, strict=True))
    st.markdown(f"**{correct} of {len(index)} correct** on images the model never trained on.")
    per_row = 6
    for start in range(0, len(predictions), per_row):
        for col, prediction, true in zip(st.columns(per_row), predictions[start:start + per_row],
                                         truth[start:start + per_row], strict=False):
            label, probability = prediction.top(1)[0]
            col.image(plots.upscale(prediction.pixels, 4))
            if label == true:
                col.markdown(f":green[**✓ {label}**] {probability:.0%}")
            else:
                col.markdown(f":red[**✗ {label}**] {probability:.0%}  \ntrue class: {true}")


# --- the page ---------------------------------------------------------------------------

st.title("Predict")
st.caption("Show a trained network new pictures and see how sure it is about each class.")
chosen = choose_model()
if chosen is not None:
    run, model = chosen
    classes = tuple(run.metrics.get("classes") or DEFAULT_CLASSES)
    left, right = st.columns([3, 2])
    mode = left.radio("Images", ("Upload your own", "Random test images"), horizontal=True, key="p.mode")
    if mode == "Upload your own":
        top_k = right.slider("Classes to show", 1, len(classes), 5, key="p.top_k",
                             help="How many of the most likely classes each chart lists.")
        upload_mode(model, classes, run.train_config.tta_flip, top_k)
    else:
        test_images_mode(model, classes, run.train_config.tta_flip)
