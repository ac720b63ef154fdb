"""Serialize a visual encoder to ONNX or TorchScript with a dynamic batch axis.

Both artifacts take `PIXEL_VALUES` float32 [N, 3, R, R] and give `EMBEDDING` float32 [N, D], the
names of the model contract, so Triton's native backends bind them without renaming.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from clip_triton.contract import EMBEDDING_OUTPUT, PIXELS_TENSOR

from .architectures import VisualSpec

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_OPSET = 17


class _ContractSignature(nn.Module):
    """Gives forward the contract's input name: Triton's PyTorch backend matches inputs by argument name."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, PIXEL_VALUES: torch.Tensor) -> torch.Tensor:  # noqa: N803 - the tensor's name
        return self.visual(PIXEL_VALUES)


def export_visual(model: nn.Module, spec: VisualSpec, fmt: str, path: Path) -> Path:
    """Write `model` to `path` in `fmt` ("onnx" or "torchscript"); returns the path."""
    example = torch.zeros(2, 3, spec.image_resolution, spec.image_resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad():
        if fmt == "onnx":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
                torch.onnx.export(
                    model, (example,), str(path),
                    input_names=[PIXELS_TENSOR], output_names=[EMBEDDING_OUTPUT],
                    dynamic_axes={PIXELS_TENSOR: {0: "batch"}, EMBEDDING_OUTPUT: {0: "batch"}},
                    opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
                )
        elif fmt == "torchscript":
            traced = torch.jit.trace(_ContractSignature(model), (example,), check_trace=False)
            torch.jit.save(traced, str(path))
        else:
            raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return path
