"""Inputs that are not (acceptable) images, each with the reason the server must give for it."""
from __future__ import annotations

from conftest import image_bytes
from tools.crafted_images import decompression_bomb_png

__all__ = ["bad_images", "decompression_bomb_png"]


def bad_images() -> dict[str, tuple[bytes, str]]:
    """name -> (payload, a fragment the refusal must contain)."""
    jpeg = image_bytes("rocket.jpg")
    return {
        "empty": (b"", "empty input"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], "truncated"),
        "header_only_jpeg": (jpeg[:600], "cannot decode"),
        "random_bytes": (bytes(range(256)) * 40, "not a recognised image format"),
        "text": (b"hello, this is not an image\n" * 20, "not a recognised image format"),
        "html": (b"<!doctype html><html><body><img src=x></body></html>", "not a recognised image format"),
        "decompression_bomb": (decompression_bomb_png(), "over the limit"),
    }
