"""The GPU target's preprocessing code, run on the CPU: routing, Pillow-faithful resize, normalization, error
isolation and order. Torch runs these very operations on CUDA on a GPU host (`make test-gpu` checks the
nvJPEG decoding there); here Pillow stands in for nvJPEG, so everything but the decoder itself is proven."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_triton import transform
from conftest import IMAGE_NAMES, image_bytes
from gpu_support import jpeg, jpeg_photos, shipped_gpu_transform
from bad_inputs import bad_images


@pytest.fixture(scope="module")
def gpu_transform(tmp_path_factory: pytest.TempPathFactory):
    return shipped_gpu_transform(tmp_path_factory.mktemp("gpu-repository"))


def preprocessor(gpu_transform, dtype=torch.float32, **options):
    settings = options.get("preprocessing")
    mean, std = (settings.mean, settings.std) if settings else (transform.CLIP_MEAN, transform.CLIP_STD)
    return gpu_transform.BatchPreprocessor(224, torch.device("cpu"), dtype, mean, std, **options)


def test_only_jpegs_nvjpeg_decodes_like_libjpeg_take_the_gpu_path(gpu_transform) -> None:
    photo = Image.open(io.BytesIO(image_bytes("chelsea.png"))).convert("RGB")
    route = gpu_transform.gpu_decodable_jpeg
    assert route(jpeg(photo, quality=90)) == photo.size
    assert route(jpeg(photo, quality=90, progressive=True)) == photo.size
    assert route(jpeg(photo.convert("L"), quality=90)) == photo.size
    assert route(image_bytes("hubble_deep_field.jpg")) == (1000, 872)  # an Adobe marker saying YCbCr
    assert route(jpeg(photo.convert("CMYK"), quality=90)) is None
    assert route(image_bytes("chelsea.png")) is None
    good = jpeg(photo, quality=90)
    assert route(good[: len(good) // 2]) is None, "no EOI marker: truncated, the exact path says so"
    assert route(good + b"trailing bytes") is None
    assert route(b"\xff\xd8\xff\xd9") is None
    # Adobe APP14 with colour transform 0: the three components are RGB, not YCbCr.
    adobe_rgb = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    assert route(good[:2] + adobe_rgb + good[2:]) is None
    # Component ids R, G, B: an RGB-coded JPEG (libjpeg does not convert its colours).
    sof = good.index(b"\xff\xc0")
    rgb_ids = bytearray(good)
    for component, identifier in enumerate(b"RGB"):
        rgb_ids[sof + 10 + 3 * component] = identifier
    assert route(bytes(rgb_ids)) is None


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (1000, 872), (2000, 1500), (224, 224), (100, 60),
                                  (225, 4000)])
def test_two_pass_resize_gives_pillows_pixels_but_for_a_rare_one(gpu_transform, size: tuple[int, int]) -> None:
    photo = Image.open(io.BytesIO(image_bytes("astronaut.png"))).convert("RGB").resize(size, Image.BICUBIC)
    expected = transform.resize_and_crop(photo, 224).astype(np.int16)
    plan = transform.resize_plan(*size, 224)
    rgb = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None]
    actual = gpu_transform.resize_crop(rgb, 224, plan)[0].permute(1, 2, 0).numpy().astype(np.int16)
    difference = np.abs(actual - expected)
    assert difference.max() <= 1, difference.max()
    assert (difference > 0).mean() < 0.002, (difference > 0).mean()


def test_normalizing_on_torch_is_bit_identical_to_the_cpu_table(gpu_transform) -> None:
    values = torch.arange(256, dtype=torch.float32).view(1, 1, 1, 256).expand(1, 3, 1, 256).contiguous()
    normalized = gpu_transform.Normalizer(transform.CLIP_MEAN, transform.CLIP_STD, torch.device("cpu"))(values)
    table = transform.normalize(np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2))
    assert np.array_equal(normalized[0, :, 0, :].numpy(), table[:, 0, :])


def test_a_mixed_batch_keeps_order_exact_pixels_and_the_cpu_paths_refusals(gpu_transform) -> None:
    photos = jpeg_photos()
    bad = {name: payload for name, (payload, _) in bad_images().items()}
    cmyk = jpeg(Image.open(io.BytesIO(image_bytes("coffee.png"))).convert("CMYK"), quality=90)
    images = [image_bytes(name) for name in IMAGE_NAMES] + list(photos.values()) + list(bad.values()) + [cmyk]
    pixels, errors = preprocessor(gpu_transform)(images)
    expected, expected_errors = transform.preprocess_batch(images, 224)
    assert errors == expected_errors and len(errors) == len(bad)
    assert pixels.shape == expected.shape and pixels.dtype == torch.float32
    difference = np.abs(pixels.numpy() - expected).reshape(len(expected), -1).max(axis=1)
    one_level = 1 / 255 / transform.CLIP_STD.min()
    # PNGs, CMYK and the refused ones take the exact path; the JPEGs differ by at most a level here and there
    # (the grey JPEG by two: Pillow resizes it as one channel, torch as three equal ones).
    assert difference[:5].max() == 0 and difference[-1] == 0
    assert difference.max() <= 2 * one_level + 1e-6, difference


def test_images_the_decoder_refuses_take_the_exact_path_alone(gpu_transform) -> None:
    photos = list(jpeg_photos().values())
    refused = {1, 4}

    def flaky_decoder(blobs: list[bytes]) -> list:
        decoded = gpu_transform.pillow_decoder(torch.device("cpu"))(blobs)
        return [RuntimeError("nvJPEG says no") if photos.index(blob) in refused else image
                for blob, image in zip(blobs, decoded)]

    pixels, errors = preprocessor(gpu_transform, decoder=flaky_decoder)(photos)
    expected, _ = transform.preprocess_batch(photos, 224)
    assert not errors and pixels.shape == expected.shape
    for index in refused:
        assert np.array_equal(pixels[index].numpy(), expected[index]), "a refused image must get the exact pixels"


def test_size_limits_are_the_cpu_paths_on_the_gpu_path_too(gpu_transform) -> None:
    photo = Image.new("RGB", (4000, 30), (10, 200, 30))
    images = [jpeg(photo, quality=90), jpeg(Image.new("RGB", (600, 600)), quality=90)]
    _, errors = preprocessor(gpu_transform, max_pixels=300_000)(images)
    _, expected = transform.preprocess_batch(images, 224, max_pixels=300_000)
    assert errors == expected and set(errors) == {0, 1}
    assert "aspect ratio too extreme" in errors[0] and "over the limit of 300000" in errors[1]


def test_fp16_output_is_the_fp32_pixels_cast_and_exact_mode_is_exact(gpu_transform) -> None:
    images = list(jpeg_photos().values())
    half, _ = preprocessor(gpu_transform, torch.float16)(images)
    single, _ = preprocessor(gpu_transform, torch.float32)(images)
    assert half.dtype == torch.float16 and torch.equal(half, single.half())
    exact, _ = preprocessor(gpu_transform, gpu_decode=False)(images)
    expected, _ = transform.preprocess_batch(images, 224)
    assert np.array_equal(exact.numpy(), expected)


def test_an_empty_or_all_bad_batch_gives_no_pixels(gpu_transform) -> None:
    pixels, errors = preprocessor(gpu_transform, torch.float16)([b"", b"nope"])
    assert pixels.shape == (0, 3, 224, 224) and pixels.dtype == torch.float16 and set(errors) == {0, 1}


def test_a_checkpoints_own_preprocessing_is_followed_on_the_gpu_path(gpu_transform) -> None:
    """Hugging Face-style settings (mean = std = 0.5, resize 256 then crop 224, floor offsets): the GPU path's
    JPEGs are within a level of the exact transform with the same settings; a bilinear checkpoint's JPEGs all
    take the exact path (the GPU resize is Pillow's bicubic only)."""
    half = (0.5, 0.5, 0.5)
    settings = gpu_transform.Preprocessing(half, half, "bicubic", 256, "floor", "before_resize")
    photos = list(jpeg_photos().values())
    pixels, errors = preprocessor(gpu_transform, preprocessing=settings)(photos)
    expected, _ = gpu_transform.preprocess_batch(photos, 224, preprocessing=settings)
    assert not errors and pixels.shape == expected.shape
    assert np.abs(pixels.numpy() - expected).max() <= 2 / 255 / 0.5 + 1e-6
    bilinear = gpu_transform.Preprocessing(half, half, "bilinear")
    exact, _ = preprocessor(gpu_transform, preprocessing=bilinear)(photos)
    expected, _ = gpu_transform.preprocess_batch(photos, 224, preprocessing=bilinear)
    assert np.array_equal(exact.numpy(), expected)
