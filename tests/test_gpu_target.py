"""The GPU target's repository served for real, on this machine's CPU: the same model code (GPU preprocessing
with Pillow standing in for nvJPEG, the fp16 TorchScript model run by torch, pixels handed over by DLPack),
only the instance kind switched to CPU. `make test-gpu` serves the same repository on a GPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from clip_triton import ClipClient, InvalidImageError, contract
from clip_triton.transform import preprocess
from clip_triton_export.pipeline import export_repository
from clip_triton_export.repository import on_cpu_instances
from conftest import (IMAGE_NAMES, assert_features_match, golden_checkpoint, golden_features, image_bytes,
                      preprocess_window, running_server, settled_preprocess_totals)
from gpu_support import jpeg_photos, model_gauge

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def gpu_target_server(tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("gpu-target")
    export_repository(repository, checkpoint=golden_checkpoint("tiny-vit-b32"), target="gpu")
    with running_server(on_cpu_instances(repository)) as server:
        yield server


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_gpu_target_is_fp16_torch_in_the_python_backend(gpu_target_server) -> None:
    with ClipClient(gpu_target_server.grpc_url) as client:
        assert client.model_parameters()["weights"].endswith(":fp16")
        assert client.model_info().pixels_datatype == "FP16"


def test_cpu_instances_run_the_visual_model_without_cuda_graphs_and_say_so(gpu_target_server) -> None:
    """The config asks for CUDA graphs; a CPU instance cannot capture any and reports 0 (a GPU instance reports
    how many it captured: `make test-gpu`)."""
    assert model_gauge(gpu_target_server.metrics_url, "clip_triton_cuda_graphs", contract.VISUAL_MODEL) == [0.0]


def test_exact_path_images_give_openais_features_within_fp16(gpu_target_server) -> None:
    """PNGs take the exact CPU path inside the GPU preprocessing model; the fp16 model then computes what
    OpenAI's fp16 model computes, within cosine 0.9999 of OpenAI's fp32 features (golden)."""
    names = [name for name in IMAGE_NAMES if name.endswith(".png")]
    with ClipClient(gpu_target_server.grpc_url) as client:
        features = client.encode([image_bytes(name) for name in names])
    expected = np.stack([golden_features("tiny-vit-b32")[name] for name in names])
    assert cosine(features, expected).min() >= 0.9999


def test_jpegs_on_the_gpu_path_get_the_exact_paths_features_when_decoded_alike(gpu_target_server) -> None:
    """Here Pillow stands in for nvJPEG, so the GPU path's resize (Pillow's, bit for bit) and normalization give
    the exact path's pixels and the same features, to the last bit. On a GPU, nvJPEG's decoding differs a
    little from libjpeg's: `make test-gpu` holds it to cosine 0.999."""
    photos = jpeg_photos()
    with ClipClient(gpu_target_server.grpc_url) as client:
        served = client.encode(list(photos.values()))
        exact = client.encode_pixels(np.stack([preprocess(data, 224) for data in photos.values()]))
    assert np.array_equal(served, exact), cosine(served, exact)


def test_bad_images_are_refused_alone_on_the_gpu_path(gpu_target_server) -> None:
    photos = list(jpeg_photos().values())
    rocket = image_bytes("rocket.jpg")
    bad = {1: rocket[: len(rocket) // 3], 3: b"not an image at all", 4: b""}
    images = [bad.get(index, photos[index % len(photos)]) for index in range(6)]
    with ClipClient(gpu_target_server.grpc_url) as client:
        with pytest.raises(InvalidImageError) as refused:
            client.encode(images, batch_size=6)
        alone = client.encode([images[i] for i in range(6) if i not in bad])
    result = refused.value.result
    assert sorted(f.index for f in result.failures) == sorted(bad)
    reasons = {f.index: f.reason for f in result.failures}
    assert "truncated" in reasons[1] and "not a recognised image format" in reasons[3] and "empty" in reasons[4]
    assert_features_match(result.features, alone, cosine=0.99999, relative_l2=1e-3)


def test_encode_pixels_sends_fp16_when_the_visual_model_takes_it(gpu_target_server) -> None:
    pixels = np.stack([preprocess(image_bytes(name), 224) for name in IMAGE_NAMES[:3]])
    with ClipClient(gpu_target_server.grpc_url) as client:
        features = client.encode_pixels(pixels)
        via_ensemble = client.encode([image_bytes(name) for name in IMAGE_NAMES[:3]])
    assert_features_match(features, via_ensemble, cosine=0.99999, relative_l2=1e-3)


def test_a_gpu_repository_gets_no_memory_pool_flag_without_gpus(gpu_target_server) -> None:
    """The pool flag goes only to servers of GPU repositories on machines with GPUs (here: none visible)."""
    config = text_format.Parse((gpu_target_server.options.repository / contract.VISUAL_MODEL / "config.pbtxt")
                               .read_text(), pb.ModelConfig())
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    command = gpu_target_server.options.command(Path("tritonserver"), Path("backends"))
    assert not any(arg.startswith("--cuda-memory-pool-byte-size") for arg in command)


def test_servers_of_gpu_repositories_get_a_cuda_memory_pool_on_every_visible_gpu(gpu_target_server, monkeypatch,
                                                                                    tmp_path: Path) -> None:
    from clip_triton_serve import ServerOptions
    from clip_triton_serve.options import GPU_MEMORY_POOL_BYTES, GPU_SHM_GROWTH_BYTES

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    export_repository(tmp_path / "gpu", checkpoint=golden_checkpoint("tiny-vit-b32"), target="gpu", configs_only=True)
    export_repository(tmp_path / "cpu", checkpoint=golden_checkpoint("tiny-vit-b32"), configs_only=True)
    flags = {name: [arg for arg in ServerOptions(tmp_path / name).command(Path("t"), Path("b"))
                    if arg.startswith(("--cuda-memory-pool", "--backend-config"))] for name in ("gpu", "cpu")}
    assert flags == {"gpu": [f"--cuda-memory-pool-byte-size=0:{GPU_MEMORY_POOL_BYTES}",
                             f"--cuda-memory-pool-byte-size=1:{GPU_MEMORY_POOL_BYTES}",
                             f"--backend-config=python,shm-growth-byte-size={GPU_SHM_GROWTH_BYTES}"], "cpu": []}
    explicit = ServerOptions(tmp_path / "gpu", cuda_memory_pool_bytes={0: 1024}).command(Path("t"), Path("b"))
    assert "--cuda-memory-pool-byte-size=0:1024" in explicit


def test_preprocessing_metrics_count_each_path_and_time_every_stage(gpu_target_server) -> None:
    """clip_preprocess's own counters on Triton's metrics port: which path each image took, the seconds of
    every stage (read by bench-gpu's report and the Grafana dashboard)."""
    from clip_triton_export.triton_models.stage_clock import PATHS, STAGES

    photos = list(jpeg_photos().values())
    pngs = [image_bytes(name) for name in IMAGE_NAMES if name.endswith(".png")]
    before = settled_preprocess_totals(gpu_target_server.metrics_url)
    assert set(before["seconds"]) == set(STAGES) and set(before["images"]) == set(PATHS), "every series from the start"
    with ClipClient(gpu_target_server.grpc_url) as client:
        client.encode(photos + pngs)
        with pytest.raises(InvalidImageError):
            client.encode([b"not an image"])
    seen = preprocess_window(gpu_target_server.metrics_url, before, len(photos) + len(pngs) + 1)
    assert seen["images"] == {"gpu": len(photos), "cpu": len(pngs), "refused": 1}
    assert all(seen["ms_per_image"][stage] > 0 for stage in STAGES if stage != "gpu_wait"), seen
    assert seen["ms_per_image"]["gpu_wait"] == 0.0, "CPU instances have no GPU work to wait for"
