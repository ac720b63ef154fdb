"""The model contract module: the per-image error format round-trips, the request builders follow the contract,
and the Triton models read it from the copy shipped beside them."""
from __future__ import annotations

import numpy as np
import pytest

from clip_triton import contract

REASONS = [
    {1: "empty input (0 bytes)", 3: "not a recognised image format (starts with b'hello')"},
    {0: "a reason that ends with a semicolon;"},
    {2: "starts with b'x; IMAGE[7]: fake'", 9: "quoting the separator; itself; twice"},
    {4: "Bild beschädigt: 画像が壊れています ✗", 5: ";;"},
    {0: ""},
    {12: "cannot decode image data: OSError: image file is truncated (4 bytes not processed)"},
]


@pytest.mark.parametrize("reasons", REASONS)
def test_image_errors_round_trip_with_and_without_tritons_prefixes(reasons: dict[int, str]) -> None:
    message = contract.format_image_errors(reasons)
    assert contract.parse_image_errors(message) == reasons
    wrapped = f"[request id: <id_unknown>] in ensemble '{contract.ENSEMBLE_MODEL}', {message}"
    assert contract.parse_image_errors(wrapped) == reasons
    assert contract.strip_triton_prefixes(wrapped) == message


def test_the_format_stays_readable_and_in_index_order() -> None:
    message = contract.format_image_errors({3: "b", 1: "a"})
    assert message == "IMAGE[1]: a; IMAGE[3]: b"


def test_messages_that_name_no_element_parse_to_nothing() -> None:
    for message in ["unexpected shape for input 'PIXEL_VALUES'", "IMAGE: no index", "IMAGE[x]: not a number",
                    "[request id: 7] Stub process 'clip_preprocess_0_0' is not healthy", ""]:
        assert contract.parse_image_errors(message) == {}


def test_a_lone_semicolon_from_an_older_server_is_kept_in_its_reason() -> None:
    message = ("in ensemble 'clip_image_encoder', IMAGE[1]: empty input (0 bytes); IMAGE[12]: not a recognised "
               "image format (starts with b'a; IMAGE b'); IMAGE[3]: cannot decode image data: OSError: truncated")
    assert contract.parse_image_errors(message) == {
        1: "empty input (0 bytes)",
        12: "not a recognised image format (starts with b'a; IMAGE b')",
        3: "cannot decode image data: OSError: truncated",
    }


def test_image_input_is_n_by_1_bytes_holding_each_file() -> None:
    blobs = [b"\xff\xd8first", b"", b"third \x00 file"]
    tensor = contract.image_input(blobs)
    assert tensor.name() == contract.IMAGE_INPUT and tensor.datatype() == "BYTES" and tensor.shape() == [3, 1]
    raw = tensor._get_content()  # tritonclient's wire form: 4-byte little-endian length, then the bytes
    position, decoded = 0, []
    while position < len(raw):
        length = int.from_bytes(raw[position:position + 4], "little")
        decoded.append(raw[position + 4:position + 4 + length])
        position += 4 + length
    assert decoded == blobs


@pytest.mark.parametrize("datatype, dtype", [("FP32", np.float32), ("FP16", np.float16)])
def test_pixels_input_uses_the_visual_models_datatype(datatype: str, dtype) -> None:
    pixels = np.linspace(-2, 2, 2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4)
    tensor = contract.pixels_input(pixels, datatype)
    assert tensor.name() == contract.PIXELS_TENSOR and tensor.datatype() == datatype and tensor.shape() == [2, 3, 4, 4]
    assert np.array_equal(np.frombuffer(tensor._get_content(), dtype=dtype).reshape(pixels.shape),
                          pixels.astype(dtype))


def test_the_drain_signal_is_spelled_the_same_by_the_supervisor_and_the_models() -> None:
    """clip_triton_serve spells these itself (the container copies only that package): keep them equal."""
    from clip_triton_serve import process

    assert process.DRAIN_FILE_ENVIRONMENT == contract.DRAIN_FILE_ENVIRONMENT
    assert process.ENTRY_MODEL == contract.PREPROCESS_MODEL
