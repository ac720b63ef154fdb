"""Hostile or odd inputs built byte by byte, beyond `bad_inputs.bad_images()`: what issue 5 lists.

Each builder returns encoded bytes; `hostile_images()` pairs each with the fragment the server's refusal
must contain. Headers are crafted rather than encoded by Pillow because Pillow will not write them.
"""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tools.crafted_images import PNG_SIGNATURE, oversized_element, png_chunk


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width` x `height` RGB pixels, with one empty IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b""))
            + png_chunk(b"IEND", b""))


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF89a whose logical screen and only frame declare `width` x `height`."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02D\x01\x00;")


def svg() -> bytes:
    return (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480">'
            b'<rect width="640" height="480" fill="red"/></svg>\n')


def frames(size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    """Three visibly different RGB frames (gradients in different directions)."""
    width, height = size
    horizontal = Image.linear_gradient("L").resize(size)
    vertical = horizontal.transpose(Image.Transpose.ROTATE_90).resize(size)
    return [Image.merge("RGB", (horizontal, vertical, Image.new("L", size, 40))),
            Image.merge("RGB", (vertical, Image.new("L", size, 200), horizontal)),
            Image.new("RGB", (width, height), (30, 160, 90))]


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    """An animated GIF or PNG (APNG) of `frames()`."""
    first, *rest = frames()
    return encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """name -> (payload, a fragment the server's refusal must contain), with the server's default limits."""
    return {
        "svg": (svg(), "not a recognised image format"),
        "png_zero_size": (png_header_only(0, 0), "cannot decode PNG data"),
        "png_zero_width": (png_header_only(0, 480), "cannot decode PNG data"),
        "gif_zero_size": (gif_header_only(0, 0), "cannot decode GIF data"),
        "png_absurd_size": (png_header_only(2**31 - 1, 2**31 - 1), "over the limit of 178956970"),
        "gif_absurd_size": (gif_header_only(65535, 65535), "over the limit of 178956970"),
        "png_absurd_aspect": (png_header_only(1_000_000, 1), "aspect ratio too extreme"),
        "tens_of_mb": (oversized_element(), "over the limit of 67108864 bytes"),
    }
