"""Property-based fuzzing of the trust boundaries: whatever bytes arrive, decode_image raises only
ImageError and the dataset readers only DataError; what they accept has the promised shape.

Random bytes, and random mutations (flipped, overwritten, inserted, deleted and truncated bytes)
of valid PNG/JPEG/GIF files, pickled batches of both flavours and tar.gz archives. Example
counts are kept moderate so the file runs in well under half a minute.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, batch_dict, dumps, synthetic_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifar_core import data as cdata
from cifar_core.data import (
    BATCH_FILES,
    FOLDER_NAME,
    DataError,
    parse_batch,
    parse_meta,
    read_archive,
    safe_unpickle,
)
from cifar_core.inference import ImageError, decode_image, to_cifar

pytestmark = pytest.mark.filterwarnings("ignore")  # Pillow warns about corrupt EXIF, numpy about numpy.core

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- seeds --------------------------------------------------------------------------------

def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = picture.convert("P")
    return [
        _encode(picture, "PNG"),
        _encode(picture, "PNG", exif=exif),
        _encode(palette, "PNG", transparency=3),
        _encode(Image.fromarray(rng.integers(0, 65535, (6, 6), dtype=np.uint16)), "PNG"),
        _encode(picture, "JPEG", quality=80, exif=exif),
        _encode(picture.convert("CMYK"), "JPEG"),
        _encode(picture, "GIF", save_all=True, append_images=[picture.rotate(90)], duration=20),
        _encode(picture, "WEBP", lossless=True),
        _encode(picture.convert("RGBA"), "BMP"),
    ]


IMAGE_SEEDS = _image_seeds()


def _batch_seeds() -> list[bytes]:
    rows, labels = synthetic_images(3, seed=1)
    batch = batch_dict(rows, labels, "fuzz")
    return [dumps(batch, "py2"), dumps(batch, "py3")]


BATCH_SEEDS = _batch_seeds()
META_SEED = dumps({b"label_names": [c.encode() for c in CLASSES]}, "py3")


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return out.getvalue()


def _archive_files() -> dict[str, bytes]:
    files = {}
    for i, name in enumerate(BATCH_FILES):
        rows, labels = synthetic_images(2, seed=i)
        files[name] = dumps(batch_dict(rows, labels, name), "py3")
    files[cdata.META_FILE] = META_SEED
    return files


ARCHIVE_FILES = _archive_files()
TAR_SEED = _tar(ARCHIVE_FILES)


# --- mutations --------------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    raw = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if kind == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            raw[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del raw[at:]
        else:
            raw[at:at] = raw[at:at + draw(st.integers(1, 64))]
    return bytes(raw)


# --- images -------------------------------------------------------------------------------------

def _decode_or_image_error(raw: bytes) -> None:
    try:
        image = decode_image(raw, "fuzz.png")
    except ImageError as err:
        assert str(err).startswith("fuzz.png: ")
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    pixels = to_cifar(image)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_ever_raise_image_error(raw: bytes) -> None:
    _decode_or_image_error(raw)


@FUZZ
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP",
                        b"BM"]), st.binary(max_size=512))
def test_random_bytes_after_a_real_signature_only_ever_raise_image_error(magic: bytes, tail: bytes) -> None:
    _decode_or_image_error(magic + tail)


@settings(FUZZ, max_examples=800)
@given(mutated(IMAGE_SEEDS))
def test_mutated_images_decode_or_raise_image_error(raw: bytes) -> None:
    _decode_or_image_error(raw)


def test_every_image_seed_decodes() -> None:
    for raw in IMAGE_SEEDS:
        _decode_or_image_error(raw)
        assert decode_image(raw).size in ((16, 12), (12, 16), (6, 6))


# --- pickled batches ------------------------------------------------------------------------------

def _parse_or_data_error(raw: bytes) -> None:
    try:
        rows, labels = parse_batch(raw, "data_batch_1")
    except DataError as err:
        assert str(err).startswith("data_batch_1: ")
    else:
        assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == 3072
        assert labels.dtype == np.int64 and labels.shape == (len(rows),) and len(rows) >= 1
        assert labels.min() >= 0 and labels.max() <= 9
    try:
        safe_unpickle(raw, "x")
    except DataError:
        pass
    try:
        parse_meta(raw, "batches.meta")
    except DataError:
        pass


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_only_ever_raise_data_error(raw: bytes) -> None:
    _parse_or_data_error(raw)


@FUZZ
@given(st.sampled_from([b"\x80\x02", b"\x80\x04\x95", b"(", b"}", b"\x80\x05"]), st.binary(max_size=256))
def test_random_opcodes_after_a_pickle_header_only_ever_raise_data_error(head: bytes, tail: bytes) -> None:
    _parse_or_data_error(head + tail)


@settings(FUZZ, max_examples=800)
@given(mutated(BATCH_SEEDS))
def test_mutated_batches_parse_or_raise_data_error(raw: bytes) -> None:
    _parse_or_data_error(raw)


@FUZZ
@given(mutated([META_SEED]))
def test_mutated_meta_parses_or_raises_data_error(raw: bytes) -> None:
    try:
        classes = parse_meta(raw, "batches.meta")
    except DataError:
        return
    assert len(classes) == 10 and all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes)


# --- archives ------------------------------------------------------------------------------------

def _read_or_data_error(archive: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        # Small caps keep each example fast; the code paths are the same.
        patch.setattr(cdata, "MAX_UNPACKED_BYTES", 1 << 20)
        patch.setattr(cdata, "MAX_MEMBER_BYTES", 64 << 10)
        try:
            files = read_archive(archive)
        except DataError:
            return
    assert set(files) == set(BATCH_FILES)
    assert all(isinstance(raw, bytes) and len(raw) <= 64 << 10 for raw in files.values())


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_as_an_archive_only_ever_raise_data_error(raw: bytes) -> None:
    _read_or_data_error(raw)
    _read_or_data_error(gzip.compress(raw))


@FUZZ
@given(mutated([TAR_SEED]))
def test_mutated_tar_inside_good_gzip_reads_or_raises_data_error(tar: bytes) -> None:
    _read_or_data_error(gzip.compress(tar, compresslevel=1))


@FUZZ
@given(mutated([gzip.compress(TAR_SEED, compresslevel=6)]))
def test_mutated_compressed_archive_reads_or_raises_data_error(archive: bytes) -> None:
    _read_or_data_error(archive)


def test_the_archive_seed_reads(tmp_path: Path) -> None:
    assert read_archive(gzip.compress(TAR_SEED)) == ARCHIVE_FILES
