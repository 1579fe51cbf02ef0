"""Uploaded pictures: every odd kind of file decodes to an upright RGB image or raises
ImageError, and the 32x32 image and its prediction match a by-hand computation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import encode, noise
from PIL import Image

from cifar_core.config import ModelConfig
from cifar_core.data import DEFAULT_CLASSES
from cifar_core.inference import ImageError, decode_image, predict_files, predict_pixels, to_cifar
from cifar_core.model import build_model

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def halves(left: tuple, right: tuple, size: tuple[int, int] = (40, 20)) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def colour(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.getpixel(xy), dtype=int)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))


# --- decoding -------------------------------------------------------------------------

def test_png_decodes_to_the_exact_pixels() -> None:
    image = noise()
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.mode == "RGB" and decoded.size == (48, 40)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_jpeg_decodes_close_to_the_original() -> None:
    image = halves(RED, BLUE)
    decoded = decode_image(encode(image, "JPEG", quality=95))
    assert decoded.mode == "RGB" and decoded.size == image.size
    assert np.abs(np.asarray(decoded, int) - np.asarray(image, int)).mean() < 8


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(raw)).n_frames == 2
    decoded = decode_image(raw)
    assert decoded.mode == "RGB"
    assert np.abs(colour(decoded, (8, 8)) - RED).max() <= 4


def test_palette_transparency_becomes_white() -> None:
    image = Image.new("P", (20, 10), 0)
    image.putpalette([0, 255, 0] + [0, 0, 0] * 255)  # index 0 green (transparent), 1 black
    image.paste(1, (10, 0, 20, 10))
    raw = encode(image, "PNG", transparency=0)
    decoded = decode_image(raw)
    assert tuple(colour(decoded, (2, 5))) == WHITE
    assert tuple(colour(decoded, (15, 5))) == BLACK


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (5, 0, 10, 10))
    decoded = decode_image(encode(image.convert(mode), "PNG"))
    assert tuple(colour(decoded, (1, 1))) == WHITE
    expected = BLUE if mode == "RGBA" else (29, 29, 29)  # blue as grey: 0.114 * 255
    assert np.abs(colour(decoded, (8, 8)) - expected).max() <= 1


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    raw = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")
    decoded = np.asarray(decode_image(raw), int)
    assert decoded.shape == (8, 64, 3)
    row = decoded[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and 120 <= row[32] <= 135
    assert np.all(np.diff(row) >= 0) and (row == 255).sum() <= 2


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    raw = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(raw)).mode == "CMYK"
    decoded = decode_image(raw)
    assert decoded.mode == "RGB"
    assert np.abs(colour(decoded, (8, 8)) - RED).max() <= 10


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    image = halves(RED, BLUE, (40, 20))  # stored wide: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(image, "JPEG", quality=95, exif=exif))
    assert decoded.size == (20, 40)  # displayed tall
    assert np.abs(colour(decoded, (10, 5)) - RED).max() <= 10  # the left edge is now the top
    assert np.abs(colour(decoded, (10, 35)) - BLUE).max() <= 10


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (b"hello, this is a text file\n" * 20, "not a supported image"),
    (bytes(range(256)) * 8, "not a supported image"),
    (b"%PDF-1.4\n" + b"0" * 100, "not a supported image"),
])
def test_non_images_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(raw, "upload.bin")


def test_truncated_png_is_refused() -> None:
    raw = encode(noise((64, 64)), "PNG")
    with pytest.raises(ImageError, match="truncated|damaged"):
        decode_image(raw[: len(raw) // 2], "half.png")


def test_truncated_jpeg_is_refused() -> None:
    raw = encode(noise((64, 64)), "JPEG")
    with pytest.raises(ImageError):
        decode_image(raw[: len(raw) // 2], "half.jpg")


def test_formats_outside_the_list_are_refused() -> None:
    with pytest.raises(ImageError, match="not a supported image"):
        decode_image(encode(noise(), "TIFF"))


@pytest.mark.parametrize("side", [7000, 12000])
def test_huge_declared_size_is_refused_before_decoding(side: int) -> None:
    with pytest.raises(ImageError, match="too large|not a supported image"):
        decode_image(png_header_only(side, side), "bomb.png")


def test_error_names_the_file() -> None:
    with pytest.raises(ImageError, match="^holiday.png: "):
        decode_image(b"nope", "holiday.png")


# --- to 32x32 --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(32, 32), (640, 480), (31, 200), (1, 1)])
def test_to_cifar_gives_32x32_rgb_uint8(size: tuple[int, int]) -> None:
    pixels = to_cifar(noise(size))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_to_cifar_returns_a_writable_array() -> None:
    # A read-only array makes torch warn when it becomes a tensor for prediction.
    assert to_cifar(noise()).flags.writeable


def test_to_cifar_crops_the_centre_square() -> None:
    image = Image.new("RGB", (96, 32), RED)
    image.paste(GREEN, (32, 0, 64, 32))
    image.paste(BLUE, (64, 0, 96, 32))
    pixels = to_cifar(image).astype(int)
    assert np.abs(pixels - GREEN).max() <= 2


def test_to_cifar_of_a_32x32_image_is_the_image() -> None:
    image = noise((32, 32))
    np.testing.assert_array_equal(to_cifar(image), np.asarray(image))


# --- predictions -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(conv_filters=(8, 16), conv_dropout=(0.0, 0.0), dense_units=(16,),
                                   dense_dropout=(0.0,), standardize_input=True)).eval()


def test_prediction_equals_the_model_applied_by_hand(model: torch.nn.Module) -> None:
    pixels = np.stack([to_cifar(noise(seed=s)) for s in range(3)])
    predictions = predict_pixels(model, pixels, DEFAULT_CLASSES)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = torch.softmax(model(x), 1).numpy()
    for p, e in zip(predictions, expected):
        np.testing.assert_allclose(p.probabilities, e, rtol=1e-5, atol=1e-6)
        assert p.label == DEFAULT_CLASSES[int(e.argmax())]


def test_top_k_is_sorted_and_sums_at_most_one(model: torch.nn.Module) -> None:
    prediction = predict_pixels(model, to_cifar(noise())[None], DEFAULT_CLASSES)[0]
    top = prediction.top(3)
    assert len(top) == 3 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0][0] == prediction.label
    assert sum(p for _, p in prediction.top(10)) == pytest.approx(1, abs=1e-5)


def test_predict_files_keeps_order_and_reports_bad_files(model: torch.nn.Module) -> None:
    good_a, good_b = encode(noise(seed=1), "PNG"), encode(noise(seed=2), "JPEG")
    results = predict_files(model, [("a.png", good_a), ("notes.txt", b"text"), ("b.jpg", good_b),
                                    ("empty.png", b"")], DEFAULT_CLASSES)
    assert [type(r).__name__ for r in results] == ["Prediction", "ImageError", "Prediction", "ImageError"]
    assert results[0].name == "a.png" and results[2].name == "b.jpg"
    assert "notes.txt" in str(results[1]) and "empty" in str(results[3])
    expected = predict_pixels(model, to_cifar(decode_image(good_b))[None], DEFAULT_CLASSES)[0]
    np.testing.assert_allclose(results[2].probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results[2].pixels, expected.pixels)


def test_predict_files_with_only_bad_files(model: torch.nn.Module) -> None:
    results = predict_files(model, [("x", b"junk")], DEFAULT_CLASSES)
    assert len(results) == 1 and isinstance(results[0], ImageError)
