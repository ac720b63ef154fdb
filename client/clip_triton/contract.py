"""The model contract: names, tensors, limits and error messages that clients in any language rely on.

One definition, imported on both sides: by the config generator, by the client, and by the Triton models
themselves (the exporter ships this file beside each of our Python-backend models as `clip_contract.py`).
It therefore needs nothing but the standard library (numpy and tritonclient only inside the functions that
build a request), and must stay importable as a single file.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

ENSEMBLE_MODEL = "clip_image_encoder"
PREPROCESS_MODEL = "clip_preprocess"
VISUAL_MODEL = "clip_visual"

IMAGE_INPUT = "IMAGE"  # BYTES, dims [1]: one encoded image file per batch element
PIXELS_TENSOR = "PIXEL_VALUES"  # dims [3, R, R]: OpenAI's normalized pixels (FP32; FP16 on the fp16 GPU target)
EMBEDDING_OUTPUT = "EMBEDDING"  # FP32, dims [D]: encode_image, not L2-normalized

# Triton's wire names for those tensors' element types, and the config names for the same types.
IMAGE_DATATYPE = "BYTES"
EMBEDDING_DATATYPE = "FP32"
CONFIG_DATATYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "FP16": "TYPE_FP16"}

MAX_BATCH_SIZE = 64

# -- draining ------------------------------------------------------------------------------------------------
# The supervisor (`clip-triton serve`, the container) names a file in this variable of tritonserver's
# environment and creates it when a drain starts; from then on the entry models answer new requests with
# UNAVAILABLE and this message (retryable: a client retries elsewhere or later), while work already accepted
# finishes. clip_triton_serve spells the variable name itself (the container copies only that package); a
# test keeps the two equal.
DRAIN_FILE_ENVIRONMENT = "CLIP_TRITON_DRAIN_FILE"
DRAINING_MESSAGE = "server is draining before it stops; retry (another replica, or this address once it is back)"

# -- the per-image error message --------------------------------------------------------------------------
# A refused request names each bad element: "IMAGE[1]: empty input (0 bytes); IMAGE[3]: not a recognised
# image format (starts with b'hello')". Elements are joined by "; "; a ";" inside a reason is doubled, so a
# reason can say anything (even "; IMAGE[2]: ...", e.g. quoting the bytes it was sent) without being split.
_ELEMENT_SEPARATOR = "; "
_ELEMENT_PREFIX = IMAGE_INPUT + "["
_TRITON_PREFIXES = ("[request id: ", "in ensemble '")


def format_image_errors(reasons: Mapping[int, str]) -> str:
    """{element index: reason} -> the message of a refused request, elements in index order."""
    return _ELEMENT_SEPARATOR.join(f"{_ELEMENT_PREFIX}{index}]: {reason.replace(';', ';;')}"
                                   for index, reason in sorted(reasons.items()))


def strip_triton_prefixes(message: str) -> str:
    """The model's own message, without the "[request id: ...] " and "in ensemble '...', " Triton adds."""
    changed = True
    while changed:
        changed = False
        if message.startswith(_TRITON_PREFIXES[0]) and "] " in message:
            message, changed = message.split("] ", 1)[1], True
        if message.startswith(_TRITON_PREFIXES[1]) and "', " in message:
            message, changed = message.split("', ", 1)[1], True
    return message


def parse_image_errors(message: str) -> dict[int, str]:
    """The inverse of `format_image_errors` (Triton's prefixes allowed): {element index: reason}, or {} when
    the message is not in that format (a refusal that names no element)."""
    text = strip_triton_prefixes(message)
    reasons: dict[int, str] = {}
    position = 0
    while position < len(text):
        element = _element_at(text, position)
        if element is None:
            return {}
        index, position = element
        reasons[index], position = _read_reason(text, position)
    return reasons


def _element_at(text: str, position: int) -> tuple[int, int] | None:
    """At "IMAGE[i]: ": (i, where its reason begins); else None."""
    if not text.startswith(_ELEMENT_PREFIX, position):
        return None
    close = text.find("]: ", position)
    index = text[position + len(_ELEMENT_PREFIX):close]
    return (int(index), close + 3) if close > 0 and index.isdigit() else None


def _read_reason(text: str, start: int) -> tuple[str, int]:
    """One reason from `start` to the next separator followed by an element: (unescaped reason, where that
    element begins). ";;" is a literal ";"; a lone ";" not followed by an element is kept as it is."""
    pieces, position = [], start
    while True:
        semicolon = text.find(";", position)
        if semicolon < 0:
            pieces.append(text[position:])
            return "".join(pieces), len(text)
        pieces.append(text[position:semicolon])
        if text.startswith(";;", semicolon):
            pieces.append(";")
            position = semicolon + 2
        elif (text.startswith(_ELEMENT_SEPARATOR, semicolon)
              and _element_at(text, semicolon + len(_ELEMENT_SEPARATOR)) is not None):
            return "".join(pieces), semicolon + len(_ELEMENT_SEPARATOR)
        else:
            pieces.append(";")
            position = semicolon + 1


# -- requests ----------------------------------------------------------------------------------------------
def image_input(blobs: Sequence[bytes]) -> Any:
    """The IMAGE input of a request: [N, 1] BYTES, one encoded image file per element (tritonclient's
    InferInput, used by the sync and asyncio clients, the load generators and the tests alike)."""
    import numpy as np
    from tritonclient.grpc import InferInput

    tensor = InferInput(IMAGE_INPUT, [len(blobs), 1], IMAGE_DATATYPE)
    data = np.empty((len(blobs), 1), dtype=np.object_)
    data[:, 0] = list(blobs)
    tensor.set_data_from_numpy(data)
    return tensor


def pixels_input(pixels: Any, datatype: str = "FP32") -> Any:
    """The PIXEL_VALUES input of a request straight to the visual model, in the datatype its config declares."""
    import numpy as np
    from tritonclient.grpc import InferInput

    array = np.ascontiguousarray(pixels, dtype=np.float16 if datatype == "FP16" else np.float32)
    tensor = InferInput(PIXELS_TENSOR, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
