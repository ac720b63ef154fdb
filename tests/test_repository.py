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


VARIANTS = [  # target, format, precision, visual backend: every combination the exporter accepts
    ("cpu", "onnx", "fp32", "python"), ("cpu", "torchscript", "fp32", "python"), ("cpu", "onnx", "bf16", "python"),
    ("cpu", "onnx", "int8", "python"),
    ("gpu", "torchscript", "fp16", "python"), ("gpu", "torchscript", "fp32", "python"),
    ("gpu", "torchscript", "fp16", "native"), ("gpu", "onnx", "fp32", "native"), ("gpu", "onnx", "bf16", "python"),
    ("gpu", "onnx", "int8", "python"),
]


@pytest.mark.parametrize("target, fmt, precision, backend", VARIANTS)
@pytest.mark.parametrize("arch", ["ViT-B/32", "ViT-L/14@336px", "RN50x4"])
def test_every_config_parses_and_follows_the_contract(target: str, fmt: str, precision: str, backend: str,
                                                      arch: str) -> None:
    spec = named_architecture(arch)
    options = RepositoryOptions(fmt=fmt, target=target, precision=precision, visual_backend=backend)
    files = render_repository(spec, options)
    configs = {path.split("/")[0]: parse(content) for path, content in files.items() if path.endswith("config.pbtxt")}
    r, d = spec.image_resolution, spec.embed_dim
    on_gpu = target == "gpu" and precision in ("fp16", "fp32")
    pixels_type = pb.TYPE_FP16 if precision == "fp16" else pb.TYPE_FP32

    ensemble = configs[contract.ENSEMBLE_MODEL]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == contract.MAX_BATCH_SIZE
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("IMAGE", pb.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [("EMBEDDING", pb.TYPE_FP32, [d])]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [contract.PREPROCESS_MODEL, contract.VISUAL_MODEL]
    assert steps[0].output_map["PIXEL_VALUES"] == steps[1].input_map["PIXEL_VALUES"]
    assert steps[1].output_map["EMBEDDING"] == "EMBEDDING"

    preprocess = configs[contract.PREPROCESS_MODEL]
    assert preprocess.backend == "python" and preprocess.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in preprocess.output] == [("PIXEL_VALUES", pixels_type, [3, r, r])]
    kind = pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    assert preprocess.instance_group[0].kind == kind
    preprocess_code = files[f"{contract.PREPROCESS_MODEL}/1/model.py"]
    assert (b"from clip_gpu_transform import" in preprocess_code) == on_gpu
    assert (preprocess.parameters["gpu_decode"].string_value == "true") == on_gpu
    assert preprocess.parameters["mixed_resize_max_pixels"].string_value == ("2097152" if on_gpu else "")

    visual = configs[contract.VISUAL_MODEL]
    assert [(t.name, t.data_type, list(t.dims)) for t in visual.input] == [("PIXEL_VALUES", pixels_type, [3, r, r])]
    assert [(t.name, list(t.dims)) for t in visual.output] == [("EMBEDDING", [d])]
    assert list(visual.dynamic_batching.preferred_batch_size)
    composing = 256 if target == "gpu" else ensemble.max_batch_size  # an execution may hold several requests
    assert preprocess.max_batch_size == visual.max_batch_size == composing >= ensemble.max_batch_size
    assert max(visual.dynamic_batching.preferred_batch_size) <= composing

    if target == "gpu" and not on_gpu:  # OpenVINO IR: the native OpenVINO backend, on CPU
        assert (visual.backend, visual.platform, visual.default_model_filename) == ("openvino", "", "model.xml")
        assert visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert ("HINT_BF16" in visual.parameters) == (precision == "bf16")
        assert f"{contract.VISUAL_MODEL}/1/model.py" not in files
    elif target == "gpu" and backend == "native":
        expected = {"onnx": ("onnxruntime", "onnxruntime_onnx", "model.onnx"),
                    "torchscript": ("pytorch", "pytorch_libtorch", "model.pt")}[fmt]
        assert (visual.backend, visual.platform, visual.default_model_filename) == expected
        assert visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        assert f"{contract.VISUAL_MODEL}/1/model.py" not in files
    elif target == "gpu":  # torch in the Python backend, on the GPU, taking the pixels where they are
        assert visual.backend == "python" and visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        assert visual.parameters["artifact"].string_value == "model.pt"
        assert visual.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
        assert b"torch.jit.load" in files[f"{contract.VISUAL_MODEL}/1/model.py"]
        # CUDA graphs for batches of up to 64; a batch pads to the next size, at most 1.5x its own
        graph_sizes = [int(size) for size in visual.parameters["cuda_graph_batch_sizes"].string_value.split(",")]
        assert graph_sizes[0] == 1 and graph_sizes[-1] == 64 and graph_sizes == sorted(set(graph_sizes))
        assert all(min(size for size in graph_sizes if size >= n) <= 1.5 * n for n in range(1, 65))
        assert f"{contract.VISUAL_MODEL}/1/clip_cuda_graphs.py" in files
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
        assert "cuda_graph_batch_sizes" not in visual.parameters


def test_each_target_has_its_own_defaults() -> None:
    cpu, gpu = RepositoryOptions(), RepositoryOptions(target="gpu")
    assert (cpu.fmt, cpu.precision, cpu.on_gpu) == ("onnx", "fp32", False)
    assert (gpu.fmt, gpu.precision, gpu.visual_backend, gpu.gpu_decode, gpu.on_gpu) == (
        "torchscript", "fp16", "python", True, True)
    int8 = RepositoryOptions(target="gpu", precision="int8")
    assert (int8.fmt, int8.on_gpu) == ("onnx", False)  # made from the ONNX export, run by OpenVINO on CPU


@pytest.mark.parametrize("options, message", [
    ({"precision": "fp16"}, "--precision fp16 is the GPU target's"),
    ({"target": "gpu", "fmt": "onnx", "precision": "fp32"}, "for ONNX use --visual-backend native"),
    ({"target": "gpu", "fmt": "onnx", "precision": "fp16", "visual_backend": "native"}, "--precision fp16"),
    ({"target": "gpu", "precision": "int8", "fmt": "torchscript"}, "made from the ONNX export"),
    ({"visual_backend": "tensorrt"}, "unknown visual backend"),
    ({"target": "gpu", "cuda_graph_batch_sizes": (1, 0, 8)}, "CUDA graph batch sizes must be positive"),
    ({"target": "gpu", "mixed_resize_max_pixels": -1}, "mixed_resize_max_pixels must be 0 or more"),
    ({"max_batch_size": 64, "composing_max_batch_size": 32}, "at least max_batch_size"),
])
def test_combinations_that_cannot_work_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RepositoryOptions(**options)


def test_max_batch_size_is_applied_everywhere() -> None:
    configs = model_configs(named_architecture("RN50"), RepositoryOptions(max_batch_size=8))
    assert {c.max_batch_size for c in configs.values()} == {8}
    assert max(configs[contract.VISUAL_MODEL].dynamic_batching.preferred_batch_size) <= 8


def test_preprocessing_decodes_on_every_core_on_the_cpu_target_and_on_four_threads_per_gpu_instance() -> None:
    spec = named_architecture("ViT-B/32")
    decode_threads = {target: model_configs(spec, RepositoryOptions(target=target))[contract.PREPROCESS_MODEL]
                      .parameters["decode_threads"].string_value for target in ("cpu", "gpu")}
    assert decode_threads == {"cpu": "0", "gpu": "4"}
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
    expected = render_repository(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu"))
    actual = {str(p.relative_to(CHECKED_IN)): p.read_bytes() for p in sorted(CHECKED_IN.rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(actual) == sorted(expected), "run `make repository` to regenerate model_repository/"
    for path, content in expected.items():
        assert actual[path] == content, f"{path} differs: run `make repository`"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_shipped_modules_are_their_sources_under_a_generated_header(target: str) -> None:
    """Every Python file in a model directory is a copy of one package file, byte for byte after a header
    that says it is generated and from where; the models import the contract from their copy."""
    import clip_triton
    import clip_triton_export.triton_models as models

    sources = {"clip_contract.py": Path(clip_triton.__file__).parent / "contract.py",
               "clip_transform.py": Path(clip_triton.__file__).parent / "transform.py",
               "clip_executing_gauge.py": Path(models.__file__).parent / "executing_gauge.py",
               "clip_visual_runtime.py": Path(models.__file__).parent / "visual_runtime.py",
               "clip_gpu_transform.py": Path(models.__file__).parent / "gpu_transform.py",
               "clip_batching.py": Path(models.__file__).parent / "batching.py",
               "clip_cuda_graphs.py": Path(models.__file__).parent / "cuda_graphs.py",
               "clip_pillow_resize.py": Path(models.__file__).parent / "pillow_resize.py",
               "clip_mixed_resize.py": Path(models.__file__).parent / "mixed_resize.py",
               "clip_stage_clock.py": Path(models.__file__).parent / "stage_clock.py",
               "clip_preprocess_metrics.py": Path(models.__file__).parent / "preprocess_metrics.py"}
    files = render_repository(named_architecture("ViT-B/32"), RepositoryOptions(target=target))
    python_files = {path: content for path, content in files.items() if path.endswith(".py")}
    assert python_files
    for path, content in python_files.items():
        header, _, body = content.partition(b"\n")
        assert header.startswith(b"# Generated by `clip-triton export`: a copy of "), path
        source_name = header.split(b"a copy of ")[1].split(b".py")[0].decode() + ".py"
        if path.endswith("/model.py"):
            source = Path(models.__file__).parent / Path(source_name).name
            assert b"from clip_contract import" in body, f"{path} must read names from the shipped contract"
        else:
            source = sources[Path(path).name]
        assert source_name.endswith(f"{source.parent.name}/{source.name}"), (path, source_name)
        assert body == source.read_bytes(), f"{path} is not a copy of {source}"
