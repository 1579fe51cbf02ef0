"""Hostile uploads for prediction: every file either decodes to the right upright RGB image or
raises one ImageError whose message names the file, with no chained traceback, no change to
global state and no file written; big files cost bounded time and memory.

All images are made here; nothing binary is stored in the repository.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import encode, noise
from PIL import Image, ImageFile

from cifar_core import inference
from cifar_core.config import ModelConfig
from cifar_core.data import DEFAULT_CLASSES
from cifar_core.inference import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    Prediction,
    decode_image,
    predict_files,
    predict_pixels,
    to_cifar,
)
from cifar_core.model import build_model

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt EXIF


# --- making files ---------------------------------------------------------------------

def marked(size: tuple[int, int], mark: int = 6) -> Image.Image:
    """Blue, with a red square in the top-left corner: shows where that corner went."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, mark, mark))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def grey_png_bomb(side: int) -> bytes:
    """A real, complete side x side black greyscale PNG: megapixels in a few tens of KB."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    return png(side, side, b"".join(packer.compress(row) for _ in range(side)) + packer.flush(),
               colour=0)


def with_exif_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def jpeg_claiming(width: int, height: int) -> bytes:
    raw = bytearray(encode(Image.new("RGB", (8, 8), RED), "JPEG"))
    sof = raw.find(b"\xff\xc0")
    raw[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def gif_claiming(width: int, height: int) -> bytes:
    raw = bytearray(encode(Image.new("RGB", (8, 8), RED), "GIF"))
    raw[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(raw)


def bmp_claiming(width: int, height: int) -> bytes:
    raw = bytearray(encode(Image.new("RGB", (8, 8), RED), "BMP"))
    raw[18:26] = struct.pack("<ii", width, height)
    return bytes(raw)


def webp_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose canvas is width x height around an 8x8 picture."""
    plain = encode(Image.new("RGB", (8, 8), RED), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + \
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + plain[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def colour(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.getpixel(xy), dtype=int)


def close(image: Image.Image, xy: tuple[int, int], rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.abs(colour(image, xy) - rgb).max() <= tol)


# --- checking outcomes ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Decoding writes no file and leaves Pillow's and the warnings module's settings alone."""
    monkeypatch.chdir(tmp_path)
    filters = list(warnings.filters)
    yield
    assert list(tmp_path.iterdir()) == []
    assert warnings.filters == filters
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS and ImageFile.LOAD_TRUNCATED_IMAGES is False


def refused(raw: bytes, name: str, pattern: str) -> str:
    """decode_image raises one clean ImageError for ``raw``; returns its message."""
    with pytest.raises(ImageError) as info:
        decode_image(raw, name)
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message and "Traceback" not in message
    err = info.value  # raised plainly or "from None": no chained traceback to show
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert re.search(pattern, message), message
    return message


def test_pillow_pixel_limit_is_the_module_limit() -> None:
    assert Image.MAX_IMAGE_PIXELS == inference.MAX_PIXELS == MAX_PIXELS


# --- not images, empty, truncated ------------------------------------------------------

@pytest.mark.parametrize("raw, pattern", [
    (b"", "empty"),
    (b"\x00", "not a supported image"),
    (b"just some text\n" * 40, "not a supported image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", "not a supported image"),
    (b"<html><script>alert(1)</script></html>", "not a supported image"),
    (b"PK\x03\x04" + b"\x00" * 100, "not a supported image"),  # a zip
    (b"\x89PNG\r\n\x1a\n", "not a supported image"),  # the signature alone
])
def test_non_images_are_refused(raw: bytes, pattern: str) -> None:
    refused(raw, "upload.png", pattern)


def test_oversized_file_is_refused_before_parsing() -> None:
    refused(b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_FILE_BYTES, "huge.png", r"larger than 20 MB")


@pytest.mark.parametrize("cut", [20, 40, 0.25, 0.5, 0.9])
def test_truncated_png_is_refused(cut: float) -> None:
    raw = encode(noise(), "PNG")
    keep = cut if isinstance(cut, int) else int(len(raw) * cut)
    refused(raw[:keep], "cut.png", "damaged or truncated|not a supported image")


def test_png_missing_only_its_end_chunk_still_gives_exact_pixels() -> None:
    image = noise()
    raw = encode(image, "PNG")
    assert raw.endswith(png_chunk(b"IEND", b""))
    decoded = decode_image(raw[:-12], "no-end.png")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_png_with_a_bad_checksum_is_refused() -> None:
    raw = bytearray(encode(noise(), "PNG"))
    raw[29] ^= 0xFF  # the IHDR CRC
    refused(bytes(raw), "crc.png", "not a supported image|damaged")


@pytest.mark.parametrize("cut", [3, 100, 0.5, -2])
def test_truncated_jpeg_is_refused(cut: float) -> None:
    raw = encode(noise(), "JPEG", quality=90)
    keep = cut if isinstance(cut, int) else int(len(raw) * cut)
    refused(raw[:keep], "cut.jpg", "damaged or truncated|not a supported image")


# --- decompression bombs and huge pictures ---------------------------------------------

@pytest.mark.parametrize("raw", [
    png(50000, 50000, zlib.compress(b"\x00" * 64)),
    png(10000, 10000, zlib.compress(b"\x00" * 64)),
    png(6400, 6400, zlib.compress(b"\x00" * 64)),  # 41 Mpx: just over
    png(2**31 - 1, 1, zlib.compress(b"\x00" * 64)),
    jpeg_claiming(65000, 65000),
    jpeg_claiming(10000, 10000),
    gif_claiming(65535, 65535),
    bmp_claiming(30000, 30000),
    webp_claiming(16000, 16000),
], ids=["png-50000", "png-10000", "png-41Mpx", "png-2^31-wide", "jpeg-65000", "jpeg-10000",
        "gif-65535", "bmp-30000", "webp-16000"])
def test_declared_size_over_the_limit_is_refused_before_decoding(raw: bytes) -> None:
    started = time.process_time()
    message = refused(raw, "bomb", "too large")
    assert "40 megapixels" in message
    assert time.process_time() - started < 0.5


def test_real_small_file_bomb_over_the_limit_is_refused_unread() -> None:
    raw = grey_png_bomb(7000)  # 49 Mpx of black in about 50 KB
    assert len(raw) < 200_000
    with PeakRSS() as peak:
        refused(raw, "bomb.png", "too large")
    assert peak.seconds < 0.5 and peak.grown_mb < 20


@pytest.mark.parametrize("text_chunk", [b"zTXt", b"iCCP"])
def test_compressed_metadata_bomb_is_refused(text_chunk: bytes) -> None:
    raw = encode(Image.new("RGB", (8, 8), RED), "PNG")
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)  # 64 MB of zeros in 64 KB
    payload = (b"Comment\x00\x00" if text_chunk == b"zTXt" else b"icc\x00\x00") + bomb
    evil = raw[:33] + png_chunk(text_chunk, payload) + raw[33:]
    with PeakRSS() as peak:
        refused(evil, "meta-bomb.png", "damaged|too large")
    assert peak.grown_mb < 40


class PeakRSS:
    """CPU time (immune to a busy machine) and growth of this process's peak resident memory
    over a block (Linux)."""

    def __enter__(self) -> PeakRSS:
        self.resettable = _reset_peak_rss()
        self.base = _peak_rss_mb()
        self.started = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.process_time() - self.started
        # Without a resettable peak, an earlier higher peak hides growth: report none.
        self.grown_mb = _peak_rss_mb() - self.base if self.resettable else 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def test_large_jpeg_is_decoded_in_draft_mode_cheaply() -> None:
    # 6000x4000 = 24 Mpx, under the limit: the decoder works at 1/4 scale.
    image = Image.new("RGB", (6000, 4000), GREEN)
    image.paste(RED, (0, 0, 3000, 4000))
    raw = encode(image, "JPEG", quality=80)
    del image
    with PeakRSS() as peak:
        decoded = decode_image(raw, "big.jpg")
        pixels = to_cifar(decoded)
    assert decoded.size == (1500, 1000)  # each side still >= JPEG_DRAFT_SIDE
    assert min(decoded.size) >= inference.JPEG_DRAFT_SIDE
    assert close(decoded, (10, 10), RED) and close(decoded, (1490, 990), GREEN)
    assert pixels.shape == (32, 32, 3)
    assert np.abs(pixels[16, 2].astype(int) - RED).max() <= 12
    assert peak.seconds < 2 and peak.grown_mb < 60  # full decode: 72 MB and more


def test_large_exif_rotated_jpeg_in_draft_mode_is_still_turned_upright() -> None:
    raw = with_exif_orientation(marked((4000, 2000), mark=400), "JPEG", 6)
    decoded = decode_image(raw, "rotated.jpg")
    assert decoded.size == (1000, 2000)  # decoded at 1/2 scale, then turned
    assert close(decoded, (990, 10), RED) and close(decoded, (10, 10), BLUE)


def test_largest_accepted_png_costs_bounded_time_and_memory() -> None:
    raw = grey_png_bomb(6000)  # 36 Mpx (under the 40 Mpx limit) in about 40 KB
    with PeakRSS() as peak:
        pixels = to_cifar(decode_image(raw, "big.png"))
    assert pixels.shape == (32, 32, 3) and pixels.max() == 0
    # Greyscale 36 MB decoded, 108 MB as RGB; a few seconds on a slow machine.
    assert peak.seconds < 10 and peak.grown_mb < 400


# --- odd but valid pictures ------------------------------------------------------------

def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE),
              Image.new("RGB", (16, 16), GREEN)]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(raw)).n_frames == 3
    decoded = decode_image(raw, "anim.gif")
    assert decoded.mode == "RGB" and decoded.size == (16, 16) and close(decoded, (8, 8), RED, 4)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_other_animations_use_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    raw = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **options)
    assert getattr(Image.open(io.BytesIO(raw)), "n_frames", 1) == 2
    assert close(decode_image(raw, f"anim.{fmt.lower()}"), (8, 8), RED, 4)


def test_multi_picture_jpeg_uses_its_first_picture() -> None:
    raw = encode(Image.new("RGB", (16, 16), RED), "MPO", save_all=True,
                 append_images=[Image.new("RGB", (16, 16), BLUE)])
    assert Image.open(io.BytesIO(raw)).format == "MPO"
    assert close(decode_image(raw, "camera.jpg"), (8, 8), RED)


def test_16_bit_png_keeps_its_brightness() -> None:
    levels = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    raw = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")
    decoded = np.asarray(decode_image(raw, "deep.png"))
    # value / 257: a dark picture stays dark rather than being stretched to white.
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 4, 128, 255])
    assert (decoded == decoded[..., :1]).all()


def test_16_bit_rgb_png_is_read() -> None:
    samples = np.zeros((4, 4, 3), ">u2")
    samples[..., 0], samples[..., 2] = 0xFFFF, 0x8000
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)
    decoded = decode_image(png(4, 4, zlib.compress(rows), depth=16, colour=2), "rgb48.png")
    assert decoded.mode == "RGB" and close(decoded, (1, 1), (255, 0, 128), 1)


def test_palette_with_partial_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (30, 10), 0)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0, 0, 0] * 253)
    image.paste(1, (10, 0, 20, 10))
    image.paste(2, (20, 0, 30, 10))
    # Index 0 fully transparent, 1 half transparent, 2 opaque.
    decoded = decode_image(encode(image, "PNG", transparency=bytes([0, 128, 255])), "pal.png")
    assert tuple(colour(decoded, (5, 5))) == WHITE
    assert close(decoded, (15, 5), (127, 127, 255), 2)
    assert tuple(colour(decoded, (25, 5))) == GREEN


def test_gif_transparency_is_white() -> None:
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(0, (10, 0, 20, 10))
    decoded = decode_image(encode(image, "GIF", transparency=0), "clear.gif")
    assert close(decoded, (5, 5), RED, 0) and tuple(colour(decoded, (15, 5))) == WHITE


@pytest.mark.parametrize("cmyk, rgb", [((0, 255, 255, 0), RED), ((255, 0, 255, 0), GREEN),
                                       ((0, 0, 0, 0), WHITE)])
def test_cmyk_jpeg_becomes_the_right_rgb(cmyk: tuple, rgb: tuple) -> None:
    raw = encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)
    assert Image.open(io.BytesIO(raw)).mode == "CMYK"
    decoded = decode_image(raw, "print.jpg")
    assert decoded.mode == "RGB" and close(decoded, (8, 8), rgb)


# Where the top-left corner of the stored 40x20 picture is displayed, for each EXIF orientation.
ORIENTATIONS = {1: ("wide", "top-left"), 2: ("wide", "top-right"), 3: ("wide", "bottom-right"),
                4: ("wide", "bottom-left"), 5: ("tall", "top-left"), 6: ("tall", "top-right"),
                7: ("tall", "bottom-right"), 8: ("tall", "bottom-left")}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    shape, corner = ORIENTATIONS[orientation]
    decoded = decode_image(with_exif_orientation(marked((40, 20)), "PNG", orientation), "o.png")
    width, height = (40, 20) if shape == "wide" else (20, 40)
    assert decoded.size == (width, height)
    x = 2 if corner.endswith("left") else width - 3
    y = 2 if corner.startswith("top") else height - 3
    assert tuple(colour(decoded, (x, y))) == RED
    assert tuple(colour(decoded, (width - 1 - x, height - 1 - y))) == BLUE


def test_exif_orientation_6_in_a_jpeg_turns_a_wide_photo_tall() -> None:
    decoded = decode_image(with_exif_orientation(marked((40, 20)), "JPEG", 6), "phone.jpg")
    assert decoded.size == (20, 40)
    assert close(decoded, (17, 2), RED, 40) and close(decoded, (2, 2), BLUE, 40)
    assert close(decoded, (10, 30), BLUE)


@pytest.mark.parametrize("exif", [
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\xff\xff",
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
    b"\x00" * 40,
], ids=["orientation-outside-1-8", "offset-past-the-end", "zeros"])
def test_junk_exif_is_ignored_or_refused(exif: bytes) -> None:
    raw = encode(Image.new("RGB", (16, 8), RED), "PNG", exif=exif)
    try:
        decoded = decode_image(raw, "junk-exif.png")
    except ImageError as err:
        assert str(err).startswith("junk-exif.png: ")
    else:
        assert decoded.size == (16, 8) and tuple(colour(decoded, (3, 3))) == RED


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_one_pixel_image_fills_the_32x32_input(fmt: str) -> None:
    raw = encode(Image.new("RGB", (1, 1), (200, 100, 50)), fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    decoded = decode_image(raw, f"dot.{fmt.lower()}")
    assert decoded.size == (1, 1)
    pixels = to_cifar(decoded)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    tol = 0 if fmt in ("PNG", "BMP") else 8
    assert np.abs(pixels.reshape(-1, 3).astype(int) - (200, 100, 50)).max() <= tol


@pytest.mark.parametrize("size", [(1, 500), (500, 1)])
def test_one_pixel_wide_strips_are_read(size: tuple[int, int]) -> None:
    pixels = to_cifar(decode_image(encode(Image.new("RGB", size, RED), "PNG"), "strip.png"))
    assert pixels.shape == (32, 32, 3) and (pixels == RED).all()


# --- extensions that lie -----------------------------------------------------------------

def test_png_named_jpg_is_read_by_its_content() -> None:
    image = noise()
    decoded = decode_image(encode(image, "PNG"), "holiday.jpg")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_jpeg_named_png_is_read_by_its_content() -> None:
    assert close(decode_image(encode(Image.new("RGB", (16, 16), RED), "JPEG"), "x.png"), (8, 8), RED)


@pytest.mark.parametrize("raw, fmt", [
    (b"Dear diary, today I trained a CNN.\n" * 10, "text"),
    (encode(Image.new("RGB", (8, 8), RED), "TIFF"), "TIFF"),
    (encode(Image.new("RGB", (8, 8), RED), "ICO"), "ICO"),
    (encode(Image.new("RGB", (8, 8), RED), "PPM"), "PPM"),
])
def test_other_content_named_png_gets_a_clear_message(raw: bytes, fmt: str) -> None:
    message = refused(raw, "photo.png", "not a supported image")
    assert "PNG, JPEG, WEBP, BMP, GIF" in message


# --- several files at once ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.25), dense_units=(16,),
                                   dense_dropout=(0.25,))).eval()


def test_predict_files_answers_every_file_in_order(model: torch.nn.Module) -> None:
    good = {"red.png": encode(Image.new("RGB", (20, 20), RED), "PNG"),
            "noise.jpg": encode(noise(), "JPEG", quality=95),
            "lying.jpg": encode(noise(seed=3), "PNG"),
            "dot.gif": encode(Image.new("RGB", (1, 1), BLUE), "GIF")}
    bad = {"notes.png": b"shopping list\n", "empty.jpg": b"", "bomb.png": png(50000, 50000, b""),
           "cut.png": encode(noise(), "PNG")[:300], "doc.png": encode(noise(), "TIFF")}
    order = ["notes.png", "red.png", "empty.jpg", "noise.jpg", "bomb.png", "lying.jpg", "cut.png",
             "dot.gif", "doc.png"]
    files = [(name, good.get(name, bad.get(name))) for name in order]
    results = predict_files(model, files, DEFAULT_CLASSES)
    assert len(results) == len(order)
    for name, result in zip(order, results):
        if name in good:
            assert isinstance(result, Prediction) and result.name == name
            assert result.probabilities.shape == (10,)
            assert abs(float(result.probabilities.sum()) - 1) < 1e-5
        else:
            assert isinstance(result, ImageError) and str(result).startswith(f"{name}: ")
    # Each good file's prediction is what the model says about that file alone.
    for name, result in zip(order, results):
        if name in good:
            alone = predict_pixels(model, to_cifar(decode_image(good[name], name))[None],
                                   DEFAULT_CLASSES, [name])[0]
            np.testing.assert_allclose(result.probabilities, alone.probabilities, atol=1e-6)


def test_predict_files_with_nothing_good_returns_only_errors(model: torch.nn.Module) -> None:
    results = predict_files(model, [("a.png", b""), ("b.png", b"nope")], DEFAULT_CLASSES)
    assert [type(r) for r in results] == [ImageError, ImageError]


def test_decoding_never_touches_the_disk(tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    for raw in (encode(noise(), "PNG"), b"junk", png(50000, 50000, b"")):
        try:
            decode_image(raw, "x.png")
        except ImageError:
            pass
    assert sorted(os.listdir(tmp_path)) == before
