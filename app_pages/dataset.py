"""Dataset page: where CIFAR-10 comes from, what is in it, and what the network is actually fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import app_figures as figures
import app_state
import app_views
from cifar_core import stats
from cifar_core.augment import AUGMENTATIONS, augmented_copies
from cifar_core.data import (
    ARCHIVE_NAME,
    ARCHIVE_URL,
    CifarData,
    DataError,
    as_presented_images,
    install_archive,
)
from cifar_core.model import CIFAR_MEAN, CIFAR_STD

SPLITS = {"train": "training", "val": "validation", "test": "test"}
AUGMENTATION_NOTES = {
    "none": "No augmentation: the network sees every training image exactly as stored, "
            "epoch after epoch, which makes it easier to memorise them.",
    "keras": "The presentation's recipe (Keras' ImageDataGenerator): every image is turned by up "
             "to 20 degrees, shifted by up to 20% of its width and height, and mirrored half of the "
             "time. Pixels pulled in from outside the picture repeat the nearest edge.",
    "crop_flip": "The standard CIFAR recipe: pad the image by 4 pixels (mirroring its border), cut "
                 "a random 32x32 window out of it, and mirror half of the images. Cheap, and it "
                 "keeps the picture undistorted.",
    "translate_flip": "The same with 2 pixels of padding instead of 4 (airbench's recipe): each image "
                      "moves by at most 2 pixels. Milder, so a short run learns from it faster.",
    "translate_altflip": "2-pixel shifts as in translate_flip, but the mirroring alternates: a "
                         "random half of the images is mirrored in odd epochs and the other half in "
                         "even ones, so every two epochs show each image both ways (airbench's "
                         "alternating flip). Within one epoch it looks like the examples here.",
}


# --- getting the data -------------------------------------------------------------

def installed(message: str) -> None:
    """Drop the cached (missing or old) dataset and start the page again with the new one."""
    app_state.reload_data()
    pixel_histograms.clear()  # keyed on the folder, which may now hold different images
    st.session_state["dataset.installed"] = message
    st.rerun()


def install_upload(raw: bytes, folder: Path) -> None:
    try:
        with st.spinner("Checking every batch in the archive..."):
            install_archive(raw, folder)
    except DataError as err:
        st.error(f"That archive was not installed: {err}")
        return
    installed(f"Checked and installed the uploaded archive in {folder}.")


def draw_data_panel() -> None:
    folder = app_state.install_folder()
    st.markdown(
        f"The app reads CIFAR-10 from **`{folder}`** (the `CIFAR10_DIR` environment variable, "
        f"or `./data` when it is not set). It needs the *python version* of the dataset: "
        f"[{ARCHIVE_NAME}]({ARCHIVE_URL}), 163 MB, or the `cifar-10-batches-py/` folder inside it. "
        "Either way every batch is checked before it is used, and a bad archive never replaces "
        "data that is already there.")
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Download it from the University of Toronto**")
        status = app_state.downloader().status()
        # One download for the whole server: the button starts it (again, after a failure);
        # every page that needs the data shows its progress.
        if st.button("Download CIFAR-10 (163 MB)", icon=":material/download:", key="dataset.download",
                     disabled=status.active):
            app_state.start_download(explicit=True)
            st.rerun()
        if status.active:
            app_state.draw_download_progress()
    with right:
        upload = st.file_uploader(f"Or upload {ARCHIVE_NAME}", type=["gz", "tgz"], key="dataset.upload")
        if upload is not None and st.button("Check and install", icon=":material/inventory:",
                                            key="dataset.install"):
            install_upload(upload.getvalue(), folder)


# --- what is in it --------------------------------------------------------------------

def draw_overview(data: CifarData) -> None:
    cols = st.columns(5)
    cols[0].metric("Classes", len(data.classes))
    cols[1].metric("Training images", f"{len(data.y_train):,}")
    cols[2].metric("Validation images", f"{len(data.y_val):,}")
    cols[3].metric("Test images", f"{len(data.y_test):,}")
    cols[4].metric("Image size", "32 × 32",
                   help="Width × height in pixels; every pixel has 3 colour values (red, green, blue).")
    st.markdown("**The 10 classes:** " + " · ".join(data.classes))
    st.caption(
        "Each image is 32 × 32 pixels with 3 colour channels (red, green, blue), each a whole "
        "number from 0 to 255. The 50,000 training images are split 80/20 into training and "
        "validation with scikit-learn's `train_test_split(random_state=42)`, as in the "
        "presentation; the 10,000 test images are kept apart until the very end.")


def draw_class_counts(data: CifarData) -> None:
    labels = {split: data.split(split)[1] for split in SPLITS}
    counts = stats.class_count_table(labels, data.classes)
    st.plotly_chart(figures.class_counts_figure(counts), key="dataset.class_counts")
    st.caption(
        "The test set has exactly 1,000 images per class. The training/validation split is "
        "random rather than per class, so those counts wobble a little around 4,000 and 1,000; "
        "the classes are still balanced, so accuracy is a fair summary.")


@app_state.fragment("Dataset: images")
def draw_image_grid(data: CifarData) -> None:
    left, middle, right = st.columns([2, 3, 1], vertical_alignment="bottom")
    split = left.selectbox("Split", list(SPLITS), format_func=SPLITS.get, key="dataset.grid_split")
    per_class = middle.slider("Images per class", 4, 16, 10, key="dataset.grid_n")
    if right.button("Reshuffle", icon=":material/shuffle:", key="dataset.reshuffle"):
        st.session_state["dataset.grid_seed"] = st.session_state.get("dataset.grid_seed", 0) + 1
    seed = st.session_state.setdefault("dataset.grid_seed", 0)
    images, labels = data.split(split)
    with st.container(key="dataset.grid"):
        for name, index in zip(data.classes, stats.pick_per_class(labels, per_class, seed), strict=False):
            label, row = st.columns([3, 17], vertical_alignment="center")  # room for "automobile"
            label.markdown(f"**{name}**")
            if len(index):
                row.image(figures.png(figures.image_row(images[index], scale=3)), output_format="PNG")
    st.caption("Enlarged by repeating pixels rather than smoothing them, so you see what the "
               "network sees: 32 × 32 pixels.")


@st.cache_data(show_spinner="Counting pixel values...", max_entries=6)
def pixel_histograms(source: str, split: str, n_images: int, _images: np.ndarray) -> np.ndarray:
    # The arrays are not hashed (too big); the source, split and size identify them.
    return stats.pixel_histograms(_images)


def draw_pixel_statistics(data: CifarData) -> None:
    split = st.columns(3)[0].selectbox("Split", list(SPLITS), format_func=SPLITS.get,
                                       key="dataset.stats_split")
    images, _ = data.split(split)
    histograms = pixel_histograms(str(data.source), split, len(images), images)
    table = stats.channel_stats_table(histograms)
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.dataframe(table, hide_index=True, key="dataset.channel_stats", column_config={
            col: st.column_config.NumberColumn(format="%.4f") for col in table.columns[1:]})
        st.caption(
            f"Computed exactly over all {len(images):,} {SPLITS[split]} images "
            f"({len(images) * 1024:,} pixels per channel), on a 0 to 1 scale. Blue is darker "
            "on average and every channel spreads widely. With *standardize input* on (Model "
            "page), the network subtracts each channel's mean and divides by its standard "
            "deviation (fixed values measured on the training images: mean "
            f"{', '.join(f'{v:.4f}' for v in CIFAR_MEAN)}, std {', '.join(f'{v:.4f}' for v in CIFAR_STD)}), "
            "so all three inputs arrive centred on 0 with a spread of about 1.")
    with right:
        st.plotly_chart(figures.channel_histogram_figure(histograms), key="dataset.histograms")


@app_state.fragment("Dataset: augmentation")
def draw_augmentation(data: CifarData) -> None:
    current = app_state.get_config()[2].augmentation
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    kind = left.radio(
        "Augmentation", AUGMENTATIONS, index=AUGMENTATIONS.index(current), horizontal=True,
        key="dataset.aug_kind",
        format_func=lambda k: f"{k} (your configuration)" if k == current else k,
        help="Set the augmentation used for training on the Model page; here you can compare.")
    if right.button("Re-roll", icon=":material/casino:", key="dataset.reroll"):
        st.session_state["dataset.aug_seed"] = st.session_state.get("dataset.aug_seed", 0) + 1
    seed = st.session_state.setdefault("dataset.aug_seed", 0)
    st.markdown(AUGMENTATION_NOTES[kind])
    rng = np.random.default_rng(1000 + seed)
    images = data.x_train[rng.choice(len(data.x_train), size=min(5, len(data.x_train)), replace=False)]
    versions = augmented_copies(images, kind, copies=6, seed=seed)
    head_original, head_augmented = st.columns([1, 6])
    head_original.caption("original")
    head_augmented.caption("six random versions the network could be shown instead")
    for image, copies in zip(images, versions, strict=True):
        original, augmented = st.columns([1, 6])
        original.image(figures.png(image, scale=3), output_format="PNG")
        augmented.image(figures.png(figures.image_row(copies, scale=3, gap=6)), output_format="PNG")
    st.caption(
        "Augmentation is applied afresh every time an image is drawn for training, so over "
        "many epochs the network never sees quite the same picture twice. It learns that a "
        "cat is still a cat when mirrored or shifted, instead of memorising pixels. "
        "Validation and test images are never augmented.")


def draw_channel_order(data: CifarData) -> None:
    st.markdown(
        "Every image is stored as one row of 3,072 numbers: first all 1,024 red values (row by "
        "row), then all 1,024 green values, then all 1,024 blue. The presentation turned the "
        "rows into pictures with `reshape(-1, 32, 32, 3)`, which takes three *neighbouring red "
        "values* as one pixel's red, green and blue. The right way is "
        "`reshape(-1, 3, 32, 32)` (three planes) followed by moving the colour axis last.")
    st.code("images = rows.reshape(-1, 32, 32, 3)                         # the presentation: scrambled\n"
            "images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # correct", language="python")
    rng = np.random.default_rng(7)
    pick = rng.choice(len(data.x_train), size=min(8, len(data.x_train)), replace=False)
    correct = data.x_train[pick]
    scrambled = as_presented_images(correct)
    st.markdown("**Read correctly**")
    st.image(figures.png(figures.image_row(correct, scale=4, gap=6)), output_format="PNG")
    st.markdown("**Read as in the presentation**: the same rows, the same numbers")
    st.image(figures.png(figures.image_row(scrambled, scale=4, gap=6)), output_format="PNG")
    st.caption(
        "In the scrambled version the top third holds only red values, the middle third green "
        "and the bottom third blue, each squeezed into three small copies side by side: a "
        "3 × 3 grid of tiny, falsely coloured pictures. The scrambling is the same for every "
        "image, so a network can still learn something from it (the presentation reached "
        "49% validation accuracy), but nearby pixels are no longer neighbours, which is "
        "exactly what convolutions rely on. Reading the images correctly lifts the same "
        "network to about 68%.")


# --- the page -------------------------------------------------------------------------

st.title("Dataset")
st.caption("CIFAR-10: 60,000 small colour photos in 10 classes, collected by Alex Krizhevsky, "
           "Vinod Nair and Geoffrey Hinton.")

SECTIONS = {"Images": draw_image_grid, "Classes": draw_class_counts,
            "Pixel statistics": draw_pixel_statistics, "Augmentation": draw_augmentation,
            "Channel-order mistake": draw_channel_order}
app_views.sync("dataset", section=app_views.tab("dataset.section", SECTIONS))

if message := st.session_state.pop("dataset.installed", None):
    st.success(message)

WORKS_WITHOUT_DATA = """
**What works now, without the images:**
- **Model**: every setting of the network, its layer table and parameter count.
- **Predict**: your own photos, classified by the bundled models.
- **Evaluate**: the bundled models' results on the test set (confusion matrix, scores per class).
- **Experiments**: the presentation's claims, measured on the real data.

Training, this page's pictures, random test images and the mistakes gallery need CIFAR-10.
"""


def draw_without_data(error: DataError | None) -> None:
    status = app_state.downloader().status()
    if status.active:
        st.info("CIFAR-10 is being downloaded for everyone on this server (163 MB, checked "
                "before it is used); this page fills in by itself when it is there.",
                icon=":material/downloading:")
        app_state.draw_download_progress()
    else:
        failed = " The automatic download failed (offline?)." if status.state == "failed" else ""
        st.warning(f"No usable CIFAR-10 yet on this server.{failed}", icon=":material/cloud_off:")
        st.caption(status.error if status.state == "failed" else str(error or ""))
    st.markdown(WORKS_WITHOUT_DATA)
    draw_data_panel()


data, error = app_state.load_data()
if data is None:
    draw_without_data(error)
else:
    with st.expander(f"Data source: `{data.source}`", icon=":material/folder:"):
        draw_data_panel()
    draw_overview(data)
    # Only the open tab is drawn: all five together sent 26 pictures (1.9 MB) every view.
    app_state.tabs_drawn_when_open("dataset.section", {
        name: lambda draw=draw: draw(data) for name, draw in SECTIONS.items()})
