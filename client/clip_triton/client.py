"""ClipClient: encoded images in, CLIP image features out, over gRPC to the `clip_image_encoder` ensemble."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from . import contract

ImageInput = Union[str, os.PathLike, bytes]


class ClipError(RuntimeError):
    """Any failure talking to the server, with a readable message."""


class InvalidImageError(ClipError, ValueError):
    """The server refused one or more images; `reasons` maps input index -> reason."""

    def __init__(self, reasons: dict[int, str], labels: Sequence[str]):
        self.reasons = reasons
        lines = [f"input {i} ({labels[i]}): {reason}" for i, reason in sorted(reasons.items())]
        super().__init__(f"{len(reasons)} image(s) refused:\n" + "\n".join(lines))


def read_image(image: ImageInput) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).read_bytes()


class ClipClient:
    """A synchronous client for the ensemble. `encode` keeps input order and never pairs a bad image with a vector."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = contract.ENSEMBLE_MODEL, batch_size: int = 16):
        self.url = url
        self.model = model
        self.batch_size = batch_size
        self._client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ClipClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def model_parameters(self) -> dict[str, str]:
        """String parameters of `clip_visual`'s config (e.g. `weights`, the provenance of the weights)."""
        config = self._client.get_model_config(contract.VISUAL_MODEL, as_json=True)["config"]
        return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

    def encode(self, images: Iterable[ImageInput]) -> np.ndarray:
        """Features [N, D] float32 in input order; raises InvalidImageError naming every refused input."""
        images = list(images)
        labels = [str(i) if isinstance(i, (str, os.PathLike)) else f"{len(i)} bytes" for i in images]
        rows: list[np.ndarray | None] = [None] * len(images)
        reasons: dict[int, str] = {}
        for start in range(0, len(images), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(images))))
            try:
                features = self._infer([read_image(images[i]) for i in chunk])
                for i, row in zip(chunk, features):
                    rows[i] = row
            except InferenceServerException as error:
                if error.status() != "StatusCode.INVALID_ARGUMENT":
                    raise ClipError(f"{self.url}: {error.message()}") from None
                for i in chunk:  # isolate the bad ones: each image alone
                    try:
                        rows[i] = self._infer([read_image(images[i])])[0]
                    except InferenceServerException as single:
                        reasons[i] = _server_reason(single.message())
        if reasons:
            raise InvalidImageError(reasons, labels)
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def _infer(self, blobs: list[bytes]) -> np.ndarray:
        tensor = grpcclient.InferInput(contract.IMAGE_INPUT, [len(blobs), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
        output = grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)
        result = self._client.infer(self.model, [tensor], outputs=[output])
        return result.as_numpy(contract.EMBEDDING_OUTPUT)


def _server_reason(message: str) -> str:
    """The preprocessing model's reason, without Triton's ensemble prefix and the element index."""
    message = message.split(f"in ensemble '{contract.ENSEMBLE_MODEL}', ", 1)[-1]
    return message.removeprefix("IMAGE[0]: ")
