"""Export of every OpenAI architecture to ONNX (and TorchScript), with a dynamic batch axis."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from clip_triton_export.architectures import OPENAI_ARCHITECTURES, named_architecture
from clip_triton_export.checkpoint import load_checkpoint, random_visual
from clip_triton_export.export import export_visual
from conftest import GOLDEN, assert_features_match, golden_features

PIXELS = np.load(GOLDEN / "pixels-224.npz")


def onnx_io(path: Path) -> tuple[list, list]:
    model = onnx.load(str(path), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ([(i.name, dims(i)) for i in model.graph.input], [(o.name, dims(o)) for o in model.graph.output])


@pytest.mark.parametrize("name", sorted(OPENAI_ARCHITECTURES))
def test_every_architecture_exports_to_onnx_with_its_shapes(name: str, tmp_path: Path) -> None:
    spec = named_architecture(name)
    path = export_visual(random_visual(spec, name).model, spec, "onnx", tmp_path / "model.onnx")
    r = spec.image_resolution
    assert onnx_io(path) == ([("PIXEL_VALUES", ["batch", 3, r, r])], [("EMBEDDING", ["batch", spec.embed_dim])])
    path.unlink()  # full-size models are up to 1.7 GB


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_full_size_export_matches_eager_torch_at_any_batch(name: str, fmt: str, tmp_path: Path) -> None:
    spec = named_architecture(name)
    loaded = random_visual(spec, name)
    path = export_visual(loaded.model, spec, fmt, tmp_path / "model")
    pixels = PIXELS["pixels"][:3]
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(pixels)).numpy()
    for batch in (pixels[:1], pixels):  # exported with batch 2: other batch sizes must work too
        if fmt == "onnx":
            actual = onnxruntime.InferenceSession(str(path)).run(None, {"PIXEL_VALUES": batch})[0]
        else:
            actual = torch.jit.load(str(path))(torch.from_numpy(batch)).detach().numpy()
        assert_features_match(actual, expected[: len(batch)])


@pytest.mark.parametrize("checkpoint", ["tiny-vit-b32", "tiny-rn"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_golden_checkpoints_match_openai_in_process(checkpoint: str, fmt: str, tmp_path: Path) -> None:
    loaded = load_checkpoint(GOLDEN / f"{checkpoint}.pt")
    path = export_visual(loaded.model, loaded.spec, fmt, tmp_path / "model")
    if fmt == "onnx":
        actual = onnxruntime.InferenceSession(str(path)).run(None, {"PIXEL_VALUES": PIXELS["pixels"]})[0]
    else:
        actual = torch.jit.load(str(path))(torch.from_numpy(PIXELS["pixels"])).detach().numpy()
    features = golden_features(checkpoint)
    assert_features_match(actual, np.stack([features[n] for n in PIXELS["names"]]))


def test_torchscript_takes_the_contract_input_name(tmp_path: Path) -> None:
    """Triton's PyTorch backend binds inputs by forward's argument names."""
    loaded = load_checkpoint(GOLDEN / "tiny-vit-b32.pt")
    module = torch.jit.load(str(export_visual(loaded.model, loaded.spec, "torchscript", tmp_path / "m.pt")))
    assert [argument.name for argument in module.forward.schema.arguments] == ["self", "PIXEL_VALUES"]


def test_unknown_format(tmp_path: Path) -> None:
    loaded = load_checkpoint(GOLDEN / "tiny-vit-b32.pt")
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        export_visual(loaded.model, loaded.spec, "tflite", tmp_path / "m")
