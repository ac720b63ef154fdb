"""The image-folder loader and the workloads made from a folder of photos.

Every tool reads images through `load_folder` (which files are images is clip_triton.image_files'
call). Derived workloads are generated into an ignored cache folder and reused while they match the
recipe; they are never committed:

- phone photos: each photo center-cropped to 4:3 and upscaled to 4032x3024 (a 12 MP phone camera's
  frame), saved as baseline JPEG with 4:2:0 chroma like a phone's;
- small JPEGs: each photo at its own size as a JPEG (JPEG originals as they are), for decoders that
  only take JPEG;
- small JPEGs of many sizes: the photos resized to seeded random sizes, one size per file, as web traffic
  comes (nearly every photo its own size), for code whose cost depends on how many sizes a batch holds.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from PIL import Image

from clip_triton.image_files import find_images

PHONE_SIZE = (4032, 3024)
JPEG_QUALITY = 90
VARIED_COUNT = 1024  # more sizes than a per-size weight cache keeps (clip_pillow_resize: 256 MB)
VARIED_SIDES = (160, 800)  # each side drawn from this range, inclusive


@dataclass(frozen=True)
class Workload:
    """Encoded image files, held in memory: what a client sends."""

    name: str
    description: str
    images: tuple[tuple[str, bytes], ...]

    def summary(self, listed: int = 32) -> dict:
        """Sizes and bytes; every image by name up to `listed` images, only the counts beyond."""
        sizes = [dimensions(data) for _, data in self.images]
        return {
            "description": self.description,
            "images": [{"name": n, "bytes": len(d), "width": w, "height": h}
                       for (n, d), (w, h) in zip(self.images, sizes)][:listed],
            "count": len(self.images), "distinct_sizes": len(set(sizes)),
            "mean_bytes": round(sum(len(d) for _, d in self.images) / len(self.images)),
            "mean_megapixels": round(sum(w * h for w, h in sizes) / len(sizes) / 1e6, 2),
        }

    def blobs(self) -> list[bytes]:
        return [data for _, data in self.images]


def dimensions(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def image_paths(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files under `folder` (sorted), the first `limit` of them; an error if there are none."""
    files = find_images([Path(folder)])[:limit]
    if not files:
        raise ValueError(f"no image files in {folder}")
    return files


def load_folder(folder: Path, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name relative to `folder`, encoded bytes) of its image files, sorted; read once, sent many times."""
    folder = Path(folder)
    return [(path.relative_to(folder).as_posix(), path.read_bytes()) for path in image_paths(folder, limit)]


def small_photos(folder: Path, limit: int | None = None) -> Workload:
    return Workload("small", f"the shared web photos as they are ({Path(folder).name}/)",
                    tuple(load_folder(folder, limit)))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    return buffer.getvalue()


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
        return _jpeg(image.resize(PHONE_SIZE, Image.BICUBIC, box=box))


def is_jpeg(source: Path) -> bool:
    with Image.open(source) as image:
        return image.format == "JPEG"


def as_jpeg(source: Path) -> bytes:
    """`source` converted to an RGB JPEG at its own size."""
    with Image.open(source) as image:
        return _jpeg(image)


def _cached(target: Path, make: Callable[[], bytes]) -> tuple[str, bytes]:
    """(name, bytes) of `target`, written by `make()` first when it is not there yet."""
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(make())
    return target.name, target.read_bytes()


def _stem(source: Path, folder: Path) -> str:
    return source.relative_to(folder).with_suffix("").as_posix().replace("/", "--")


def phone_photos(folder: Path, cache: Path, limit: int | None = None) -> Workload:
    """The phone-photo workload, generated into `cache` on first use."""
    folder = Path(folder)
    recipe = f"-{PHONE_SIZE[0]}x{PHONE_SIZE[1]}-q{JPEG_QUALITY}.jpg"
    images = tuple(_cached(cache / (_stem(source, folder) + recipe), partial(phone_photo, source))
                   for source in image_paths(folder, limit))
    return Workload("phone", f"12 MP phone photos: the shared photos upscaled to {PHONE_SIZE[0]}x{PHONE_SIZE[1]} "
                    f"JPEG (quality {JPEG_QUALITY}, 4:2:0)", images)


def small_jpegs(folder: Path, cache: Path, limit: int | None = None) -> Workload:
    """Every photo of `folder` as a JPEG at its own size: JPEG originals as they are, the others converted
    to RGB JPEG (quality 90, 4:2:0) into `cache` on first use."""
    folder = Path(folder)
    images = []
    for source in image_paths(folder, limit):
        if is_jpeg(source):
            images.append((source.relative_to(folder).as_posix(), source.read_bytes()))
        else:
            images.append(_cached(cache / f"{_stem(source, folder)}-q{JPEG_QUALITY}.jpg",
                                  partial(as_jpeg, source)))
    return Workload("jpeg", f"the shared photos as JPEG at their own size ({folder.name}/; JPEG originals as they "
                    f"are, the others converted at quality {JPEG_QUALITY}, 4:2:0)", tuple(images))


def resized_jpeg(source: Path, size: tuple[int, int]) -> bytes:
    with Image.open(source) as image:
        return _jpeg(image.convert("RGB").resize(size, Image.BICUBIC))


def varied_jpegs(folder: Path, cache: Path, count: int = VARIED_COUNT, seed: int = 0) -> Workload:
    """`count` JPEGs of the photos of `folder` in turn, each resized to its own seeded random size (sides in
    VARIED_SIDES, every (width, height) different), generated into `cache` on first use."""
    import numpy as np

    folder, cache = Path(folder), Path(cache)
    sources = image_paths(folder)
    generator = np.random.default_rng(seed)
    sizes: dict[tuple[int, int], None] = {}  # distinct, in the order drawn
    while len(sizes) < count:
        sizes[tuple(int(side) for side in generator.integers(VARIED_SIDES[0], VARIED_SIDES[1] + 1, size=2))] = None
    def one(item: tuple[int, tuple[int, int]]) -> tuple[str, bytes]:
        index, (width, height) = item
        source = sources[index % len(sources)]
        return _cached(cache / f"{_stem(source, folder)}-{width}x{height}-q{JPEG_QUALITY}.jpg",
                       partial(resized_jpeg, source, (width, height)))

    with ThreadPoolExecutor() as pool:  # Pillow resizes and encodes without the GIL
        images = tuple(pool.map(one, enumerate(sizes)))
    return Workload("varied", f"{count} small JPEGs of {count} different sizes (the shared photos resized to "
                    f"seeded random sides of {VARIED_SIDES[0]}-{VARIED_SIDES[1]} px, quality {JPEG_QUALITY}, 4:2:0)",
                    images)


def noise_pngs(count: int, side: int, seed: int = 0, compress_level: int = 6) -> list[bytes]:
    """`count` side x side PNGs of seeded noise: small, distinct images whose features all differ."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            buffer, format="PNG", compress_level=compress_level)
        images.append(buffer.getvalue())
    return images
