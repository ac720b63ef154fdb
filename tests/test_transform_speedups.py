"""The transform's speed-ups change no pixel: the normalization table and the libspng PNG decoder."""
from __future__ import annotations

import io

import numpy as np
import pyspng
import pytest
from PIL import Image

import clip_triton.transform as transform
from clip_triton.transform import CLIP_MEAN, CLIP_STD, ImageRejected, decode_png_fast, normalize, open_image, preprocess
from conftest import IMAGE_NAMES, image_bytes
from test_transform import encode, noise_image


def test_normalize_table_equals_the_float32_arithmetic_for_every_value() -> None:
    every_value = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(every_value, every_value[::-1], np.roll(every_value, 7), indexing="ij"), axis=-1)[:, :16]
    expected = np.moveaxis((rgb.astype(np.float32) / np.float32(255) - CLIP_MEAN) / CLIP_STD, -1, -3)
    assert np.array_equal(normalize(rgb), expected)
    batch = np.stack([rgb, rgb[::-1]])
    assert np.array_equal(normalize(batch), np.stack([expected, normalize(rgb[::-1])]))
    assert normalize(batch).flags.c_contiguous and normalize(batch).dtype == np.float32


def pillow_only(data: bytes) -> np.ndarray:
    original, transform.pyspng = transform.pyspng, None
    try:
        return preprocess(data, 224)
    finally:
        transform.pyspng = original


def test_pyspng_is_installed_where_the_server_runs() -> None:
    assert transform.pyspng is not None, "the serve extra installs pyspng; without it PNGs decode 2-3x slower"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_shared_image_gives_the_same_pixels_with_and_without_pyspng(name: str) -> None:
    data = image_bytes(name)
    assert np.array_equal(preprocess(data, 224), pillow_only(data))


@pytest.mark.parametrize("mode, save", [("L", {}), ("RGB", {}), ("RGBA", {}), ("RGB", {"optimize": True})])
def test_plain_8_bit_pngs_take_the_fast_path_and_decode_identically(mode: str, save: dict) -> None:
    data = encode(noise_image(mode, (97, 61)), **save)
    image = open_image(data)
    fast = decode_png_fast(image, data)
    assert fast is not image and fast.mode == image.mode and fast.size == image.size
    assert np.array_equal(np.asarray(fast), np.asarray(Image.open(io.BytesIO(data)).convert(mode)))
    assert np.array_equal(preprocess(data, 224), pillow_only(data))


@pytest.mark.parametrize("mode, save", [("P", {}), ("LA", {}), ("I;16", {}), ("1", {}), ("RGB", {"transparency": (1, 2, 3)})])
def test_other_pngs_are_left_to_pillow(mode: str, save: dict) -> None:
    data = encode(noise_image(mode, (40, 30)), **save)
    image = open_image(data)
    assert decode_png_fast(image, data) is image
    assert np.array_equal(preprocess(data, 224), pillow_only(data))


def test_a_truncated_png_is_refused_with_pillows_reason_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(noise_image("RGB", (300, 200)))[:3000]
    with pytest.raises(ImageRejected) as fast_error:
        preprocess(data, 224)
    monkeypatch.setattr(transform, "pyspng", None)
    with pytest.raises(ImageRejected) as pillow_error:
        preprocess(data, 224)
    assert str(fast_error.value) == str(pillow_error.value)
