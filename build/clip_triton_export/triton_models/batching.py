"""What every one of our Python-backend models does around its work: gather a dynamic batch's requests into
one list, and answer each request with its own rows (or its own refusal).

Shipped beside each model as `clip_batching.py`. A bad element fails only its own request, with
INVALID_ARGUMENT and the contract's per-image message; the other requests of the batch get their rows.
While the server drains, the entry model refuses new requests as a whole, with UNAVAILABLE.
"""
import os
from typing import Any, Callable, Mapping, Sequence

import triton_python_backend_utils as pb_utils

from clip_contract import DRAIN_FILE_ENVIRONMENT, DRAINING_MESSAGE, IMAGE_INPUT, format_image_errors


def draining() -> bool:
    """Whether the supervisor has started draining this server (a stat call: cheap enough per batch)."""
    path = os.environ.get(DRAIN_FILE_ENVIRONMENT)
    return bool(path) and os.path.exists(path)


def refuse_while_draining(requests: Sequence[Any]) -> list:
    """UNAVAILABLE for each request: a status every client retries, unlike the NOT_FOUND that Triton itself
    gives while it unloads models on the way down. One error object per response: the stub releases each with
    its response (a shared one came back garbled, with the wrong status, and crashed Triton at exit)."""
    return [pb_utils.InferenceResponse(error=pb_utils.TritonError(DRAINING_MESSAGE, pb_utils.TritonError.UNAVAILABLE))
            for _ in requests]


def gather_images(requests: Sequence[Any]) -> tuple[list[bytes], list[int]]:
    """Every request's IMAGE elements in one list, and how many each request brought."""
    images, counts = [], []
    for request in requests:
        blobs = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy().reshape(-1)
        images.extend(bytes(blob) for blob in blobs)
        counts.append(len(blobs))
    return images, counts


def respond(counts: Sequence[int], errors: Mapping[int, str], output: Callable[[int, int], Any]) -> list:
    """One response per request: a refusal naming its bad elements, or `output(start, stop)` (a pb_utils.Tensor
    of rows start..stop of the good results, which hold only the elements that were not refused)."""
    responses, first, good = [], 0, 0
    for count in counts:
        bad = {index - first: errors[index] for index in range(first, first + count) if index in errors}
        if bad:
            error = pb_utils.TritonError(format_image_errors(bad), pb_utils.TritonError.INVALID_ARG)
            responses.append(pb_utils.InferenceResponse(error=error))
        else:
            responses.append(pb_utils.InferenceResponse(output_tensors=[output(good, good + count)]))
        good += count - len(bad)
        first += count
    return responses
