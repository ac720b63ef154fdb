"""What an "image" may be on the client side, and how each kind becomes encoded bytes for the server.

The server's contract takes encoded image files. Paths and file objects are read as they are (the
server decodes exactly what is on disk); `bytes` pass through; PIL images and HWC uint8 arrays are
encoded losslessly (PNG, or TIFF for modes PNG cannot hold) so the server sees the same pixels.
Reading happens lazily, one request's worth at a time, so huge path lists stream.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]

# Modes Pillow writes to PNG without loss; anything else (CMYK, F, I, YCbCr, LAB, ...) goes to TIFF.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


class UnreadableInput(ValueError):
    """An input that cannot be turned into image bytes on the client; the message says why."""


def describe(item: Any) -> str:
    """A short human label for an input, used in error messages and the CLI's failure list."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return f"<PIL image {item.mode} {item.width}x{item.height}>"
    if isinstance(item, np.ndarray):
        return f"<array {item.dtype} {tuple(item.shape)}>"
    name = getattr(item, "name", None)
    if hasattr(item, "read"):
        return str(name) if isinstance(name, (str, os.PathLike)) else f"<{type(item).__name__} file object>"
    return f"<{type(item).__name__}>"


def path_of(item: Any) -> str | None:
    """The filesystem path an input came from, when it has one."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    name = getattr(item, "name", None)
    if hasattr(item, "read") and isinstance(name, (str, os.PathLike)):
        return str(name)
    return None


def to_bytes(item: Any) -> bytes:
    """Encoded image bytes for one input, or UnreadableInput saying why not."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        try:
            return Path(item).read_bytes()
        except OSError as error:
            raise UnreadableInput(f"cannot read file: {error.strerror or error}") from None
    if isinstance(item, Image.Image):
        return encode_pil(item)
    if isinstance(item, np.ndarray):
        return encode_array(item)
    if hasattr(item, "read"):
        data = item.read()
        if not isinstance(data, (bytes, bytearray)):
            raise UnreadableInput("file object returned text; open image files in binary mode ('rb')")
        return bytes(data)
    raise UnreadableInput(
        f"unsupported input type {type(item).__name__}; expected a path, bytes, a binary file object, "
        "a PIL image or an HWC uint8 numpy array"
    )


def encode_pil(image: Image.Image) -> bytes:
    """Lossless encoding of a PIL image in its own mode, so the server's transform sees the same pixels."""
    buffer = io.BytesIO()
    try:
        if image.mode in _PNG_MODES:
            image.save(buffer, format="PNG", compress_level=1)
        else:
            image.save(buffer, format="TIFF")
    except (OSError, ValueError) as error:
        raise UnreadableInput(f"cannot encode PIL image (mode {image.mode}): {error}") from None
    return buffer.getvalue()


def encode_array(array: np.ndarray) -> bytes:
    """An HWC (or HW) uint8 array with 1, 3 or 4 channels -> PNG bytes (L, RGB or RGBA)."""
    if array.dtype != np.uint8:
        raise UnreadableInput(f"numpy images must be uint8 HWC, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise UnreadableInput(f"numpy images must be HWC with 1, 3 or 4 channels, got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UnreadableInput(f"numpy image has no pixels (shape {tuple(array.shape)})")
    return encode_pil(Image.fromarray(np.ascontiguousarray(array)))
