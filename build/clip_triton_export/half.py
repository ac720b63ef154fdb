"""The fp16 visual encoder: what OpenAI's `clip.load` computes on CUDA.

`clip.load(..., device="cuda")` keeps the checkpoint's fp16 weights (`clip.model.convert_weights`): every
convolution, linear layer, attention projection and the final projection in fp16, while LayerNorm and
BatchNorm keep fp32 parameters, and OpenAI's LayerNorm computes in fp32 and casts its result back to
fp16. Images are cast to fp16 before the first convolution, and so are the class and positional
embeddings where they are added (storing them in fp16 is the same cast, done once). `encode_image`
returns fp16; our artifact returns that as fp32, the contract's EMBEDDING type.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .architectures import VisualSpec
from .precision import MIN_COSINE, min_cosine as lowest_cosine

FP16_MODULES = (nn.Conv2d, nn.Linear)


class Fp32LayerNorm(nn.LayerNorm):
    """OpenAI's LayerNorm subclass: normalizes in fp32 whatever the input's type, returns the input's type."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def to_openai_fp16(model: nn.Module) -> nn.Module:
    """A copy of an fp32 visual encoder converted the way `convert_weights` converts OpenAI's CLIP."""
    model = copy.deepcopy(model).float().eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.LayerNorm:
                replacement = Fp32LayerNorm(child.normalized_shape, eps=child.eps)
                replacement.load_state_dict(child.state_dict())
                setattr(module, name, replacement)
        if isinstance(module, FP16_MODULES):
            module.half()
    for name, parameter in model.named_parameters():
        # Attention's stacked q/k/v projection (nn.MultiheadAttention's in_proj_*), the final projection and
        # the embeddings that are added to fp16 activations.
        if name.rsplit(".", 1)[-1] in ("in_proj_weight", "in_proj_bias", "proj", "class_embedding",
                                       "positional_embedding"):
            parameter.data = parameter.data.half()
    return model


class HalfEncoder(nn.Module):
    """fp16 pixels in, fp32 features out (the fp16 artifact's signature)."""

    def __init__(self, fp16_visual: nn.Module):
        super().__init__()
        self.visual = fp16_visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels.half()).float()


@dataclass(frozen=True)
class HalfExport:
    """What the fp16 export measured: its features against fp32 on the calibration images."""

    min_cosine: float
    images: int

    device: str

    def describe(self) -> str:
        return (f"fp16: OpenAI's fp16 encode_image (fp16 weights, LayerNorm in fp32), min cosine to fp32 "
                f"{self.min_cosine:.6f} over {self.images} calibration images (computed on {self.device})")


def export_fp16(model: nn.Module, spec: VisualSpec, path: Path, pixels: np.ndarray,
                min_cosine: float = MIN_COSINE) -> HalfExport:
    """Trace the fp16 encoder to TorchScript at `path` (fp16 PIXEL_VALUES in, fp32 EMBEDDING out) after
    checking every calibration image's features against fp32; refuses below `min_cosine`. The check runs
    on a GPU where there is one (where the artifact will run), else on the CPU."""
    model = model.float().eval()
    encoder = HalfEncoder(to_openai_fp16(model)).eval()
    example = torch.zeros(2, 3, spec.image_resolution, spec.image_resolution, dtype=torch.float16)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (example,), check_trace=False)
        batch = torch.from_numpy(pixels).to(device)
        reference = model.to(device)(batch).cpu().numpy()
        half = traced.to(device)(batch.half()).cpu().numpy()
        traced, _ = traced.cpu(), model.cpu()
    measured = lowest_cosine(half, reference)
    if not measured >= min_cosine:
        raise ValueError(f"the fp16 model's features fall to cosine {measured:.6f} of fp32 on the calibration "
                         f"images (required: {min_cosine}); this checkpoint does not survive fp16")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return HalfExport(measured, len(pixels), "the GPU" if device.type == "cuda" else "this machine's CPU")
