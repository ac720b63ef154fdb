"""`make bench-gpu`'s in-process measurements on the GPU: OpenAI's own way, the model alone, decoding alone.

- OpenAI's way: `clip.load(name, device="cuda")` then `model.encode_image(preprocess(image))`. OpenAI's `clip`
  package is not installed here, so it is reproduced: its transform is built from torchvision exactly as
  `clip.clip._transform` builds it (Resize(n, BICUBIC), CenterCrop(n), RGB, ToTensor, Normalize), its
  model is this project's visual encoder converted as `clip.model.convert_weights` converts it (fp16 weights,
  LayerNorm computed in fp32: half.py), run eagerly with images cast to fp16, as `encode_image` does.
- The model alone: the exported fp16 TorchScript artifact on the GPU, pixels already there.
- Decoding alone: nvJPEG through torchvision, and the whole GPU transform (decode, resize, crop, normalize).
Every figure is images per second over at least `seconds` (GPU work synchronized before the clock stops).
Each takes its torch device ("cuda" by default): `bench-gpu --rehearse-on-cpu` runs the same code on "cpu".
"""
from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from clip_triton.transform import CLIP_MEAN, CLIP_STD
from clip_triton_export.half import to_openai_fp16
from measure.timing import repeat_for


def _batches(images: Sequence[bytes], batch_size: int):
    source = itertools.cycle(images)
    while True:
        yield [next(source) for _ in range(batch_size)]


def _synchronize() -> None:
    """Wait for the GPU's queued work before a clock reads it; without a GPU (tests, the rehearsal) none is queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(step: Callable[[], int], seconds: float, warmup_steps: int = 1, min_steps: int = 2) -> dict:
    def synchronized() -> int:
        handled = step()
        _synchronize()
        return handled

    return repeat_for(synchronized, seconds, warmup_steps=warmup_steps, min_steps=min_steps)


def openai_transform(size: int):
    """`clip.clip._transform(size)`, built the way OpenAI builds it."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                    lambda image: image.convert("RGB"), ToTensor(),
                    Normalize(tuple(map(float, CLIP_MEAN)), tuple(map(float, CLIP_STD)))])


def openai_model(fp32_model: torch.nn.Module, device: str = "cuda") -> torch.nn.Module:
    """The visual encoder as `clip.load(..., device="cuda")` holds it: fp16 weights, LayerNorm in fp32."""
    return to_openai_fp16(fp32_model).to(device).eval()


def openai_way(model: torch.nn.Module, images: Sequence[bytes], size: int, batch_size: int, seconds: float,
               min_steps: int = 2, warmup_steps: int = 1, device: str = "cuda") -> dict:
    """Decode and transform each image with PIL and torchvision on the CPU, one process, then encode_image."""
    transform = openai_transform(size)
    batches = _batches(images, batch_size)

    def step() -> int:
        batch = next(batches)
        pixels = torch.stack([transform(Image.open(io.BytesIO(data))) for data in batch]).to(device)
        with torch.no_grad():
            model(pixels.half())
        return len(batch)

    result = _timed(step, seconds, warmup_steps=warmup_steps, min_steps=min_steps)
    return {**result, "batch_size": batch_size}


def model_alone(artifact: Path, size: int, batch_sizes: Sequence[int], seconds: float, device: str = "cuda") -> dict:
    """The exported fp16 TorchScript model on the GPU, fp16 pixels already on the GPU, per batch size."""
    module = torch.jit.load(str(artifact), map_location=device).eval()
    by_batch = {}
    for batch_size in batch_sizes:
        pixels = torch.randn(batch_size, 3, size, size, device=device).half()

        def step(pixels: torch.Tensor = pixels) -> int:
            with torch.inference_mode():
                module(pixels)
            return len(pixels)

        by_batch[str(batch_size)] = _timed(step, seconds)
    return {"artifact": artifact.name, "by_batch": by_batch}


def nvjpeg_alone(images: Sequence[bytes], batch_size: int, seconds: float, device: str = "cuda") -> dict:
    """torchvision's nvJPEG decoding of whole batches (its hardware decoder takes a batch's baseline JPEGs)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    batches = _batches([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images], batch_size)

    def step() -> int:
        batch = next(batches)
        decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)
        return len(batch)

    return {**_timed(step, seconds), "batch_size": batch_size}


def gpu_transform_alone(preprocessor, images: Sequence[bytes], batch_size: int, seconds: float) -> dict:
    """clip_preprocess's own batch code (decode, route, resize, crop, normalize) without Triton around it, with
    its stage clock's milliseconds per image (the model's wait for the GPU included, as the model waits)."""
    batches = _batches(images, batch_size)
    clock = preprocessor.clock

    def step() -> int:
        pixels, errors = preprocessor(next(batches))
        assert not errors, errors
        if pixels.is_cuda:
            with clock.stage("gpu_wait"):
                torch.cuda.synchronize()
        return len(pixels)

    step()  # warm-up, left out of the clock too
    clock.take()
    measured = _timed(step, seconds, warmup_steps=0)
    seconds_by_stage, paths = clock.take()
    return {**measured, "batch_size": batch_size, "paths": paths,
            "ms_per_image": {stage: value * 1000 / measured["images"] for stage, value in seconds_by_stage.items()}}


def _decode_worker(images: list[bytes], batch_size: int, seconds: float, start, results, device: str) -> None:
    """One process decoding with nvJPEG from `start` (a shared barrier) for `seconds`; puts its images/s."""
    import time

    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images]
    batches = _batches(encoded, batch_size)
    decode_jpeg(next(batches), mode=ImageReadMode.RGB, device=device)  # warm-up: handle, buffers
    _synchronize()
    start.wait()
    began, done = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        done += len(decode_jpeg(next(batches), mode=ImageReadMode.RGB, device=device))
        _synchronize()
    results.put(done / (time.perf_counter() - began))


def nvjpeg_in_processes(images: Sequence[bytes], batch_size: int, processes: int, seconds: float,
                        device: str = "cuda") -> dict:
    """nvJPEG in `processes` processes at once (as Triton runs one per preprocessing instance): what the GPU's
    JPEG decoding does when several decoders share it. The sum of their images/s."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_decode_worker, args=(list(images), batch_size, seconds, start, results,
                                                                        device))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=120 + seconds) for _ in workers]
    for worker in workers:
        worker.join(30)
    return {"processes": processes, "batch_size": batch_size, "images_per_s": sum(rates),
            "per_process_images_per_s": rates}


def libjpeg_alone(images: Sequence[bytes], threads: int, seconds: float) -> dict:
    """Pillow's libjpeg decoding to RGB on `threads` CPU threads (what the CPU adds beside nvJPEG)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        batches = _batches(images, threads * 4)

        def step() -> int:
            batch = next(batches)
            for _ in pool.map(lambda data: Image.open(io.BytesIO(data)).convert("RGB").load(), batch):
                pass
            return len(batch)

        return {**repeat_for(step, seconds), "threads": threads}
