"""The GPU target on a GPU, through the real Triton (`make test-gpu`): fp16 parity for a VisionTransformer and a
ModifiedResNet, nvJPEG decode fidelity on the shared photos and on 12 MP phone JPEGs, and bad images refused
alone on the GPU path. Skipped, saying why, on a machine without a CUDA GPU (CI); the same code runs on the
CPU in test_gpu_target.py and test_gpu_transform.py.

Measured fidelity is written to $CLIP_TRITON_GPU_FIDELITY (a JSON file) when set, for the benchmark report.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as pb

from clip_triton import ClipClient, InvalidImageError, contract, transform
from clip_triton.transform import preprocess, preprocess_batch
from clip_triton_export.pipeline import export_repository, load_source
from conftest import IMAGE_NAMES, image_bytes, preprocess_window, running_server, settled_preprocess_totals
from gpu_support import MIXED_SIZES, jpeg, jpeg_photos, model_gauge, shipped_gpu_transform, shipped_module

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.server,
              pytest.mark.skipif(not CUDA, reason="no CUDA GPU here: run `make test-gpu` on a GPU host")]
PHONE_SIZE = (4032, 3024)
MEASURED: dict = {}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def phone_jpegs(count: int = 3) -> dict[str, bytes]:
    """12 MP phone-style JPEGs (4:2:0, quality 90) made from the shared photos."""
    photos = {}
    for name in IMAGE_NAMES[:count]:
        with Image.open(io.BytesIO(image_bytes(name))) as image:
            photos[f"{name}-12mp.jpg"] = jpeg(image.convert("RGB").resize(PHONE_SIZE, Image.BICUBIC), quality=90,
                                             subsampling="4:2:0")
    return photos


@pytest.fixture(scope="module", autouse=True)
def record_measurements():
    yield
    target = os.environ.get("CLIP_TRITON_GPU_FIDELITY")
    if target and MEASURED:
        Path(target).write_text(json.dumps(MEASURED, indent=1) + "\n")


@pytest.fixture(scope="module", params=["ViT-B/32", "RN50"])
def served(request, tmp_path_factory: pytest.TempPathFactory):
    """(architecture, fp32 model on the GPU, server) for a random-init encoder exported for the GPU target."""
    arch = request.param
    repository = tmp_path_factory.mktemp(arch.replace("/", "-"))
    export_repository(repository, random_init=arch, target="gpu")
    model = load_source(None, arch).model.float().eval().cuda()
    with running_server(repository) as server:
        yield arch, model, server


def fp32_features(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(pixels).cuda()).cpu().numpy()


def test_fp16_through_triton_is_within_cosine_09999_of_fp32(served) -> None:
    """PNGs take the exact CPU path, so only the fp16 model differs from OpenAI's fp32 encode_image."""
    arch, model, server = served
    images = [image_bytes(name) for name in IMAGE_NAMES if name.endswith(".png")]
    with ClipClient(server.grpc_url) as client:
        assert client.model_parameters()["weights"].endswith(":fp16")
        features = client.encode(images)
    expected = fp32_features(model, np.stack([preprocess(data, 224) for data in images]))
    measured = float(cosine(features, expected).min())
    MEASURED[f"fp16_min_cosine_{arch}"] = measured
    assert measured >= 0.9999


@pytest.mark.parametrize("workload", ["small", "phone"])
def test_nvjpeg_decoding_stays_within_cosine_0999_of_the_exact_path(served, workload: str) -> None:
    arch, model, server = served
    photos = jpeg_photos() if workload == "small" else phone_jpegs()
    with ClipClient(server.grpc_url) as client:
        features = client.encode(list(photos.values()))
    expected = fp32_features(model, np.stack([preprocess(data, 224) for data in photos.values()]))
    measured = cosine(features, expected)
    MEASURED[f"decode_cosine_{arch}_{workload}"] = dict(zip(photos, map(float, measured)))
    assert measured.min() >= 0.999, dict(zip(photos, measured))


def test_nvjpeg_pixels_against_the_exact_transforms(tmp_path: Path) -> None:
    """Pixel-level: how far nvJPEG + the GPU resize are from Pillow's decoding and resize (recorded; the
    features' bound above is the requirement)."""
    gpu_transform = shipped_gpu_transform(tmp_path)
    from clip_triton.transform import CLIP_STD

    for workload, photos in (("small", jpeg_photos()), ("phone", phone_jpegs())):
        images = list(photos.values())
        pre = gpu_transform.BatchPreprocessor(224, torch.device("cuda"), torch.float32)
        pixels, errors = pre(images)
        pre.close()
        expected, _ = preprocess_batch(images, 224)
        assert not errors and pixels.shape == expected.shape
        levels = np.abs(pixels.cpu().numpy() - expected) * 255 * CLIP_STD.reshape(1, 3, 1, 1)
        MEASURED[f"pixels_{workload}"] = {"max_levels": float(levels.max()), "mean_levels": float(levels.mean()),
                                          "share_off_by_more_than_1": float((levels > 1.5).mean())}
        assert levels.mean() < 2.0


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_gpu_resize_is_pillows_bit_for_bit_on_cuda(tmp_path: Path, interpolation: str) -> None:
    """The int8 tensor-core products (torch._int_mm on CUDA) resize Pillow-decoded photos and a 12 MP one to
    Pillow's own pixels: not one value differs (nvJPEG is left out, so only the resize is compared)."""
    shipped_gpu_transform(tmp_path)
    resize = sys.modules["clip_pillow_resize"]
    assert resize.exact_method(torch.device("cuda")) == ("int8", None)  # the self-check passed
    settings = transform.Preprocessing(interpolation=interpolation)
    photos = [Image.open(io.BytesIO(image_bytes(name))).convert("RGB") for name in IMAGE_NAMES]
    photos.append(photos[0].resize(PHONE_SIZE, Image.BICUBIC))
    for photo in photos:
        plan = transform.resize_plan(*photo.size, 224, preprocessing=settings)
        rgb = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].cuda()
        resized = resize.resize_crop(rgb, 224, plan, interpolation)
        expected = transform.resize_and_crop(photo, 224, preprocessing=settings)
        assert np.array_equal(resized[0].permute(1, 2, 0).cpu().numpy(), expected), photo.size


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_the_mixed_size_resize_is_pillows_bit_for_bit_on_cuda(tmp_path: Path, interpolation: str) -> None:
    """The batched float32-digit products (TF32 tensor cores where the self-check passes) resize a batch of
    the shared photos and of the CPU tests' sizes (vertical-first, unchanged sides, upscales, 1-pixel lines)
    to Pillow's own pixels: not one value differs."""
    shipped_gpu_transform(tmp_path)
    mixed = sys.modules["clip_mixed_resize"]
    assert mixed.use_tf32(torch.device("cuda")) == (True, None)  # the self-check passed
    settings = transform.Preprocessing(interpolation=interpolation)
    photos = [Image.open(io.BytesIO(image_bytes(name))).convert("RGB") for name in IMAGE_NAMES]
    photos += [photos[0].resize(size, Image.BICUBIC) for size in MIXED_SIZES + [(1920, 1080)]]
    plans = [transform.resize_plan(*photo.size, 224, preprocessing=settings) for photo in photos]
    tensors = [torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).cuda() for photo in photos]
    resized = mixed.resize_crop_mixed(tensors, plans, 224, interpolation).cpu()
    for photo, actual in zip(photos, resized):
        expected = transform.resize_and_crop(photo, 224, preprocessing=settings)
        assert np.array_equal(actual.permute(1, 2, 0).numpy(), expected), photo.size


def test_bad_images_are_refused_alone_on_the_gpu_path(served) -> None:
    arch, _, server = served
    if arch != "ViT-B/32":
        pytest.skip("one architecture is enough for the error path")
    photos = list(jpeg_photos().values())
    good = photos[0]
    scrambled = bytearray(good)
    start = good.index(b"\xff\xda") + 20  # scan data overwritten, markers intact: the decoders must cope
    scrambled[start:start + 2000] = bytes(range(256)) * 7 + bytes(208)
    bad = {1: good[: len(good) // 3], 3: b"not an image at all", 4: b"", 6: good[:600]}
    images = [bad.get(index, photos[index % len(photos)]) for index in range(8)] + [bytes(scrambled)]
    with ClipClient(server.grpc_url) as client:
        with pytest.raises(InvalidImageError) as refused:
            client.encode(images, batch_size=len(images))
        alone = client.encode([images[i] for i in range(8) if i not in bad])
    result = refused.value.result
    assert set(bad) <= {f.index for f in result.failures} <= set(bad) | {8}
    rows = [position for position, index in enumerate(result.indices) if index < 8]
    assert cosine(result.features[rows], alone).min() >= 0.99999


def test_every_jpeg_takes_the_gpu_path_and_the_stage_metrics_say_so(served) -> None:
    """On a GPU, nvJPEG decodes every JPEG of the shared set (baseline, greyscale, progressive) and the PNGs take
    the exact path: clip_preprocess's metrics count them so, and time the GPU stages, the wait for the GPU
    included (recorded for the benchmark report)."""
    arch, _, server = served
    if arch != "ViT-B/32":
        pytest.skip("one architecture is enough for the metrics")

    photos = list(jpeg_photos().values())
    pngs = [image_bytes(name) for name in IMAGE_NAMES if name.endswith(".png")]
    before = settled_preprocess_totals(server.metrics_url)
    with ClipClient(server.grpc_url) as client:
        client.encode(photos + pngs, batch_size=len(photos) + len(pngs))
    seen = preprocess_window(server.metrics_url, before, len(photos) + len(pngs))
    MEASURED["preprocess_stages_one_batch"] = seen
    assert seen["images"] == {"gpu": len(photos), "cpu": len(pngs), "refused": 0}
    assert all(seen["ms_per_image"][stage] > 0 for stage in ("gpu_decode", "gpu_resize", "cpu_path", "gpu_wait"))


def test_encode_pixels_sends_fp16_to_the_gpu_model(served) -> None:
    _, _, server = served
    pixels = np.stack([preprocess(image_bytes(name), 224) for name in IMAGE_NAMES[:4]])
    with ClipClient(server.grpc_url) as client:
        assert client.model_info().pixels_datatype == "FP16"
        direct = client.encode_pixels(pixels)
        png_rows = [i for i, name in enumerate(IMAGE_NAMES[:4]) if name.endswith(".png")]
        via_ensemble = client.encode([image_bytes(IMAGE_NAMES[i]) for i in png_rows])
    assert cosine(direct[png_rows], via_ensemble).min() >= 0.99999


def test_the_visual_model_replays_cuda_graphs_for_small_batches(served) -> None:
    """Every size the config names was captured (0 would mean the capture failed: the server log says why),
    and through the server a batch of each size around the graphs' gets the features an image gets alone
    (whether a batch replayed a graph or ran eagerly is not visible from outside; the test below compares the
    two directly)."""
    arch, _, server = served
    config = text_format.Parse((server.options.repository / contract.VISUAL_MODEL / "config.pbtxt").read_text(),
                               pb.ModelConfig())
    named = config.parameters["cuda_graph_batch_sizes"].string_value.split(",")
    assert model_gauge(server.metrics_url, "clip_triton_cuda_graphs", contract.VISUAL_MODEL) == [len(named)]
    photos = list(jpeg_photos().values())
    with ClipClient(server.grpc_url) as client:
        alone = client.encode(photos[:1])
        for count in (1, 2, 5, 7, 13, 64, 65):  # graphs of 1, 2, 6, 8, 16, 64; eager beyond
            batch = client.encode([photos[0]] * count)
            assert cosine(batch, np.repeat(alone, count, axis=0)).min() >= 0.9999, f"batch of {count}"


def test_graphs_captured_from_the_fp16_model_compute_what_it_computes(served) -> None:
    """clip_cuda_graphs' real capture (the shipped file, the served fp16 model) against the model run eagerly,
    for batch sizes inside, between and beyond the graphs, with stale rows from earlier batches."""
    folder = served[2].options.repository / contract.VISUAL_MODEL / "1"
    graphs = shipped_module(folder, "clip_cuda_graphs")
    model = torch.jit.load(str(folder / "model.pt"), map_location="cuda").eval()

    def unoptimized(pixels: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return model(pixels)

    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        runner = graphs.GraphedBatches(unoptimized, torch.zeros((3, 224, 224), dtype=torch.half, device="cuda"),
                                       (1, 2, 4, 8), graphs.cuda_graph_capture(), eager=model)
        for count in (8, 3, 1, 9, 5, 2, 7):
            pixels = torch.randn((count, 3, 224, 224), generator=generator, device="cuda").half()
            served_features = runner(pixels).float().cpu().numpy()
            expected = model(pixels).float().cpu().numpy()
            assert cosine(served_features, expected).min() >= 0.99999, f"batch of {count}"
