"""The int8 variant (OpenVINO IR): within cosine 0.999 of fp32 on every shared image, for both architecture families."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino
import pytest
import torch
import tritonclient.grpc

from clip_triton.transform import preprocess
from clip_triton_export.pipeline import export_repository, load_source
from conftest import IMAGE_NAMES, image_bytes, running_server
from test_server import infer


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def int8_features(repository: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the exported IR as the server's Python backend does (OpenVINO, CPU, options from the IR)."""
    compiled = openvino.Core().compile_model(str(repository / "clip_visual/1/model.xml"), "CPU")
    return compiled.create_infer_request().infer({0: pixels})[0].copy()


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_features_stay_within_cosine_0999_of_fp32(arch: str, tmp_path: Path) -> None:
    export_repository(tmp_path, random_init=arch, precision="int8")
    loaded = load_source(None, arch)
    pixels = np.stack([preprocess(image_bytes(n), loaded.spec.image_resolution) for n in IMAGE_NAMES])
    with torch.no_grad():
        fp32 = loaded.model(torch.from_numpy(pixels)).numpy()
    int8 = int8_features(tmp_path, pixels)
    assert int8.shape == fp32.shape
    assert cosines(int8, fp32).min() >= 0.999
    assert not np.allclose(int8, fp32, rtol=1e-4, atol=1e-4)  # it really is another computation
    if arch == "ViT-B/32":  # and it serves, labelled as int8
        with running_server(tmp_path) as server:
            served = infer(server.grpc_url, [image_bytes(n) for n in IMAGE_NAMES])
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
            config = client.get_model_config("clip_visual", as_json=True)["config"]
            client.close()
        assert cosines(served, fp32).min() >= 0.999
        assert config["parameters"]["weights"]["string_value"] == "random-init:ViT-B/32:seed=0:int8"
        assert config["parameters"]["runtime"]["string_value"] == "openvino"


def test_int8_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 is quantized from the ONNX export"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="int8", fmt="torchscript")
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="bf16")
    assert not (tmp_path / "clip_visual").exists()


def test_int8_ir_carries_its_dynamic_quantization_setting(tmp_path: Path) -> None:
    """OpenVINO reads the run-time option from the IR, so the Python backend and Triton's native OpenVINO
    backend run the same int8 kernels; without it the int8 weights would go through fp32 kernels (4x slower)."""
    export_repository(tmp_path, random_init="ViT-B/32", precision="int8")
    compiled = openvino.Core().compile_model(str(tmp_path / "clip_visual/1/model.xml"), "CPU")
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 128


def test_int8_native_config_for_the_triton_container_uses_the_openvino_backend() -> None:
    from clip_triton_export.architectures import named_architecture
    from clip_triton_export.repository import RepositoryOptions, model_configs
    from tritonclient.grpc import model_config_pb2 as pb

    visual = model_configs(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu", precision="int8"))["clip_visual"]
    assert visual.backend == "openvino" and visual.default_model_filename == "model.xml"
    assert [group.kind for group in visual.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert visual.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_with_fast_jpeg_decode_stays_within_cosine_0999_of_the_exact_fp32_path(arch: str, tmp_path: Path) -> None:
    """The fastest phone-photo setup (int8 + fast JPEG decode) against OpenAI's exact transform + fp32 model."""
    from test_transform import phone_photo

    export_repository(tmp_path, random_init=arch, precision="int8")
    loaded = load_source(None, arch)
    photos = [phone_photo(name) for name in ("rocket.jpg", "chelsea.png", "hubble_deep_field.jpg")]
    size = loaded.spec.image_resolution
    exact = np.stack([preprocess(data, size) for data in photos])
    fast = np.stack([preprocess(data, size, fast_jpeg=True) for data in photos])
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(exact)).numpy()
    served_way = int8_features(tmp_path, fast)
    assert cosines(served_way, reference).min() >= 0.999
