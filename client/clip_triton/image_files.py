"""Which files are images: the one list of suffixes, and the folder walk every command and tool uses."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

# What Pillow (and so the server) decodes and people keep photos in; files named explicitly are always tried.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and image files under folders (recursively, sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if is_image_file(p))
        else:
            found.append(path)
    return found
