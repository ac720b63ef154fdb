"""The GPU target's preprocessing code, run on the CPU: routing, Pillow-faithful resize, normalization, error
isolation and order. Torch runs these very operations on CUDA on a GPU host (`make test-gpu` checks the
nvJPEG decoding there); here Pillow stands in for nvJPEG, so everything but the decoder itself is proven."""
from __future__ import annotations

import io
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clip_triton import transform
from conftest import IMAGE_NAMES, image_bytes
from gpu_support import jpeg, jpeg_photos
from bad_inputs import bad_images


@pytest.fixture(scope="module")
def pillow_resize(gpu_transform):
    """clip_pillow_resize as shipped beside clip_gpu_transform (loaded with it)."""
    return sys.modules["clip_pillow_resize"]


def preprocessor(gpu_transform, dtype=torch.float32, **options):
    return gpu_transform.BatchPreprocessor(224, torch.device("cpu"), dtype, **options)


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
                                  (225, 4000), (4000, 225), (17, 9), (1023, 767)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_gpu_resize_gives_pillows_pixels_bit_for_bit(pillow_resize, size: tuple[int, int],
                                                          interpolation: str) -> None:
    """Downscales, upscales, a side already 224, extreme aspect ratios (Pillow 13's vertical-first order), both
    filters; by the float64 products the CPU runs and by the int8 products CUDA runs (up to 1 MP, where the
    CPU's slow int8 products take about a second)."""
    resize = pillow_resize
    settings = transform.Preprocessing(interpolation=interpolation)
    photo = Image.open(io.BytesIO(image_bytes("astronaut.png"))).convert("RGB").resize(size, Image.BICUBIC)
    expected = transform.resize_and_crop(photo, 224, preprocessing=settings)
    plan = transform.resize_plan(*size, 224, preprocessing=settings)
    rgb = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None]
    methods = ["float64"] + (["int8"] if size[0] * size[1] <= 1_000_000 else [])  # the CPU's int8 is slow
    for method in methods:
        actual = resize.resize_crop(rgb, 224, plan, interpolation, method=method)
        assert actual.dtype == torch.uint8
        assert np.array_equal(actual[0].permute(1, 2, 0).numpy(), expected), method


def test_float64_products_work_in_slices(pillow_resize, monkeypatch) -> None:
    """The float64 products go a few MB at a time (a whole batch as float64 would be 8x its bytes): slices
    that split the rows anywhere give the same sums."""
    generator = np.random.default_rng(1)
    weights = generator.integers(-(2 ** 22), 2 ** 22, size=(11, 29))
    pixels = torch.from_numpy(generator.integers(0, 256, size=(3, 7, 29), dtype=np.uint8))
    monkeypatch.setattr(pillow_resize, "FLOAT64_SLICE_VALUES", 29 * 4)  # 4 rows a slice: 21 rows in 6 slices
    sums = pillow_resize.PassMatrix.from_dense(torch.from_numpy(weights), "float64").sums(pixels)
    assert np.array_equal(sums.numpy(), pixels.numpy().astype(np.int64) @ weights.T)


def test_the_int8_digits_carry_weights_of_any_sign_and_size(pillow_resize) -> None:
    """Random 22-bit weights of both signs and random pixels: the int8 products (three digits, p - 128, the
    column sums added back) give the exact integer sums, as float64 does."""
    resize = pillow_resize
    generator = np.random.default_rng(0)
    weights = generator.integers(-(2 ** 22), 2 ** 22, size=(13, 37))  # 13 outputs of 37 inputs: both padded
    pixels = torch.from_numpy(generator.integers(0, 256, size=(2, 5, 37), dtype=np.uint8))  # 10 rows: padded
    expected = pixels.numpy().astype(np.int64) @ weights.T
    for method in ("int8", "float64"):
        sums = resize.PassMatrix.from_dense(torch.from_numpy(weights), method).sums(pixels)
        assert sums.dtype == torch.int64 and np.array_equal(sums.numpy(), expected), method
        transposed = resize.PassMatrix.from_dense(torch.from_numpy(weights), method) \
            .sums(pixels.transpose(0, 1))
        assert np.array_equal(transposed.numpy(), expected.transpose(1, 0, 2)), f"{method}, strided input"


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
    # PNGs, CMYK and the refused ones take the exact path, the JPEGs the GPU path; with Pillow standing in
    # for nvJPEG here, the GPU resize gives the exact path's pixels, down to the last bit.
    assert difference.max() == 0, difference


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
    """Hugging Face-style settings (mean = std = 0.5, resize 256 then crop 224, floor offsets) and an open_clip
    bilinear checkpoint: every JPEG takes the GPU path (the decoder sees them all) and gets the exact
    transform's pixels with the same settings, bit for bit (Pillow stands in for nvJPEG here)."""
    half = (0.5, 0.5, 0.5)
    photos = list(jpeg_photos().values())
    for settings in (gpu_transform.Preprocessing(half, half, "bicubic", 256, "floor", "before_resize"),
                     gpu_transform.Preprocessing(half, half, "bilinear")):
        decoded: list[bytes] = []

        def recording_decoder(blobs: list[bytes]) -> list:
            decoded.extend(blobs)
            return gpu_transform.pillow_decoder(torch.device("cpu"))(blobs)

        pixels, errors = preprocessor(gpu_transform, preprocessing=settings, decoder=recording_decoder)(photos)
        expected, _ = gpu_transform.preprocess_batch(photos, 224, preprocessing=settings)
        assert sorted(decoded) == sorted(photos), settings
        assert not errors and np.array_equal(pixels.numpy(), expected), settings


def test_pass_matrices_are_reused_and_the_oldest_go_beyond_the_byte_budget(pillow_resize, monkeypatch) -> None:
    monkeypatch.setattr(pillow_resize, "_matrices", type(pillow_resize._matrices)())
    cpu = torch.device("cpu")
    first = pillow_resize.pass_matrix(640, 298, 37, 224, "bicubic", cpu)
    assert pillow_resize.pass_matrix(640, 298, 37, 224, "bicubic", cpu) is first
    monkeypatch.setattr(pillow_resize, "_CACHE_BYTES", 2 * first.nbytes)  # room for two of these
    second = pillow_resize.pass_matrix(640, 298, 36, 224, "bicubic", cpu)
    pillow_resize.pass_matrix(640, 298, 37, 224, "bicubic", cpu)  # used again: now the newest
    pillow_resize.pass_matrix(640, 298, 38, 224, "bicubic", cpu)  # over budget: the oldest (36) goes
    assert pillow_resize.pass_matrix(640, 298, 37, 224, "bicubic", cpu) is first
    assert pillow_resize.pass_matrix(640, 298, 36, 224, "bicubic", cpu) is not second
    pillow_resize.forget_weights()
    assert not pillow_resize.weights_cached(640, 480, 224, (298, 224, 0, 37), "bicubic", cpu)
    assert pillow_resize.pass_matrix(640, 298, 37, 224, "bicubic", cpu) is not first


def test_the_int8_products_are_checked_before_they_are_trusted(pillow_resize, monkeypatch) -> None:
    """Where int8 products run (CUDA), a self-check against the exact sums decides; on failure or any wrong sum
    the resize uses float64 products (exact too) and says why."""
    cpu = torch.device("cpu")
    assert pillow_resize.int8_self_check(cpu) is None  # the same products, on this CPU, agree
    assert pillow_resize.exact_method(cpu) == ("float64", None)
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: real(a, b) + 1)
    assert pillow_resize.int8_self_check(cpu) == "torch._int_mm gave other sums than the exact ones"

    def unsupported(a, b):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(torch, "_int_mm", unsupported)
    assert "CUBLAS_STATUS_NOT_SUPPORTED" in pillow_resize.int8_self_check(cpu)
    # On CUDA (a device object is enough to pick the method): the check's verdict, kept per device.
    monkeypatch.setattr(pillow_resize, "_methods", {})
    monkeypatch.setattr(pillow_resize, "int8_self_check", lambda device: "torch._int_mm failed: nope")
    cuda = torch.device("cuda", 0)
    assert pillow_resize.exact_method(cuda) == ("float64", "torch._int_mm failed: nope")
    monkeypatch.setattr(pillow_resize, "int8_self_check", lambda device: None)
    assert pillow_resize.exact_method(cuda)[0] == "float64", "decided once per device"
    assert pillow_resize.exact_method(torch.device("cuda", 1)) == ("int8", None)


def test_the_clock_counts_each_images_path_and_times_each_stage(gpu_transform) -> None:
    """What clip_preprocess publishes as metrics: the JPEGs the decoder takes count as gpu, PNGs, a CMYK JPEG and
    an image the decoder refused as cpu (the exact path), bad ones as refused; the decoder's time is gpu_decode's."""
    photos = list(jpeg_photos().values())
    cmyk = jpeg(Image.open(io.BytesIO(image_bytes("coffee.png"))).convert("CMYK"), quality=90)
    pngs = [image_bytes(name) for name in IMAGE_NAMES if name.endswith(".png")]
    images = photos + pngs + [cmyk, b"", b"not an image"]

    def slow_decoder(blobs: list[bytes]) -> list:
        time.sleep(1.0)
        decoded = gpu_transform.pillow_decoder(torch.device("cpu"))(blobs)
        return [RuntimeError("nvJPEG says no") if blob is photos[0] else image for blob, image in zip(blobs, decoded)]

    batch = preprocessor(gpu_transform, decoder=slow_decoder)
    pixels, errors = batch(images)
    seconds, paths = batch.clock.take()
    assert len(pixels) == len(images) - 2 and set(errors) == {len(images) - 2, len(images) - 1}
    assert paths == {"gpu": len(photos) - 1, "cpu": len(pngs) + 2, "refused": 2}
    assert seconds["gpu_decode"] >= 1.0
    assert all(0 < seconds[stage] < 1.0 for stage in ("inspect", "gpu_resize", "cpu_path", "assemble")), seconds
    assert seconds["read_inputs"] == seconds["gpu_wait"] == seconds["respond"] == 0.0, "the model's own stages"


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_pass_reads_only_the_inputs_its_kept_outputs_weigh(pillow_resize, interpolation: str) -> None:
    """input_window (host arithmetic) holds every window fixed_weights gives (device arithmetic), with one input
    to spare each way and no more; a center crop of 224 of 298 outputs reads about three quarters of the row."""
    generator = np.random.default_rng(3)
    cases = [(640, 298, 37, 224), (4032, 298, 37, 224), (224, 500, 138, 224), (7, 300, 38, 224), (300, 1, 0, 1)]
    cases += [(int(n), int(m), int(f), int(c)) for n, m, f, c in
              ((n, m, f, c) for n, m in generator.integers(1, 3000, size=(200, 2))
               for c in [min(224, m)] for f in [(m - c) // 2])]
    for in_size, out_size, first, count in cases:
        start, width, _ = pillow_resize.fixed_weights(np.array([in_size]), np.array([out_size]), np.array([first]),
                                                      count, interpolation)
        windows = (int(start.min()), int((start + width).max()))
        low, high = pillow_resize.input_window(in_size, out_size, first, count, interpolation)
        assert (low, high) == (max(0, windows[0] - 1), min(in_size, windows[1] + 1)), (in_size, out_size, first)
    low, high = pillow_resize.input_window(4032, 298, 37, 224, "bicubic")
    assert 0.74 < (high - low) / 4032 < 0.78
    pillow_resize.forget_weights()
    matrix = pillow_resize.pass_matrix(4032, 298, 37, 224, "bicubic", torch.device("cpu"))
    assert (matrix.first_input, matrix.in_size) == (low, high - low) and matrix.matrix.shape[0] == high - low
