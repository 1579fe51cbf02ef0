"""Predict page: classify your own pictures, or random test images, with a trained model."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

import app_figures as figures
import app_state
import app_views
from cifar_core.config import TTA
from cifar_core.explain import feature_maps, gradcam, saliency
from cifar_core.formatting import format_percent
from cifar_core.inference import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    Prediction,
    decode_image,
    predict_pixels,
    predict_readable,
    to_cifar,
)
from cifar_core.runs import Run, RunError

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
THUMBNAIL = (320, 320)
THUMBNAIL_QUALITY = 85  # st.image would encode the array at quality 100: 65 KB instead of ~15
METHODS = ("Grad-CAM", "Saliency (SmoothGrad)")
UPLOAD, CAMERA, TEST = "Upload your own", "Camera", "Random test images"
MODES = {"upload": UPLOAD, "camera": CAMERA, "test": TEST}  # by their names in a URL (?mode=camera)
HELP_EXPLAIN = (
    "**Grad-CAM** asks the last convolution layer which of its feature maps raise the score of a "
    "class, and paints the places where those maps fire: warm colours are where the evidence "
    "for that class is. It is as coarse as that layer: the baseline's last layer is only 4×4 "
    "cells, each looking at an 18×18-pixel patch, so expect a few soft blobs, not an outline. "
    "An earlier layer gives a sharper map that follows edges, but says less about the class. "
    "**Saliency** is the gradient of the class score with respect to each pixel, averaged over "
    "a few noisy copies of the image: pixel-sharp, but on these small networks it scatters "
    "over object and background alike and hardly changes from one class to another, which is "
    "why Grad-CAM is shown first.")
HELP_FEATURES = (
    "Every convolution turns the image into as many feature maps as it has filters. Each "
    "small square is one map, bright where that filter found its pattern, dark where it did "
    "not (each scaled on its own). The first layer's maps still look like the photo (edges, "
    "colours); deeper maps are smaller and more abstract: parts and textures, then class evidence.")


@dataclass(frozen=True)
class Picture:
    """One uploaded file, decoded: a thumbnail and the 32x32 pixels, or why it could not be read."""

    name: str
    size: tuple[int, int] = (0, 0)
    thumbnail: bytes | None = None  # JPEG, encoded once
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
    encoded = io.BytesIO()
    thumbnail.convert("RGB").save(encoded, format="JPEG", quality=THUMBNAIL_QUALITY)
    return Picture(name, image.size, encoded.getvalue(), to_cifar(image))


def draw_model_choice() -> tuple[Run, torch.nn.Module] | None:
    runs = app_state.trained_runs()
    if not runs:
        st.info("There is no trained model yet. Train one on the **Train** page (the *quick* preset "
                "is the shortest), then come back here to try it on your own pictures.",
                icon=":material/model_training:")
        st.page_link("app_pages/train.py", label="Go to the Train page", icon=":material/arrow_forward:")
        return None
    by_path = {str(run.path): run for run in runs}
    app_state.preselect_run("predict", runs)
    path = st.selectbox("Model", list(by_path), key="predict.run",
                        format_func=lambda p: by_path[p].label,
                        help="Your runs that have saved weights (newest first), then the models "
                             "that come with the app. It opens on the most accurate, or on the "
                             "run you have just trained.")
    run = by_path[path]
    if run.status == "running":
        st.caption("This run is still training: predictions use the best weights saved so far.")
    try:
        return run, app_state.load_model(run)
    except (RunError, OSError) as err:
        st.error(f"Could not load this model: {err}")
        return None


def draw_picture(picture: Picture, prediction: Prediction | None, top_k: int, index: int) -> None:
    with st.container(border=True):
        if prediction is None:
            st.error(picture.error, icon=":material/broken_image:")
            return
        original, seen, chart = st.columns([3, 2, 5], gap="medium")
        original.image(picture.thumbnail, caption=f"{picture.name} ({picture.size[0]}×{picture.size[1]})")
        seen.image(figures.upscale(prediction.pixels, 6), caption="What the model sees: 32×32 pixels",
                   output_format="PNG")
        with chart:
            label, probability = prediction.top(1)[0]
            st.markdown(f"#### Prediction: {label} ({format_percent(probability, 0)})")
            if probability < 0.5:
                st.caption("The model is unsure: no class gets more than half of the probability.")
            st.plotly_chart(figures.top_k_figure(prediction.top(top_k), height=60 + 28 * top_k),
                            key=f"predict.top_k.{index}")


def draw_uploads(model: torch.nn.Module, classes: tuple[str, ...], tta: TTA,
                top_k: int) -> list[tuple[Prediction, str | None]]:
    """Classify the uploads; returns (prediction, None) for each readable one."""
    files = st.file_uploader(
        "Pictures to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="predict.files",
        # The browser itself refuses a larger file, so it never takes the server's memory (the
        # server's own limit is the Dataset page's archive, 200 MB).
        max_upload_size=MAX_FILE_BYTES >> 20,
        help=f"PNG, JPEG, WebP, BMP or GIF (first frame), up to {MAX_FILE_BYTES >> 20} MB and "
             f"{MAX_PIXELS // 1_000_000} megapixels each.")
    if not files:
        st.caption(
            "Each picture is cut to a centred square and shrunk to 32×32 pixels, like a CIFAR-10 "
            "image, before the model sees it. Photos where the object fills the frame work best. "
            "The model only knows its 10 classes, so anything else is forced into one of them.")
        return []
    return classify_pictures(model, [read_picture(f.name, f.getvalue()) for f in files], classes, tta, top_k)


def draw_camera(model: torch.nn.Module, classes: tuple[str, ...], tta: TTA,
                top_k: int) -> list[tuple[Prediction, str | None]]:
    """Classify a photo from this device's camera, checked like an upload."""
    photo = st.camera_input("Show the camera an object, then take a picture", key="predict.camera",
                            help="The picture stays on this server only while the page shows it.")
    if photo is None:
        st.caption("Hold a toy car, a cup or a picture of an animal in front of the camera. The "
                   "model knows only its 10 classes, so anything else is forced into one of them.")
        return []
    return classify_pictures(model, [read_picture(photo.name, photo.getvalue())], classes, tta, top_k)


def classify_pictures(model: torch.nn.Module, pictures: list[Picture], classes: tuple[str, ...], tta: TTA,
                      top_k: int) -> list[tuple[Prediction, str | None]]:
    """Draw each picture with its prediction (or why it could not be read); returns
    (prediction, None) for each readable one."""
    predictions = predict_readable(model, [p.pixels for p in pictures], [p.name for p in pictures],
                                   classes, tta)
    for index, (picture, prediction) in enumerate(zip(pictures, predictions, strict=True)):
        draw_picture(picture, prediction, top_k, index)
    return [(p, None) for p in predictions if p is not None]


def draw_test_images(model: torch.nn.Module, classes: tuple[str, ...],
                     tta: TTA) -> list[tuple[Prediction, str | None]]:
    """Classify random test images; returns (prediction, true class) for each."""
    data = app_state.get_data("Random test images")
    if data is None:
        return []
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    n = left.slider("How many test images", 4, 36, 12, step=4, key="predict.n")
    if right.button("New images", icon=":material/shuffle:", key="predict.shuffle"):
        st.session_state["predict.seed"] = st.session_state.get("predict.seed", 0) + 1
    rng = np.random.default_rng(st.session_state.setdefault("predict.seed", 0))
    index = rng.choice(len(data.y_test), size=min(n, len(data.y_test)), replace=False)
    predictions = predict_pixels(model, data.x_test[index], classes,
                                 [f"test image {i}" for i in index], tta)
    truth = [data.classes[i] for i in data.y_test[index]]
    correct = sum(p.label == t for p, t in zip(predictions, truth, strict=True))
    st.markdown(f"**{correct} of {len(index)} correct** on images the model never trained on.")
    per_row = 6
    for start in range(0, len(predictions), per_row):
        for number, col, prediction, true in zip(
                range(start + 1, start + per_row + 1), st.columns(per_row),
                predictions[start:start + per_row], truth[start:start + per_row], strict=False):
            label, probability = prediction.top(1)[0]
            col.image(figures.upscale(prediction.pixels, 4), caption=f"#{number}", output_format="PNG")
            if label == true:
                col.markdown(f":green[**✓ {label}**] {format_percent(probability, 0)}")
            else:
                col.markdown(f":red[**✗ {label}**] {format_percent(probability, 0)}  \ntrue class: {true}")
    return list(zip(predictions, truth, strict=True))


# --- where the model looked -------------------------------------------------------------

def draw_looking_inside(model: torch.nn.Module, items: list[tuple[Prediction, str | None]],
                        classes: tuple[str, ...]) -> None:
    """For one chosen picture: where the model looked, and what each conv layer saw, each
    in a panel computed only while it is open (most visitors only want the answer)."""
    st.subheader("Inside the model")
    names = [f"{p.name}: predicted {p.label} ({format_percent(p.top(1)[0][1], 0)})" if true is None else
             f"#{i + 1}, {p.name}: predicted {p.label} ({format_percent(p.top(1)[0][1], 0)}), "
             f"true class {true}" for i, (p, true) in enumerate(items)]
    choice = st.selectbox("Image", range(len(items)), key="predict.explain_image",
                          format_func=names.__getitem__, help="Which of the pictures above to look into.")
    prediction, true = items[min(choice, len(items) - 1)]
    app_state.panel_drawn_when_open("Where the model looked (Grad-CAM)", "predict.explain_open",
                                    ":material/visibility:",
                                    lambda: draw_explanation(model, prediction, true, classes))
    app_state.panel_drawn_when_open("What each convolution layer saw (feature maps)", "predict.features_open",
                                    ":material/layers:", lambda: draw_feature_maps(model, prediction))


def draw_explanation(model: torch.nn.Module, prediction: Prediction, true: str | None,
                     classes: tuple[str, ...]) -> None:
    """Grad-CAM (or saliency) for its predicted class and a class the user picks."""
    predicted = classes.index(prediction.label)
    ranked = list(np.argsort(-prediction.probabilities))
    # The other class to show: the true one when the answer is wrong, else the runner-up.
    default = classes.index(true) if true is not None and true != prediction.label else int(ranked[1])
    convs = [name for name, _ in model.conv_layers()]
    a, b, c = st.columns([2, 2, 1])
    share = [format_percent(p, 0) for p in prediction.probabilities]
    pick = a.selectbox("Compare with class", range(len(classes)), index=default,
                       format_func=lambda k: f"{classes[k]} ({share[k]})",
                       key=f"predict.explain_class.{prediction.name}",
                       help="Where the evidence for another class is; the true class when the "
                            "answer is wrong, else the second most likely, until you choose.")
    method = b.radio("Method", METHODS, horizontal=True, key="predict.explain_method")
    layer = c.selectbox("Layer", convs, index=len(convs) - 1, key="predict.explain_layer",
                        disabled=method != METHODS[0],
                        help="Grad-CAM's layer: the last conv layer by default (most about the "
                             "class, coarsest); earlier ones are sharper.")
    if layer not in convs:
        layer = convs[-1]

    def heat(k: int) -> np.ndarray:
        if method == METHODS[0]:
            return gradcam(model, prediction.pixels, k, layer)
        return saliency(model, prediction.pixels, k)

    short = "Grad-CAM" if method == METHODS[0] else "Saliency"
    panels = [("The image (32×32)", prediction.pixels),
              (f"{short}: {classes[predicted]} (predicted, {share[predicted]})",
               figures.overlay_heatmap(prediction.pixels, heat(predicted)))]
    if pick != predicted:
        panels.append((f"{short}: {classes[pick]} ({share[pick]})",
                       figures.overlay_heatmap(prediction.pixels, heat(pick))))
    st.plotly_chart(figures.explanation_figure(panels), width="stretch", key="predict.explain",
                    config={"displayModeBar": False})
    st.caption("Warm colours (yellow to red) mark where the evidence for that class is; where the "
               "picture shows through untinted, the class found nothing. " + HELP_EXPLAIN)


def draw_feature_maps(model: torch.nn.Module, prediction: Prediction) -> None:
    maps = feature_maps(model, prediction.pixels)
    most = max(len(m) for m in maps.values())
    shown = st.slider("Feature maps per layer", 8, max(8, min(64, most)), min(16, most), step=8,
                      key="predict.explain_channels", disabled=most <= 8)
    for name, layer_maps in maps.items():
        channels, height, width = layer_maps.shape
        scale = max(1, round(60 / height))  # tiles of about 60 pixels whatever the layer's size
        # PNG: these grids of flat tiles are 1-12 KB as PNG and 23-72 KB as st.image's JPEG.
        st.image(figures.feature_grid(layer_maps[:shown], columns=16, scale=scale, gap=3),
                 output_format="PNG", caption=f"{name}: the first {min(shown, channels)} of {channels} maps, "
                         f"{height}×{width} each")
    st.caption(HELP_FEATURES)


# --- the page ---------------------------------------------------------------------------

st.title("Predict")
st.caption("Show a trained network new pictures and see how sure it is about each class.")
app_views.sync("predict", run=app_views.run("predict.run"), mode=app_views.named("predict.mode", MODES))
chosen = draw_model_choice()
if chosen is not None:
    run, model = chosen
    classes = run.classes
    left, right = st.columns([3, 2])
    mode = left.radio("Images", list(MODES.values()), horizontal=True, key="predict.mode")
    if mode == TEST:
        shown = draw_test_images(model, classes, run.train_config.tta)
    else:
        top_k = right.slider("Classes to show", 1, len(classes), 5, key="predict.top_k",
                             help="How many of the most likely classes each chart lists.")
        draw = draw_uploads if mode == UPLOAD else draw_camera
        shown = draw(model, classes, run.train_config.tta, top_k)
    if shown:
        draw_looking_inside(model, shown, classes)
