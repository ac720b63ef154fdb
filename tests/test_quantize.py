"""The int8 variant (OpenVINO IR): within cosine 0.999 of fp32 on every shared image, for both architecture families."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import openvino
import pytest
import torch
import tritonclient.grpc

from clip_triton_cli.main import main as cli_main
from clip_triton.transform import preprocess
from clip_triton_export.pipeline import export_repository, load_source
from clip_triton_export.quantize import STATIC_VIT
from conftest import IMAGE_NAMES, export_golden, golden_checkpoint, image_bytes, running_server
from test_server import infer


@pytest.fixture
def int8_export(variant_export: Callable[[str, str], Path]) -> Callable[[str], Path]:
    return lambda arch: variant_export(arch, "int8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def shared_images_in_fp32(arch: str) -> tuple[np.ndarray, np.ndarray]:
    """The shared images' OpenAI pixels for `arch`, and the random-init model's eager fp32 features of them."""
    loaded = load_source(None, arch)
    pixels = np.stack([preprocess(image_bytes(n), loaded.spec.image_resolution) for n in IMAGE_NAMES])
    with torch.no_grad():
        return pixels, loaded.model(torch.from_numpy(pixels)).numpy()


def serve_shared_images(repository: Path) -> tuple[np.ndarray, dict]:
    """The shared images' features from a real server on `repository`, and clip_visual's config as served."""
    with running_server(repository) as server:
        served = infer(server.grpc_url, [image_bytes(n) for n in IMAGE_NAMES])
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
        config = client.get_model_config("clip_visual", as_json=True)["config"]
        client.close()
    return served, config


def int8_features(repository: Path, pixels: np.ndarray) -> np.ndarray:
    """Run the exported IR as the server's Python backend does (OpenVINO, CPU, options from the IR)."""
    compiled = openvino.Core().compile_model(str(repository / "clip_visual/1/model.xml"), "CPU")
    return compiled.create_infer_request().infer({0: pixels})[0].copy()


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_features_stay_within_cosine_0999_of_fp32(arch: str, int8_export: Callable[[str], Path]) -> None:
    tmp_path = int8_export(arch)
    pixels, fp32 = shared_images_in_fp32(arch)
    int8 = int8_features(tmp_path, pixels)
    assert int8.shape == fp32.shape
    assert cosines(int8, fp32).min() >= 0.999
    assert not np.allclose(int8, fp32, rtol=1e-4, atol=1e-4)  # it really is another computation
    if arch == "ViT-B/32":  # and it serves, labelled as int8
        served, config = serve_shared_images(tmp_path)
        assert cosines(served, fp32).min() >= 0.999
        assert config["parameters"]["weights"]["string_value"] == "random-init:ViT-B/32:seed=0:int8"
        assert config["parameters"]["runtime"]["string_value"] == "openvino"


def test_int8_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--precision int8 is made from the ONNX export"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="int8", fmt="torchscript")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="fp8")
    with pytest.raises(ValueError, match="--precision fp16 is the GPU target's"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="fp16")
    assert not (tmp_path / "clip_visual").exists()


def test_int8_ir_carries_its_dynamic_quantization_setting(int8_export: Callable[[str], Path]) -> None:
    """OpenVINO reads the run-time option from the IR, so the Python backend and Triton's native OpenVINO
    backend run the same int8 kernels; without it the int8 weights would go through fp32 kernels (4x slower)."""
    compiled = openvino.Core().compile_model(str(int8_export("ViT-B/32") / "clip_visual/1/model.xml"), "CPU")
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 128


def int8_scheme(repository: Path) -> str:
    return openvino.Core().read_model(str(repository / "clip_visual/1/model.xml")).get_rt_info(
        ["clip_triton", "int8_scheme"]).astype(str)


def static_activations(repository: Path) -> dict[str, bool]:
    """Each MatMul / Convolution of the IR: whether its activation input comes through a FakeQuantize
    (a static range), rather than as fp32 (kept fp32, or quantized at run time)."""
    model = openvino.Core().read_model(str(repository / "clip_visual/1/model.xml"))
    return {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() == "FakeQuantize"
            for op in model.get_ordered_ops() if op.get_type_name() in ("MatMul", "Convolution")}


def test_int8_vit_uses_static_ranges_except_in_its_sensitive_layers(int8_export: Callable[[str], Path]) -> None:
    """Static ranges are what makes int8 ViT fast (81 -> 101 images/s alone); the patch embedding, the
    attention output projections and the final projection lost fidelity with them, so they stay fp32 in
    (NNCF itself leaves the softmax-weighted sum of values, MatMul_4, unquantized)."""
    repository = int8_export("ViT-B/32")
    static = static_activations(repository)
    blocks = [f"/transformer/resblocks/resblocks.{block}" for block in range(12)]
    sensitive = {"/conv1/Conv", "EMBEDDING"} | {f"{block}/attn/out_proj/MatMul" for block in blocks}
    softmax_weighted = {f"{block}/attn/MatMul_4" for block in blocks}
    assert {name for name, is_static in static.items() if not is_static} == sensitive | softmax_weighted
    assert all(static[f"{block}/mlp/{layer}/MatMul"] for block in blocks for layer in ("c_fc", "c_proj"))
    assert int8_scheme(repository) == STATIC_VIT


def test_int8_vit_falls_back_to_run_time_ranges_when_static_ones_lose_fidelity(tmp_path: Path) -> None:
    """The tiny golden ViT's activations quantize badly with static ranges (cosine < 0.999 on the
    calibration images); the export notices and ships the all-run-time scheme instead."""
    summary = export_repository(tmp_path, checkpoint=golden_checkpoint("tiny-vit-b32"), precision="int8")
    assert int8_scheme(tmp_path).startswith("activations quantized at run time")
    assert "activations quantized at run time (static ranges measured below cosine 0.999)" in summary
    assert not any(static_activations(tmp_path).values())


def test_int8_that_cannot_keep_cosine_0999_is_refused_and_the_previous_export_survives(tmp_path: Path) -> None:
    """The tiny golden ModifiedResNet loses too much in int8 (cosine ~0.998 on the calibration images)."""
    export_golden(tmp_path, "tiny-rn")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=r"int8 features fell to cosine 0\.99\d+ of fp32 on the calibration "
                                         r"images \(below 0\.999\); export fp32"):
        export_golden(tmp_path, "tiny-rn", precision="int8")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_int8_min_cosine_can_be_lowered_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = golden_checkpoint("tiny-rn")
    assert cli_main(["export", "--checkpoint", str(checkpoint), "--repository", str(tmp_path),
                     "--precision", "int8", "--int8-min-cosine", "0.99"]) == 0
    summary = capsys.readouterr().out
    assert "int8 static QDQ activations (ONNX Runtime); min cosine 0.99" in summary
    assert (tmp_path / "clip_visual/1/model.xml").is_file() and (tmp_path / "clip_visual/1/model.bin").is_file()


def test_int8_native_config_for_the_triton_container_uses_the_openvino_backend() -> None:
    from clip_triton_export.architectures import named_architecture
    from clip_triton_export.repository import RepositoryOptions, model_configs
    from tritonclient.grpc import model_config_pb2 as pb

    visual = model_configs(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu", precision="int8"))["clip_visual"]
    assert visual.backend == "openvino" and visual.default_model_filename == "model.xml"
    assert [group.kind for group in visual.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert visual.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_with_fast_jpeg_decode_stays_within_cosine_0999_of_the_exact_fp32_path(arch: str, int8_export: Callable[[str], Path]) -> None:
    """The fastest phone-photo setup (int8 + fast JPEG decode) against OpenAI's exact transform + fp32 model."""
    from test_transform import phone_photo

    tmp_path = int8_export(arch)
    loaded = load_source(None, arch)
    photos = [phone_photo(name) for name in ("rocket.jpg", "chelsea.png", "hubble_deep_field.jpg")]
    size = loaded.spec.image_resolution
    exact = np.stack([preprocess(data, size) for data in photos])
    fast = np.stack([preprocess(data, size, fast_jpeg=True) for data in photos])
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(exact)).numpy()
    served_way = int8_features(tmp_path, fast)
    assert cosines(served_way, reference).min() >= 0.999
