"""OpenAI's CLIP transform for a batch of encoded images, with JPEGs decoded and resized on the GPU.

Shipped beside the GPU target's clip_preprocess as `clip_gpu_transform.py`; it needs torch, and
torchvision for nvJPEG, beside the exact transform (`clip_transform`) it falls back to and the resizes it
runs (`clip_pillow_resize`, `clip_mixed_resize`: Pillow's, bit for bit).

Which image goes where:
- A JPEG that nvJPEG can decode to the same colours as libjpeg (8-bit, greyscale or YCbCr with 1 or 3
  components, Huffman-coded baseline, extended or progressive, ending in its EOI marker; not RGB-coded,
  which an Adobe marker or the component ids R, G, B say) is decoded by nvJPEG on the GPU, batched (its
  hardware decoder where the GPU has one), then resized, cropped and normalized on the GPU.
- Small JPEGs (up to `mixed_resize_max_pixels`, 2 MP by default) alone in their size in a batch, with no
  weights cached for it, are resized together when there are two or more (clip_mixed_resize: two batched
  products, weights computed each time); the others size by size (clip_pillow_resize: weights cached per
  size, int8 products), which costs far fewer kernels for a size seen twice or recently.
- Everything else (PNG, GIF, WebP, CMYK, JPEGs the GPU refuses or that look truncated), and every image
  when GPU decoding is off, goes through the exact CPU path on a thread pool, then to the GPU.
- Every refusal (size limits, undecodable data) names its element, with the CPU path's own reasons.

The GPU resize is Pillow's own, bit for bit (its fixed-point weights, applied by exact matrix products on
the tensor cores: int8 size by size, float32 digits for a batch of mixed sizes), so a JPEG's pixels differ
from the exact path's only where nvJPEG's decoding differs from libjpeg's.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from clip_mixed_resize import DEFAULT_MAX_PIXELS as DEFAULT_MIXED_RESIZE_MAX_PIXELS
from clip_mixed_resize import resize_crop_mixed, takes
from clip_pillow_resize import FILTERS, resize_crop, to_device, weights_cached
from clip_stage_clock import StageClock
from clip_transform import (DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, OPENAI_PREPROCESSING, ImageRejected,
                            MapImages, Preprocessing, check_declared_size, preprocess_batch, resize_plan)

# One decode call and one resize call hold at most this many decoded pixels at a time (bounds GPU memory:
# 256 MP of RGB bytes is 768 MB; a resize adds one byte-sized copy of its share, small int64 sums, and with
# float64 products a float64 copy of a few MB at a time).
DECODE_BUDGET_PIXELS = 256 * 2**20
RESIZE_BUDGET_PIXELS = 64 * 2**20
# The frame markers nvJPEG decodes: baseline, extended sequential and progressive DCT with Huffman coding.
_SOF_HUFFMAN = {0xC0, 0xC1, 0xC2}
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_RGB_COMPONENT_IDS = (ord("R"), ord("G"), ord("B"))

Decoder = Callable[[list[bytes]], list]  # encoded JPEGs -> per image a uint8 [3, H, W] tensor, or the exception

warnings.filterwarnings("ignore", message="The given buffer is not writable")  # torch.frombuffer on bytes


def gpu_decodable_jpeg(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG the GPU path takes, read from its markers alone; None for anything else."""
    if len(data) < 4 or not data.startswith(b"\xff\xd8") or not data.endswith(b"\xff\xd9"):
        return None
    position, adobe_transform = 2, None
    try:
        while True:
            if data[position] != 0xFF:
                return None
            while data[position] == 0xFF:  # fill bytes
                position += 1
            marker = data[position]
            length = int.from_bytes(data[position + 1:position + 3], "big")
            segment = data[position + 3:position + 1 + length]
            if marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
                adobe_transform = segment[11]  # 0: the components are RGB (or CMYK), not YCbCr
            if marker in _SOF_OTHER or marker == 0xDA:  # not decodable here, or scan data before any frame
                return None
            if marker in _SOF_HUFFMAN:
                precision, height, width, components = segment[0], int.from_bytes(segment[1:3], "big"), \
                    int.from_bytes(segment[3:5], "big"), segment[5]
                ids = tuple(segment[6 + 3 * i] for i in range(components))
                rgb = ids == _RGB_COMPONENT_IDS or (components == 3 and adobe_transform == 0)
                if precision != 8 or components not in (1, 3) or rgb:
                    return None
                return width, height
            position += 1 + length
    except IndexError:
        return None


def nvjpeg_decoder(device: torch.device) -> Decoder:
    """torchvision's nvJPEG decoding: the whole list in one call (its hardware decoder takes the baseline
    JPEGs of a batch together), and one by one when that call fails, so one bad image fails alone."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(blobs: list[bytes]) -> list:
        encoded = [torch.frombuffer(blob, dtype=torch.uint8) for blob in blobs]
        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            results = []
            for one in encoded:
                try:
                    results.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as error:
                    results.append(error)
            return results

    return decode


def pillow_decoder(device: torch.device) -> Decoder:
    """Pillow's (libjpeg's) decoding to RGB tensors on `device`: what runs where nvJPEG cannot (no GPU, no
    torchvision), so the same batch logic runs, and is tested, on a CPU-only machine."""
    import io

    from PIL import Image

    def decode(blobs: list[bytes]) -> list:
        results = []
        for blob in blobs:
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    rgb = np.asarray(image.convert("RGB"))
                results.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device))
            except Exception as error:  # noqa: BLE001 - the CPU path says what is wrong with it
                results.append(error)
        return results

    return decode


def default_decoder(device: torch.device) -> Decoder:
    if device.type == "cuda":
        return nvjpeg_decoder(device)
    return pillow_decoder(device)


class Normalizer:
    """CLIP's (x / 255 - mean) / std with the very float32 operations of the CPU path's table, so equal
    8-bit values give bit-identical pixels on either path."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(np.asarray(mean, dtype=np.float32), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(np.asarray(std, dtype=np.float32), device=device).view(1, 3, 1, 1)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return (values / 255.0 - self.mean) / self.std


class BatchPreprocessor:
    """Encoded images -> pixels [M, 3, size, size] (`dtype`, on `device`) for the good ones, in input order,
    plus {index: reason} for the bad ones. `preprocessing` gives the checkpoint's normalization, filter, sizes
    and crop offsets (OpenAI's by default)."""

    def __init__(self, size: int, device: torch.device, dtype: torch.dtype, *, gpu_decode: bool = True,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 fast_jpeg: bool = False, map_images: MapImages = map, decoder: Decoder | None = None,
                 preprocessing: Preprocessing = OPENAI_PREPROCESSING,
                 mixed_resize_max_pixels: int = DEFAULT_MIXED_RESIZE_MAX_PIXELS):
        self.size, self.device, self.dtype = size, device, dtype
        self.preprocessing = preprocessing
        gpu_decode = gpu_decode and self.preprocessing.interpolation in FILTERS
        self.gpu_decode, self.max_pixels, self.max_bytes, self.fast_jpeg = gpu_decode, max_pixels, max_bytes, fast_jpeg
        self.mixed_resize_max_pixels = mixed_resize_max_pixels  # 0: every size resized on its own
        self.map_images = map_images  # decodes the CPU path's images (a thread pool's map: Pillow releases the GIL)
        self._cpu_job = ThreadPoolExecutor(1, thread_name_prefix="clip-cpu-path")  # runs beside the GPU work
        self.normalize = Normalizer(preprocessing.mean, preprocessing.std, device)
        self.decoder = decoder if decoder is not None else (default_decoder(device) if gpu_decode else None)
        self.clock = StageClock()  # where each batch's time goes (the model publishes it as metrics)

    def __call__(self, images: Sequence[bytes]) -> tuple[torch.Tensor, dict[int, str]]:
        clock = self.clock
        gpu: dict[int, int] = {}  # index -> pixels it decodes to, for the JPEGs the GPU path takes
        errors: dict[int, str] = {}
        with clock.stage("inspect"):
            for index, data in enumerate(images):
                frame = gpu_decodable_jpeg(data) if self.gpu_decode and len(data) <= self.max_bytes else None
                if frame is None:
                    continue
                try:  # the exact path's limits, checked before anything is decoded
                    check_declared_size(*frame, self.max_pixels)
                    resize_plan(*frame, self.size, self.max_pixels, self.preprocessing)
                    gpu[index] = frame[0] * frame[1]
                except ImageRejected as error:
                    errors[index] = str(error)
        cpu_indices = [i for i in range(len(images)) if i not in gpu and i not in errors]
        cpu_work = self._start_cpu(images, cpu_indices)
        pixels: dict[int, torch.Tensor] = {}
        refused_by_gpu = self._gpu_pixels(images, gpu, pixels)
        clock.count("gpu", len(pixels))
        with clock.stage("cpu_path"):
            cpu_pixels, cpu_errors = cpu_work()
            retried, retry_errors = self._cpu(images, refused_by_gpu)
        with clock.stage("assemble"):
            for indices, values, refusals in ((cpu_indices, cpu_pixels, cpu_errors),
                                              (refused_by_gpu, retried, retry_errors)):
                good = [i for position, i in enumerate(indices) if position not in refusals]
                errors.update({indices[position]: reason for position, reason in refusals.items()})
                clock.count("cpu", len(good))
                if good:  # queued behind the GPU work without waiting for it (gpu_wait shows that wait)
                    pixels.update(zip(good, to_device(values, self.device)))
            clock.count("refused", len(errors))
            order = sorted(pixels)
            if not order:
                return torch.empty((0, 3, self.size, self.size), dtype=self.dtype, device=self.device), errors
            return torch.stack([pixels[i] for i in order]).to(self.dtype), errors

    def close(self) -> None:
        self._cpu_job.shutdown(wait=True)

    def _start_cpu(self, images: Sequence[bytes], indices: list[int]):
        """Begin the exact CPU path for `indices` (beside the GPU work); returns its result getter."""
        if not indices:
            return lambda: self._cpu(images, indices)
        return self._cpu_job.submit(self._cpu, images, indices).result

    def _cpu(self, images: Sequence[bytes], indices: list[int]) -> tuple[np.ndarray, dict[int, str]]:
        """OpenAI's exact transform (clip_transform): float32 pixels of the good ones, {position: reason}."""
        if not indices:
            return np.zeros((0, 3, self.size, self.size), np.float32), {}
        return preprocess_batch([images[i] for i in indices], self.size, self.max_pixels, self.max_bytes,
                                self.fast_jpeg, self.map_images, self.preprocessing)

    def _mixed_sizes(self, by_size: dict[tuple[int, int, tuple], list[tuple[int, torch.Tensor]]],
                     ) -> list[tuple[int, torch.Tensor, tuple[int, int, int, int]]]:
        """Take out of `by_size` the images to resize together: small ones (mixed_resize_max_pixels) alone in
        their size whose weights the per-size resize has not cached, when there are two or more. A size seen
        twice in the batch, or recently, costs the per-size resize about 20 kernels; a new one, about 200."""
        lone = [(height, width, plan) for (height, width, plan), members in by_size.items() if len(members) == 1
                and takes(width, height, plan, self.mixed_resize_max_pixels)
                and not weights_cached(width, height, self.size, plan, self.preprocessing.interpolation,
                                       members[0][1].device)]  # the device resize_crop will cache them for
        if len(lone) < 2:
            return []
        return [(*by_size.pop(key)[0], key[2]) for key in lone]

    def _gpu_pixels(self, images: Sequence[bytes], areas: dict[int, int], pixels: dict[int, torch.Tensor]) -> list[int]:
        """Decode, resize and normalize the GPU-bound JPEGs into `pixels`; returns the indices the decoder refused."""
        refused: list[int] = []
        for chunk in _chunks(list(areas), areas.__getitem__, DECODE_BUDGET_PIXELS):
            with self.clock.stage("gpu_decode"):
                decoded = self.decoder([images[i] for i in chunk])
            with self.clock.stage("gpu_resize"):
                self._resize(chunk, decoded, refused, pixels)
        return refused

    def _resize(self, chunk: list[int], decoded: list, refused: list[int], pixels: dict[int, torch.Tensor]) -> None:
        """Queue the resize, crop and normalization of one decoded chunk into `pixels`; what the decoder refused,
        or decoded to a size the limits refuse, goes to `refused`."""
        by_size: dict[tuple[int, int, tuple], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for index, result in zip(chunk, decoded):
            if isinstance(result, Exception) or result.shape[0] != 3:
                refused.append(index)
                continue
            height, width = result.shape[-2:]
            try:  # from the decoded size, which is the header's unless the decoder disagrees
                plan = resize_plan(width, height, self.size, self.max_pixels, self.preprocessing)
            except ImageRejected:
                refused.append(index)
                continue
            by_size[(height, width, plan)].append((index, result))
        interpolation = self.preprocessing.interpolation
        mixed = self._mixed_sizes(by_size)
        if mixed:
            values = resize_crop_mixed([image for _, image, _ in mixed], [plan for *_, plan in mixed],
                                       self.size, interpolation)
            pixels.update(zip((index for index, *_ in mixed), self.normalize(values.float())))
        for (height, width, plan), members in by_size.items():
            for group in _chunks(members, lambda _: height * width, RESIZE_BUDGET_PIXELS):
                values = resize_crop(torch.stack([image for _, image in group]), self.size, plan, interpolation)
                pixels.update(zip((index for index, _ in group), self.normalize(values.float())))


def _chunks(items: list, cost: Callable, budget: int) -> list[list]:
    """Consecutive groups whose summed cost stays within `budget` (an item over it forms a group alone)."""
    groups, current, spent = [], [], 0
    for item in items:
        if current and spent + cost(item) > budget:
            groups.append(current)
            current, spent = [], 0
        current.append(item)
        spent += cost(item)
    if current:
        groups.append(current)
    return groups
