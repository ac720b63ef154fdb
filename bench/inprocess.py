"""In-process baselines: what a user would run instead of the server, on the same machine.

- The seed's way: OpenAI's `clip.load` + `model.encode_image` in PyTorch eager fp32. OpenAI's `clip`
  package cannot be imported here (its torchvision dependency is a CUDA build), so it is reproduced:
  `clip_triton.transform` (Pillow calls identical to OpenAI's transform, bit-exact on the golden
  pixels) feeding torch tensors to this project's visual module (OpenAI's architecture and numerics,
  verified against OpenAI's features), eager, fp32, under `torch.no_grad()`.
- Preprocessing alone: the same transform, one image at a time, to show what decoding costs.
- The ceiling: the exported model alone in the runtime the server runs it in (clip_visual's
  `runtime` parameter: OpenVINO or ONNX Runtime), pixels precomputed, per batch size.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from clip_triton.transform import preprocess
from clip_triton_export.triton_models.visual_runtime import open_configured_runner

from measure.images import Workload
from measure.timing import repeat_for


def _cycle_batches(images: Sequence[bytes], batch_size: int):
    source = itertools.cycle(images)
    while True:
        yield [next(source) for _ in range(batch_size)]


def preprocessing_alone(workload: Workload, resolution: int, seconds: float) -> dict:
    """OpenAI's transform on encoded bytes, one image per step, single thread."""
    batches = _cycle_batches(workload.blobs(), 1)

    def step() -> int:
        preprocess(next(batches)[0], resolution)
        return 1

    return repeat_for(step, seconds)


def seed_way(model: nn.Module, workload: Workload, resolution: int, batch_size: int, seconds: float) -> dict:
    """Decode + transform each image, stack, `encode_image` in eager fp32: images per second at a batch size."""
    batches = _cycle_batches(workload.blobs(), batch_size)
    model = model.eval().float()

    def step() -> int:
        batch = next(batches)
        pixels = torch.stack([torch.from_numpy(preprocess(data, resolution)) for data in batch])
        with torch.no_grad():
            model(pixels)
        return len(batch)

    result = repeat_for(step, seconds)
    result.update(batch_size=batch_size, torch_threads=torch.get_num_threads())
    return result


def model_alone(artifact: Path, parameters: Mapping[str, str], pixels: np.ndarray, batch_sizes: Sequence[int],
                seconds: float) -> dict:
    """The exported model alone, in the runtime clip_visual runs it in, for each batch size.

    `parameters` are clip_visual's config parameters. The runner is clip_visual's own (visual_runtime.py)
    with its thread settings but unsplit, every thread on one batch: the runtime's best for a single
    caller, which is what "the model alone" means.
    """
    name = parameters.get("runtime", "onnxruntime")
    run = open_configured_runner({**parameters, "runtime": name}, str(artifact), split_ways=1)
    runtime = f"{_RUNTIME_NAMES[name]} {_version(name)}, CPU, clip_visual's runner unsplit"
    by_batch = {}
    try:
        for batch_size in batch_sizes:
            batch = np.ascontiguousarray(np.resize(pixels, (batch_size, *pixels.shape[1:])), dtype=np.float32)

            def step(batch: np.ndarray = batch) -> int:
                run(batch)
                return len(batch)

            by_batch[str(batch_size)] = repeat_for(step, seconds)
    finally:
        run.close()
    best = max(by_batch, key=lambda size: by_batch[size]["images_per_s"])
    return {
        "runtime": runtime,
        "by_batch": by_batch, "best_batch_size": int(best), "best_images_per_s": by_batch[best]["images_per_s"],
        "batch1_latency_ms": by_batch["1"]["step_latency_ms"] if "1" in by_batch else None,
    }


_RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torchscript": "torch (TorchScript)"}


def _version(runtime: str) -> str:
    module = __import__({"torchscript": "torch"}.get(runtime, runtime))
    return module.__version__


def reference_features(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """encode_image in eager fp32: what the server's features are checked against."""
    with torch.no_grad():
        return model(torch.from_numpy(pixels)).numpy()
