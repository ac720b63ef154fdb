"""Checkpoint formats, architecture inference for every OpenAI model, and the loader's error paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clip_triton_export.architectures import (
    OPENAI_ARCHITECTURES,
    CheckpointError,
    ResNetSpec,
    ViTSpec,
    infer_architecture,
    named_architecture,
)
from clip_triton_export.checkpoint import load_checkpoint, random_visual
from clip_triton_export.visual import build_visual
from conftest import GOLDEN, assert_features_match, golden_features

GOLDEN_PIXELS = np.load(GOLDEN / "pixels-224.npz")
GOLDEN_FILES = {"tiny-vit-b32": GOLDEN / "tiny-vit-b32.pt", "tiny-rn": GOLDEN / "tiny-rn.pt"}


def encode_golden(model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(GOLDEN_PIXELS["pixels"])).numpy()


def expected_golden(checkpoint: str) -> np.ndarray:
    features = golden_features(checkpoint)
    return np.stack([features[name] for name in GOLDEN_PIXELS["names"]])


def openai_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN_FILES[checkpoint], map_location="cpu", weights_only=True)


@pytest.mark.parametrize("checkpoint", sorted(GOLDEN_FILES))
def test_openai_state_dict_gives_openai_features(checkpoint: str) -> None:
    loaded = load_checkpoint(GOLDEN_FILES[checkpoint])
    assert not loaded.random_weights and loaded.source == f"openai:{GOLDEN_FILES[checkpoint].name}"
    assert_features_match(encode_golden(loaded.model), expected_golden(checkpoint))


def test_inferred_golden_architectures() -> None:
    assert load_checkpoint(GOLDEN_FILES["tiny-vit-b32"]).spec == ViTSpec(224, 64, 2, 32, 32)
    assert load_checkpoint(GOLDEN_FILES["tiny-rn"]).spec == ResNetSpec(224, 16, (1, 1, 1, 1), 32)


@pytest.mark.parametrize(
    "variant",
    ["fp32", "bf16", "wrapped_state_dict", "wrapped_model", "module_prefix", "visual_only", "safetensors",
     "torchscript"],
)
@pytest.mark.parametrize("checkpoint", sorted(GOLDEN_FILES))
def test_other_checkpoint_formats(variant: str, checkpoint: str, tmp_path: Path) -> None:
    state = openai_state_dict(checkpoint)
    path = tmp_path / "model.pt"
    if variant == "fp32":
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    elif variant == "bf16":
        torch.save({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, path)
    elif variant == "wrapped_state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif variant == "wrapped_model":
        torch.save({"model": state}, path)
    elif variant == "module_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif variant == "visual_only":
        torch.save({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}, path)
    elif variant == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif variant == "torchscript":
        path = tmp_path / "ViT-B-32.pt"
        save_torchscript_archive(state, path)
    loaded = load_checkpoint(path)
    if variant == "bf16":  # bf16 rounding changes the features; the load itself must be exact
        loaded_state = loaded.model.state_dict()
        for key, value in state.items():
            if key.startswith("visual.") and value.is_floating_point():
                assert torch.equal(loaded_state[key[len("visual."):]], value.bfloat16().float()), key
        return
    assert_features_match(encode_golden(loaded.model), expected_golden(checkpoint))


def save_torchscript_archive(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive shaped like OpenAI's downloads: the whole CLIP model's tensors, plus the
    `input_resolution`, `context_length` and `vocab_size` entries that build_model discards."""
    root = nn.Module()
    entries = dict(state)
    entries.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    for key, tensor in entries.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, tensor)
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.parametrize("name", sorted(OPENAI_ARCHITECTURES))
def test_every_openai_architecture_is_inferred_from_its_shapes(name: str) -> None:
    spec = OPENAI_ARCHITECTURES[name]
    with torch.device("meta"):  # shapes only: no memory, no time
        state = build_visual(spec).state_dict()
    assert infer_architecture(state) == spec


@pytest.mark.parametrize(
    ("name", "resolution", "embed_dim", "family"),
    [("RN50", 224, 1024, "ModifiedResNet"), ("RN101", 224, 512, "ModifiedResNet"),
     ("RN50x4", 288, 640, "ModifiedResNet"), ("RN50x16", 384, 768, "ModifiedResNet"),
     ("RN50x64", 448, 1024, "ModifiedResNet"), ("ViT-B/32", 224, 512, "VisionTransformer"),
     ("ViT-B/16", 224, 512, "VisionTransformer"), ("ViT-L/14", 224, 768, "VisionTransformer"),
     ("ViT-L/14@336px", 336, 768, "VisionTransformer")],
)
def test_openai_architecture_table(name: str, resolution: int, embed_dim: int, family: str) -> None:
    spec = named_architecture(name)
    assert (spec.image_resolution, spec.embed_dim, spec.family) == (resolution, embed_dim, family)
    assert named_architecture(name.replace("/", "-")) == spec


def test_visual_parameter_counts_match_openai() -> None:
    # Visual-tower sizes of OpenAI's published models, in millions of parameters.
    expected = {"ViT-B/32": 87.85, "RN50": 38.32}
    for name, millions in expected.items():
        with torch.device("meta"):
            model = build_visual(OPENAI_ARCHITECTURES[name])
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert count == pytest.approx(millions, abs=0.01), name


def test_random_init_is_seeded_and_gives_distinct_finite_features() -> None:
    spec = named_architecture("ViT-B/32")
    first, again, other = random_visual(spec, "ViT-B/32", 0), random_visual(spec, "ViT-B/32", 0), random_visual(spec, "ViT-B/32", 1)
    pixels = torch.from_numpy(GOLDEN_PIXELS["pixels"][:3])
    with torch.no_grad():
        a, b, c = first.model(pixels), again.model(pixels), other.model(pixels)
    assert first.random_weights and first.source == "random-init:ViT-B/32:seed=0"
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all() and a.shape == (3, 512)
    unit = torch.nn.functional.normalize(a, dim=1)
    assert (unit @ unit.T).fill_diagonal_(0).max() < 0.999  # images stay distinguishable


def test_unknown_architecture_name() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'ViT-H/14'.*ViT-B/32"):
        named_architecture("ViT-H/14")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    data = GOLDEN_FILES["tiny-vit-b32"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize(
    "content", [b"just some text\n" * 10, (GOLDEN.parent / "images" / "horse.png").read_bytes(), b"PK\x03\x04junk"]
)
def test_foreign_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "foreign.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="foreign.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_state_dict_without_visual_tower(tmp_path: Path) -> None:
    state = {k: v for k, v in openai_state_dict("tiny-vit-b32").items() if not k.startswith("visual.")}
    torch.save(state, tmp_path / "text_only.pt")
    with pytest.raises(CheckpointError, match="no CLIP visual encoder found"):
        load_checkpoint(tmp_path / "text_only.pt")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_inconsistent_weights(tmp_path: Path) -> None:
    state = openai_state_dict("tiny-vit-b32")
    state["visual.ln_post.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the inferred"):
        load_checkpoint(tmp_path / "broken.pt")


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    """The weights-only loader never runs code from a state dict file."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"visual.proj": Exploit()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
