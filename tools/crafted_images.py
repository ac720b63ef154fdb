"""Hostile payloads built byte by byte, for the refusal tests and `python -m tools.refusal_timing`.

Pillow will not write these (a 3.6-gigapixel PNG, a JPEG-looking blob of tens of MB), so they are
crafted here; the tests import them from this module, the tools never import from tests/.
"""
from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TENS_OF_MB = 72 * 1024 * 1024  # above the default per-image limit of 64 MiB


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(side: int = 60000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (3.6 gigapixels by default) whose file is about 0.5 MB."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def oversized_element(size: int = TENS_OF_MB) -> bytes:
    """Tens of MB that start like a JPEG: far larger than any photo, refused on its size alone."""
    return b"\xff\xd8\xff\xe0" + bytes(size - 4)
