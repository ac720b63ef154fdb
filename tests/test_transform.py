"""The transform equals OpenAI's `clip.load` preprocessing, including its less obvious choices."""
from __future__ import annotations

import functools
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from clip_triton.transform import (
    ImageRejected,
    open_image,
    preprocess,
    preprocess_batch,
    resize_and_crop,
    resized_size,
)
from conftest import GOLDEN, IMAGE_NAMES, IMAGES, image_bytes


def encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def noise_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_pixels_equal_openai_golden(name: str) -> None:
    golden = np.load(GOLDEN / "pixels-224.npz")
    expected = golden["pixels"][list(golden["names"]).index(name)]
    actual = preprocess(image_bytes(name), 224)
    assert actual.dtype == np.float32 and actual.shape == (3, 224, 224)
    assert np.abs(actual - expected).max() <= 1e-5


def test_batch_equals_one_by_one_and_reports_bad_by_index() -> None:
    good = [image_bytes(n) for n in IMAGE_NAMES[:3]]
    pixels, errors = preprocess_batch([good[0], b"", good[1], b"junk", good[2]], 224)
    assert sorted(errors) == [1, 3]
    assert pixels.shape == (3, 3, 224, 224)
    for row, data in zip(pixels, good):
        np.testing.assert_array_equal(row, preprocess(data, 224))


def test_batch_decoded_on_a_thread_pool_equals_the_sequential_batch() -> None:
    """clip_preprocess decodes a batch's images on a pool (Pillow releases the GIL): same pixels, same
    reasons at the same indices, and the work really runs on the pool's threads."""
    good = [image_bytes(n) for n in IMAGE_NAMES]
    truncated = image_bytes("rocket.jpg")[:5000]  # its header reads; decoding fails inside the pool
    batch = [good[0], b"junk", good[1], truncated, *good[2:]]
    expected_pixels, expected_errors = preprocess_batch(batch, 224)
    workers: set[str] = set()

    def on_worker(crop, item):
        workers.add(threading.current_thread().name)
        return crop(item)

    with ThreadPoolExecutor(2, thread_name_prefix="decode") as pool:
        pixels, errors = preprocess_batch(batch, 224, map_images=lambda crop, items: pool.map(
            functools.partial(on_worker, crop), items))
    assert errors == expected_errors and sorted(errors) == [1, 3]
    assert "cannot decode" in errors[3]
    np.testing.assert_array_equal(pixels, expected_pixels)
    assert len(pixels) == len(good)
    assert workers and all(name.startswith("decode") for name in workers)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(451, 300, (336, 224)), (300, 451, (224, 336)), (224, 224, (224, 224)), (1000, 872, (256, 224)),
     (7, 3, (522, 224))],
)
def test_resize_truncates_the_long_side_like_torchvision(width: int, height: int, expected: tuple) -> None:
    assert resized_size(width, height, 224) == expected


def test_center_crop_rounds_half_to_even() -> None:
    # 225 wide after resize: (225 - 224) / 2 = 0.5 rounds to 0 in Python, so the crop starts at x = 0.
    ramp = np.tile(np.arange(225, dtype=np.uint8), (224, 1))
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))
    crop = resize_and_crop(image, 224)
    assert crop[0, 0, 0] == 0 and crop[0, -1, 0] == 223


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "1", "I", "F"])
def test_every_mode_gives_rgb_pixels_resized_in_its_own_mode(mode: str) -> None:
    image = noise_image(mode, (333, 250))
    expected = image.resize(resized_size(333, 250, 224), Image.BICUBIC)
    left = int(round((expected.width - 224) / 2.0))
    expected = np.asarray(expected.crop((left, 0, left + 224, 224)).convert("RGB"))
    np.testing.assert_array_equal(resize_and_crop(image, 224), expected)


def test_rgba_alpha_is_dropped_not_composited() -> None:
    # At 224x224 nothing is resized, so the colour channels pass through untouched. (When Pillow does
    # resize RGBA it premultiplies by alpha; the reference does the same, see the mode test above.)
    rgb = noise_image("RGB", (224, 224))
    transparent = rgb.copy()
    transparent.putalpha(0)
    np.testing.assert_array_equal(preprocess(encode(transparent), 224), preprocess(encode(rgb), 224))


def test_sixteen_bit_png_is_decoded() -> None:
    data = np.linspace(0, 65535, 300 * 200).reshape(200, 300).astype(np.uint16)
    image = Image.fromarray(data)
    assert image.mode.startswith("I;16")
    assert np.isfinite(preprocess(encode(image), 224)).all()


def test_exif_orientation_is_ignored_like_the_reference() -> None:
    image = noise_image("RGB", (320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" - Image.open does not apply it, and neither do we
    tagged = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    plain = encode(image, "JPEG", quality=95)
    np.testing.assert_array_equal(preprocess(tagged, 224), preprocess(plain, 224))


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("P", (300, 300), color) for color in (10, 200, 90)]
    for frame in frames:
        frame.putpalette(list(range(256)) * 3)
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    np.testing.assert_array_equal(preprocess(animated, 224), preprocess(encode(frames[0], "GIF"), 224))


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (224, 225), (5000, 7), (7, 5000), (2, 4096)])
def test_tiny_odd_and_extreme_sizes(size: tuple[int, int]) -> None:
    assert preprocess(encode(noise_image("RGB", size)), 224).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty input"), (b"hello, world", "not a recognised image format"),
     (b"<html><body>hi</body></html>", "not a recognised image format"),
     (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a recognised image format")],
)
def test_non_images_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        preprocess(data, 224)


def test_truncated_jpeg_is_refused() -> None:
    data = image_bytes("rocket.jpg")
    with pytest.raises(ImageRejected, match="cannot decode|truncated"):
        preprocess(data[: len(data) // 2], 224)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="over the limit of 1000"):
        open_image(encode(noise_image("RGB", (50, 50))), max_pixels=1000)


def test_extreme_aspect_ratio_is_refused_before_a_huge_resize() -> None:
    with pytest.raises(ImageRejected, match="aspect ratio too extreme"):
        resize_and_crop(noise_image("L", (60000, 1)), 224)


def phone_photo(name: str) -> bytes:
    """A 12-megapixel JPEG like a phone's, made by upscaling a shared photo to 4032x3024."""
    image = Image.open(IMAGES / name).convert("RGB").resize((4032, 3024), Image.BICUBIC)
    return encode(image, "JPEG", quality=92)


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png"])
def test_fast_jpeg_decode_stays_close_to_the_exact_path(name: str) -> None:
    import torch

    from clip_triton_export.checkpoint import load_checkpoint

    data = phone_photo(name)
    exact, fast = preprocess(data, 224), preprocess(data, 224, fast_jpeg=True)
    assert not np.array_equal(exact, fast)  # the fast path really took another route
    model = load_checkpoint(GOLDEN / "tiny-vit-b32.pt").model
    with torch.no_grad():
        a, b = model(torch.from_numpy(np.stack([exact, fast]))).numpy()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.999


def test_fast_jpeg_decode_leaves_small_and_non_jpeg_images_exact() -> None:
    for name in IMAGE_NAMES:  # all at most 1000 px: no 1/2 reduction keeps 448 px
        np.testing.assert_array_equal(preprocess(image_bytes(name), 224, fast_jpeg=True), preprocess(image_bytes(name), 224))
    png = encode(Image.open(IMAGES / "chelsea.png").resize((4032, 3024)))
    np.testing.assert_array_equal(preprocess(png, 224, fast_jpeg=True), preprocess(png, 224))
