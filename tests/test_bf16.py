"""The bf16 variant (OpenVINO IR computed in bfloat16): within cosine 0.999 of fp32 on every shared image, for
both architecture families, served by the real server, and really computed in bf16 where the CPU can."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import openvino
import pytest

from clip_triton_cli.main import main as cli_main
from clip_triton_export.architectures import named_architecture
from clip_triton_export.pipeline import export_repository
from clip_triton_export.precision import cpu_computes_bf16
from clip_triton_export.repository import RepositoryOptions, model_configs
from clip_triton_export.triton_models.visual_runtime import open_configured_runner
from conftest import CHECKPOINTS, GOLDEN, export_golden, golden_checkpoint, golden_features
from test_quantize import cosines, serve_shared_images, shared_images_in_fp32

NATIVE_BF16 = cpu_computes_bf16()


@pytest.fixture
def bf16_export(variant_export: Callable[[str, str], Path]) -> Callable[[str], Path]:
    return lambda arch: variant_export(arch, "bf16")


def visual_parameters(repository: Path) -> dict[str, str]:
    """clip_visual's config parameters, read back from the written config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = text_format.Parse((repository / "clip_visual/config.pbtxt").read_text(), pb.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def served_way(repository: Path, pixels: np.ndarray) -> np.ndarray:
    """The features clip_visual's own runner gives, opened as the written config says."""
    runner = open_configured_runner(visual_parameters(repository), str(repository / "clip_visual/1/model.xml"))
    try:
        return runner(pixels)
    finally:
        runner.close()


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_bf16_features_stay_within_cosine_0999_of_fp32(arch: str, bf16_export: Callable[[str], Path]) -> None:
    repository = bf16_export(arch)
    pixels, fp32 = shared_images_in_fp32(arch)
    bf16 = served_way(repository, pixels)
    assert bf16.shape == fp32.shape
    assert cosines(bf16, fp32).min() >= 0.999
    if NATIVE_BF16:  # it really is computed in bf16 (relative L2 error ~1e-2, against ~1e-6 in fp32)
        assert np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32) > 1e-3


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_bf16_of_the_golden_checkpoints_stays_within_cosine_0999_of_openais_own_features(checkpoint: str,
                                                                                          tmp_path: Path) -> None:
    """OpenAI's features from OpenAI's code (golden/), both architecture families, against bf16 on OpenAI's pixels."""
    export_golden(tmp_path, checkpoint, precision="bf16")
    pixels = np.load(GOLDEN / "pixels-224.npz")
    expected = golden_features(checkpoint)
    bf16 = served_way(tmp_path, pixels["pixels"])
    assert cosines(bf16, np.stack([expected[name] for name in pixels["names"]])).min() >= 0.999


def test_bf16_repository_asks_openvino_for_bf16_and_fp32_repositories_never_do(bf16_export: Callable[[str], Path],
                                                                               vit_repository: Path) -> None:
    assert visual_parameters(bf16_export("ViT-B/32"))["inference_precision"] == "bf16"
    assert visual_parameters(vit_repository)["inference_precision"] == "f32"
    spec = named_architecture("ViT-B/32")
    int8 = model_configs(spec, RepositoryOptions(precision="int8"))["clip_visual"]
    assert int8.parameters["inference_precision"].string_value == "f32"
    if NATIVE_BF16:
        model = str(bf16_export("ViT-B/32") / "clip_visual/1/model.xml")
        compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16


def test_bf16_serves_through_the_real_server_labelled_as_bf16(bf16_export: Callable[[str], Path]) -> None:
    repository = bf16_export("ViT-B/32")
    pixels, fp32 = shared_images_in_fp32("ViT-B/32")
    served, config = serve_shared_images(repository)
    assert cosines(served, fp32).min() >= 0.999
    np.testing.assert_allclose(served, served_way(repository, pixels), rtol=1e-5, atol=1e-5)
    assert config["parameters"]["weights"]["string_value"] == "random-init:ViT-B/32:seed=0:bf16"
    assert config["parameters"]["runtime"]["string_value"] == "openvino"
    assert config["parameters"]["split_ways"]["string_value"] == "1"


def test_bf16_native_config_for_the_triton_container_uses_the_openvino_backend_in_bf16() -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    visual = model_configs(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu", precision="bf16"))["clip_visual"]
    assert visual.backend == "openvino" and visual.default_model_filename == "model.xml"
    assert [group.kind for group in visual.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert visual.parameters["HINT_BF16"].string_value == "YES"
    assert visual.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    int8 = model_configs(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu", precision="int8"))["clip_visual"]
    assert "HINT_BF16" not in int8.parameters


def test_bf16_is_refused_for_torchscript(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--precision bf16 is made from the ONNX export"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="bf16", fmt="torchscript")
    assert not (tmp_path / "clip_visual").exists()


@pytest.mark.skipif(not NATIVE_BF16, reason="without bf16 units OpenVINO computes bf16 requests in fp32 (cosine 1)")
def test_bf16_below_the_minimum_cosine_is_refused_and_the_previous_export_survives(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export_golden(tmp_path, "tiny-vit-b32")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    export = ["export", "--checkpoint", str(golden_checkpoint("tiny-vit-b32")), "--repository", str(tmp_path),
              "--precision", "bf16"]
    assert cli_main(export + ["--min-cosine", "0.9999999"]) == 2
    assert re.search(r"bf16 features fell to cosine 0\.9\d+ of fp32 on the calibration images "
                     r"\(below 0\.9999999\); export fp32", capsys.readouterr().err)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert cli_main(export) == 0
    summary = capsys.readouterr().out
    assert "bf16 (OpenVINO); min cosine 0.99" in summary and "(computed in bf16 here)" in summary
    assert visual_parameters(tmp_path)["inference_precision"] == "bf16"
