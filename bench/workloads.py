"""The two workloads: small web photos as they are, and 12-megapixel phone photos made from them.

Phone photos are the shared photos center-cropped to 4:3 and upscaled to 4032x3024 (a 12 MP phone
camera's frame), saved as baseline JPEG with 4:2:0 chroma like a phone's. They are generated into an
ignored folder and reused while they match the recipe; they are never committed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
PHONE_SIZE = (4032, 3024)
PHONE_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Workload:
    """Encoded image files, held in memory: what a client sends."""

    name: str
    description: str
    images: tuple[tuple[str, bytes], ...]

    def summary(self) -> dict:
        sizes = [_dimensions(data) for _, data in self.images]
        return {
            "description": self.description,
            "images": [{"name": n, "bytes": len(d), "width": w, "height": h}
                       for (n, d), (w, h) in zip(self.images, sizes)],
            "mean_bytes": round(sum(len(d) for _, d in self.images) / len(self.images)),
            "mean_megapixels": round(sum(w * h for w, h in sizes) / len(sizes) / 1e6, 2),
        }


def _dimensions(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files in {folder}")
    return files


def small_photos(folder: Path, limit: int | None = None) -> Workload:
    files = image_files(folder)[:limit]
    return Workload("small", f"the shared web photos as they are ({folder.name}/)",
                    tuple((p.name, p.read_bytes()) for p in files))


def phone_photo(source: Path) -> bytes:
    """One 4032x3024 JPEG made from `source`: center crop to 4:3, bicubic upscale."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        width, height = image.size
        target_ratio = PHONE_SIZE[0] / PHONE_SIZE[1]
        if width / height > target_ratio:
            crop_width = round(height * target_ratio)
            box = ((width - crop_width) // 2, 0, (width - crop_width) // 2 + crop_width, height)
        else:
            crop_height = round(width / target_ratio)
            box = (0, (height - crop_height) // 2, width, (height - crop_height) // 2 + crop_height)
        large = image.resize(PHONE_SIZE, Image.BICUBIC, box=box)
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=PHONE_JPEG_QUALITY, subsampling="4:2:0")
    return buffer.getvalue()


def phone_photos(folder: Path, cache: Path, limit: int | None = None) -> Workload:
    """The phone-photo workload, generated into `cache` on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    images = []
    for source in image_files(folder)[:limit]:
        target = cache / f"{source.stem}-{PHONE_SIZE[0]}x{PHONE_SIZE[1]}-q{PHONE_JPEG_QUALITY}.jpg"
        if not target.is_file():
            target.write_bytes(phone_photo(source))
        images.append((target.name, target.read_bytes()))
    return Workload("phone", f"12 MP phone photos: the shared photos upscaled to {PHONE_SIZE[0]}x{PHONE_SIZE[1]} "
                    f"JPEG (quality {PHONE_JPEG_QUALITY}, 4:2:0)", tuple(images))
