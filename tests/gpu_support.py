"""Helpers for the GPU target's tests: its shipped model modules loaded as Triton loads them, JPEG variants of
the shared photos, and our gauges read from Triton's metrics port."""
from __future__ import annotations

import importlib.util
import io
import re
import sys
import urllib.request
from pathlib import Path
from types import ModuleType

from PIL import Image

from clip_triton import contract
from clip_triton_export.architectures import named_architecture
from clip_triton_export.repository import RepositoryOptions, render_repository, write_repository
from conftest import IMAGE_NAMES, image_bytes


def shipped_module(folder: Path, name: str) -> ModuleType:
    """`folder/name.py` imported as the Python backend imports it: under its shipped name, with its shipped
    siblings importable while it loads (a copy from an earlier repository is replaced)."""
    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop(name, None)
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def shipped_gpu_transform(directory: Path) -> ModuleType:
    """clip_preprocess's `clip_gpu_transform` as the GPU target ships it (beside its copy of clip_transform),
    imported from a rendered repository: the tests run the file the server runs."""
    write_repository(directory, render_repository(named_architecture("ViT-B/32"), RepositoryOptions(target="gpu")))
    folder = directory / contract.PREPROCESS_MODEL / "1"
    for name in ("clip_transform", "clip_stage_clock", "clip_pillow_resize", "clip_mixed_resize",
                 "clip_gpu_transform"):
        module = shipped_module(folder, name)
    return module


# Sizes for the mixed-size resize: downscales and upscales, a side already 224 (not resampled), tall images
# whose vertical pass comes first (Pillow 13), tiny ones, 1-pixel lines, portrait and landscape of the same
# sizes, and a near-square pair.
MIXED_SIZES = [(451, 300), (300, 451), (224, 500), (640, 224), (225, 1000), (1000, 225), (17, 9), (100, 60),
               (1023, 767), (224, 224), (333, 334), (334, 333), (800, 1800), (97, 400), (1, 300), (300, 1), (2, 2)]


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def jpeg_photos(quality: int = 90) -> dict[str, bytes]:
    """Every shared photo as a baseline 4:2:0 JPEG of its own size (the JPEGs as they are), plus a greyscale
    and a progressive one: what the GPU path decodes."""
    photos = {}
    for name in IMAGE_NAMES:
        data = image_bytes(name)
        with Image.open(io.BytesIO(data)) as image:
            photos[name] = data if image.format == "JPEG" else jpeg(image.convert("RGB"), quality=quality,
                                                                    subsampling="4:2:0")
    with Image.open(io.BytesIO(image_bytes("camera.png"))) as grey:
        photos["camera-grey.jpg"] = jpeg(grey, quality=quality)
    with Image.open(io.BytesIO(image_bytes("chelsea.png"))) as cat:
        photos["chelsea-progressive.jpg"] = jpeg(cat.convert("RGB"), quality=quality, progressive=True)
    return photos


def model_gauge(metrics_url: str, name: str, model: str) -> list[float]:
    """Every instance's value of one of our gauges for `model`, read from Triton's metrics port."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', re.MULTILINE)
    return [float(value) for value in pattern.findall(text)]
