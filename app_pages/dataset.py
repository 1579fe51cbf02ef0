"""Dataset page: where CIFAR-10 comes from, what is in it, and what the network is actually fed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import app_content
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
AUGMENTATION_NOTES = app_content.sections("augmentations")  # by augmentation name
TEXT = app_content.sections("dataset")


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
    st.markdown(TEXT["data-location"].format(folder=folder, archive=ARCHIVE_NAME, url=ARCHIVE_URL))
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
    st.caption(TEXT["overview"])


def draw_class_counts(data: CifarData) -> None:
    labels = {split: data.split(split)[1] for split in SPLITS}
    counts = stats.class_count_table(labels, data.classes)
    st.plotly_chart(figures.class_counts_figure(counts), key="dataset.class_counts")
    st.caption(TEXT["class-counts"])


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
    st.caption(TEXT["image-grid"])


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
        st.caption(TEXT["pixel-statistics"].format(
            images=f"{len(images):,}", split=SPLITS[split], pixels=f"{len(images) * 1024:,}",
            mean=", ".join(f"{v:.4f}" for v in CIFAR_MEAN), std=", ".join(f"{v:.4f}" for v in CIFAR_STD)))
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
    st.caption(TEXT["augmentation"])


def draw_channel_order(data: CifarData) -> None:
    st.markdown(TEXT["channel-order"])
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
    st.caption(TEXT["scrambled"])


# --- the page -------------------------------------------------------------------------

st.title("Dataset")
st.caption(TEXT["intro"])

SECTIONS = {"Images": draw_image_grid, "Classes": draw_class_counts,
            "Pixel statistics": draw_pixel_statistics, "Augmentation": draw_augmentation,
            "Channel-order mistake": draw_channel_order}
app_views.sync("dataset", section=app_views.tab("dataset.section", SECTIONS))

if message := st.session_state.pop("dataset.installed", None):
    st.success(message)


def draw_without_data(error: DataError | None) -> None:
    status = app_state.downloader().status()
    if status.active:
        st.info(TEXT["downloading"], icon=":material/downloading:")
        app_state.draw_download_progress()
    else:
        failed = " The automatic download failed (offline?)." if status.state == "failed" else ""
        st.warning(f"No usable CIFAR-10 yet on this server.{failed}", icon=":material/cloud_off:")
        st.caption(status.error if status.state == "failed" else str(error or ""))
    st.markdown(TEXT["works-without-data"])
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
