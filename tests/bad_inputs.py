"""Inputs that are not (acceptable) images, each with the reason the server must give for it."""
from __future__ import annotations

import struct
import zlib

from conftest import image_bytes


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(side: int = 60000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (3.6 gigapixels by default) whose file is about 0.5 MB."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


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
