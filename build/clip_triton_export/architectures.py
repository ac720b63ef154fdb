"""CLIP visual architectures: the named OpenAI models, and inference of a spec from tensor shapes.

Inference reads only shapes, the way OpenAI's `build_model` does, so any checkpoint with OpenAI's
key names works, including sizes OpenAI never published (like the tiny test checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class ViTSpec:
    image_resolution: int
    width: int
    layers: int
    patch_size: int
    embed_dim: int

    @property
    def heads(self) -> int:
        return self.width // 64 or 1

    family = "VisionTransformer"


@dataclass(frozen=True)
class ResNetSpec:
    image_resolution: int
    width: int
    layers: tuple[int, int, int, int]
    embed_dim: int

    @property
    def heads(self) -> int:
        return self.width * 32 // 64

    family = "ModifiedResNet"


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


def infer_architecture(visual: Mapping[str, torch.Tensor]) -> VisualSpec:
    """Derive the spec from a visual state dict (keys without the `visual.` prefix)."""
    if "proj" in visual and "conv1.weight" in visual:
        conv = visual["conv1.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
        grid = round((visual["positional_embedding"].shape[0] - 1) ** 0.5)
        return ViTSpec(patch * grid, width, layers, patch, visual["proj"].shape[1])
    if "attnpool.c_proj.weight" in visual:
        layers = tuple(len({k.split(".")[1] for k in visual if k.startswith(f"layer{b}.")}) for b in (1, 2, 3, 4))
        width = visual["layer1.0.conv1.weight"].shape[0]
        spatial = round((visual["attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        return ResNetSpec(spatial * 32, width, layers, visual["attnpool.c_proj.weight"].shape[0])
    raise CheckpointError("no CLIP visual encoder found (expected OpenAI key names such as visual.conv1.weight)")
