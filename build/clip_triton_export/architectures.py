"""CLIP visual architectures: the named OpenAI models, and inference of a spec from tensor shapes.

Inference reads only shapes, the way OpenAI's `build_model` does, so any checkpoint with OpenAI's
key names works, including sizes OpenAI never published (like the tiny test checkpoints). What shapes
cannot say (attention heads, the MLP's activation, LayerNorm's eps) has OpenAI's value by default and
comes from the checkpoint's config otherwise (hf_checkpoint.py, open_clip_checkpoint.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


ACTIVATIONS = ("quick_gelu", "gelu")  # OpenAI's sigmoid approximation; exact (erf) GELU as LAION/HF models use
# Attention heads of the open_clip ViTs whose width OpenAI never used (their head width is not 64):
# ViT-H/14 1280 / 80, ViT-g/14 1408 / 88, ViT-bigG/14 1664 / 104; 16 heads each. Shapes cannot tell heads.
OPEN_CLIP_HEADS = {1280: 16, 1408: 16, 1664: 16}


@dataclass(frozen=True)
class ViTSpec:
    """A VisionTransformer. Fields left 0 take OpenAI's rule: heads = width / 64, MLP width = 4 * width."""

    image_resolution: int
    width: int
    layers: int
    patch_size: int
    embed_dim: int
    heads: int = 0
    mlp_width: int = 0
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    family = "VisionTransformer"

    def __post_init__(self) -> None:
        if not self.heads:
            object.__setattr__(self, "heads", OPEN_CLIP_HEADS.get(self.width, self.width // 64 or 1))
        if not self.mlp_width:
            object.__setattr__(self, "mlp_width", 4 * self.width)
        if self.activation not in ACTIVATIONS:
            raise CheckpointError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.width % self.heads:
            raise CheckpointError(f"width {self.width} is not divisible by {self.heads} attention heads")


@dataclass(frozen=True)
class ResNetSpec:
    """A ModifiedResNet; heads (of the attention pool) 0 = OpenAI's rule, width * 32 / 64."""

    image_resolution: int
    width: int
    layers: tuple[int, int, int, int]
    embed_dim: int
    heads: int = 0

    family = "ModifiedResNet"

    def __post_init__(self) -> None:
        if not self.heads:
            object.__setattr__(self, "heads", self.width * 32 // 64)
        if (self.width * 32) % self.heads:
            raise CheckpointError(f"attention pool width {self.width * 32} is not divisible by {self.heads} heads")


VisualSpec = Union[ViTSpec, ResNetSpec]

OPENAI_ARCHITECTURES: dict[str, VisualSpec] = {
    "RN50": ResNetSpec(224, 64, (3, 4, 6, 3), 1024),
    "RN101": ResNetSpec(224, 64, (3, 4, 23, 3), 512),
    "RN50x4": ResNetSpec(288, 80, (4, 6, 10, 6), 640),
    "RN50x16": ResNetSpec(384, 96, (6, 8, 18, 8), 768),
    "RN50x64": ResNetSpec(448, 128, (3, 15, 36, 10), 1024),
    "ViT-B/32": ViTSpec(224, 768, 12, 32, 512),
    "ViT-B/16": ViTSpec(224, 768, 12, 16, 512),
    "ViT-L/14": ViTSpec(224, 1024, 24, 14, 768),
    "ViT-L/14@336px": ViTSpec(336, 1024, 24, 14, 768),
}


def named_architecture(name: str) -> VisualSpec:
    """Look up an OpenAI model name; also accepts the file-style spelling (`ViT-B-32`)."""
    for known, spec in OPENAI_ARCHITECTURES.items():
        if name in (known, known.replace("/", "-")):
            return spec
    raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(OPENAI_ARCHITECTURES)}")


def infer_architecture(visual: Mapping[str, torch.Tensor], **settings: Any) -> VisualSpec:
    """Derive the spec from a visual state dict (keys without the `visual.` prefix). `settings` are the
    fields shapes cannot give (heads, activation, layer_norm_eps), read from a config by the caller."""
    if "proj" in visual and "conv1.weight" in visual:
        conv = visual["conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
        grid = round((visual["positional_embedding"].shape[0] - 1) ** 0.5)
        mlp_width = visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] if layers else 0
        return ViTSpec(patch * grid, width, layers, patch, visual["proj"].shape[1], mlp_width=mlp_width, **settings)
    if "attnpool.c_proj.weight" in visual:
        layers = tuple(len({k.split(".")[1] for k in visual if k.startswith(f"layer{b}.")}) for b in (1, 2, 3, 4))
        width = visual["layer1.0.conv1.weight"].shape[0]
        spatial = round((visual["attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        resnet = {k: v for k, v in settings.items() if k == "heads"}
        return ResNetSpec(spatial * 32, width, layers, visual["attnpool.c_proj.weight"].shape[0], **resnet)
    raise CheckpointError("no CLIP visual encoder found (expected OpenAI key names such as visual.conv1.weight)")

