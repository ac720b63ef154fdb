"""Generated configs parse with Triton's own protobuf, and the checked-in repository is what the generator makes."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from clip_triton import contract
from clip_triton_export.architectures import named_architecture
from clip_triton_export.repository import RepositoryOptions, model_configs, render_repository
from conftest import ROOT

CHECKED_IN = ROOT / "model_repository"


def parse(content: bytes) -> pb.ModelConfig:
    return text_format.Parse(content.decode(), pb.ModelConfig())


@pytest.mark.parametrize("fmt, precision", [("onnx", "fp32"), ("torchscript", "fp32"), ("onnx", "bf16"), ("onnx", "int8")])
@pytest.mark.parametrize("target", ["cpu", "gpu"])
@pytest.mark.parametrize("arch", ["ViT-B/32", "ViT-L/14@336px", "RN50x4"])
def test_every_config_parses_and_follows_the_contract(fmt: str, precision: str, target: str, arch: str) -> None:
    spec = named_architecture(arch)
    files = render_repository(spec, RepositoryOptions(fmt=fmt, target=target, precision=precision))
    configs = {path.split("/")[0]: parse(content) for path, content in files.items() if path.endswith("config.pbtxt")}
    r, d = spec.image_resolution, spec.embed_dim

    ensemble = configs[contract.ENSEMBLE_MODEL]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size >= 64
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("IMAGE", pb.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [("EMBEDDING", pb.TYPE_FP32, [d])]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [contract.PREPROCESS_MODEL, contract.VISUAL_MODEL]
    assert steps[0].output_map["PIXEL_VALUES"] == steps[1].input_map["PIXEL_VALUES"]
    assert steps[1].output_map["EMBEDDING"] == "EMBEDDING"

    preprocess = configs[contract.PREPROCESS_MODEL]
    assert preprocess.backend == "python" and preprocess.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in preprocess.output] == [("PIXEL_VALUES", [3, r, r])]
    assert preprocess.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU

    visual = configs[contract.VISUAL_MODEL]
    assert [(t.name, t.data_type, list(t.dims)) for t in visual.input] == [("PIXEL_VALUES", pb.TYPE_FP32, [3, r, r])]
    assert [(t.name, list(t.dims)) for t in visual.output] == [("EMBEDDING", [d])]
    assert list(visual.dynamic_batching.preferred_batch_size)
    for config in configs.values():
        assert config.max_batch_size == ensemble.max_batch_size

    if target == "gpu" and precision != "fp32":  # OpenVINO IR: the native OpenVINO backend, on CPU
        assert (visual.backend, visual.platform, visual.default_model_filename) == ("openvino", "", "model.xml")
        assert visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert ("HINT_BF16" in visual.parameters) == (precision == "bf16")
        assert f"{contract.VISUAL_MODEL}/1/model.py" not in files
    elif target == "gpu":
        expected = {"onnx": ("onnxruntime", "onnxruntime_onnx", "model.onnx"),
                    "torchscript": ("pytorch", "pytorch_libtorch", "model.pt")}[fmt]
        assert (visual.backend, visual.platform, visual.default_model_filename) == expected
        assert visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        assert f"{contract.VISUAL_MODEL}/1/model.py" not in files
    else:
        assert visual.backend == "python" and visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        expected_runtime = {"onnx": "openvino" if spec.family == "VisionTransformer" else "onnxruntime",
                            "torchscript": "torchscript"}[fmt] if precision == "fp32" else "openvino"
        assert visual.parameters["runtime"].string_value == expected_runtime
        assert visual.parameters["artifact"].string_value == {"fp32": f"model.{'onnx' if fmt == 'onnx' else 'pt'}",
                                                              "bf16": "model.xml", "int8": "model.xml"}[precision]
        if expected_runtime == "openvino":  # bf16 only where asked for: fp32 and int8 hold the rest to fp32
            assert visual.parameters["inference_precision"].string_value == ("bf16" if precision == "bf16" else "f32")
        else:
            assert "inference_precision" not in visual.parameters
        assert f"{contract.VISUAL_MODEL}/1/model.py" in files


def test_max_batch_size_is_applied_everywhere() -> None:
    configs = model_configs(named_architecture("RN50"), RepositoryOptions(max_batch_size=8))
    assert {c.max_batch_size for c in configs.values()} == {8}
    assert max(configs[contract.VISUAL_MODEL].dynamic_batching.preferred_batch_size) <= 8


def test_preprocessing_decodes_on_every_core_on_the_cpu_target_and_per_instance_on_the_gpu_target() -> None:
    spec = named_architecture("ViT-B/32")
    decode_threads = {target: model_configs(spec, RepositoryOptions(target=target))[contract.PREPROCESS_MODEL]
                      .parameters["decode_threads"].string_value for target in ("cpu", "gpu")}
    assert decode_threads == {"cpu": "0", "gpu": "1"}
    tuned = model_configs(spec, RepositoryOptions(preprocess_threads=3))[contract.PREPROCESS_MODEL]
    assert tuned.parameters["decode_threads"].string_value == "3"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="preprocess_threads must be 0"):
        RepositoryOptions(preprocess_threads=-1)
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        RepositoryOptions(target="tpu")
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        RepositoryOptions(fmt="tflite")


def test_checked_in_repository_is_exactly_what_the_generator_makes() -> None:
    expected = render_repository(named_architecture("ViT-B/32"), RepositoryOptions(fmt="onnx", target="gpu"))
    actual = {str(p.relative_to(CHECKED_IN)): p.read_bytes() for p in sorted(CHECKED_IN.rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(actual) == sorted(expected), "run `make repository` to regenerate model_repository/"
    for path, content in expected.items():
        assert actual[path] == content, f"{path} differs: run `make repository`"


def test_preprocessing_model_ships_the_one_transform() -> None:
    import clip_triton.transform

    files = render_repository(named_architecture("ViT-B/32"), RepositoryOptions())
    assert files["clip_preprocess/1/clip_transform.py"] == Path(clip_triton.transform.__file__).read_bytes()
