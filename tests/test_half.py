"""The fp16 variant's numerics on the CPU (CI): OpenAI's conversion rules, the traced artifact's signature, and
its features against fp32 and against OpenAI's own for both encoder families. On a GPU, test_gpu.py checks the
same artifact through Triton."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clip_triton.transform import preprocess
from clip_triton_export.half import Fp32LayerNorm, export_fp16, to_openai_fp16
from clip_triton_export.pipeline import load_source
from conftest import IMAGE_NAMES, golden_checkpoint, golden_features, image_bytes


def pixels() -> np.ndarray:
    return np.stack([preprocess(image_bytes(name), 224) for name in IMAGE_NAMES])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("checkpoint", ["tiny-vit-b32", "tiny-rn"])
def test_the_conversion_keeps_what_openai_keeps_in_fp32(checkpoint: str) -> None:
    half = to_openai_fp16(load_source(golden_checkpoint(checkpoint), None).model)
    for name, parameter in half.named_parameters():
        in_norm = ".ln" in name or name.startswith("ln") or ".bn" in name or name.startswith("bn") or \
            ".downsample.1." in name
        assert parameter.dtype == (torch.float32 if in_norm else torch.float16), name
    norms = [m for m in half.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(isinstance(m, Fp32LayerNorm) for m in norms)
    if norms:  # OpenAI's LayerNorm: fp16 in, computed in fp32, fp16 out
        x = torch.randn(2, 5, norms[0].normalized_shape[0]).half()
        assert norms[0](x).dtype == torch.float16
        assert torch.equal(norms[0](x), torch.nn.functional.layer_norm(
            x.float(), norms[0].normalized_shape, norms[0].weight, norms[0].bias, norms[0].eps).half())


@pytest.mark.parametrize("checkpoint", ["tiny-vit-b32", "tiny-rn"])
def test_fp16_artifacts_give_openais_features_within_cosine_09999(checkpoint: str, tmp_path: Path) -> None:
    loaded = load_source(golden_checkpoint(checkpoint), None)
    result = export_fp16(loaded.model, loaded.spec, tmp_path / "model.pt", pixels())
    assert result.min_cosine >= 0.9999 and "fp16" in result.describe()
    module = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        features = module(torch.from_numpy(pixels()).half())
    assert features.dtype == torch.float32  # the contract's EMBEDDING type
    expected = np.stack([golden_features(checkpoint)[name] for name in IMAGE_NAMES])
    assert cosine(features.numpy(), expected).min() >= 0.9999


def test_full_size_vit_in_fp16_stays_within_cosine_09999_of_fp32(tmp_path: Path) -> None:
    loaded = load_source(None, "ViT-B/32")
    result = export_fp16(loaded.model, loaded.spec, tmp_path / "model.pt", pixels())
    assert result.min_cosine >= 0.9999


def test_an_fp16_model_below_the_required_cosine_is_refused(tmp_path: Path) -> None:
    loaded = load_source(golden_checkpoint("tiny-vit-b32"), None)
    with pytest.raises(ValueError, match="does not survive fp16"):
        export_fp16(loaded.model, loaded.spec, tmp_path / "model.pt", pixels(), min_cosine=1.5)
    assert not (tmp_path / "model.pt").exists()
