"""clip_triton: OpenAI CLIP image features from a Triton server — any image in, features out, nothing lost.

The client path imports only tritonclient, numpy, Pillow and tqdm (no torch, no onnx).
"""
from .aio import AsyncClipClient
from .client import ClipClient
from .core import ModelInfo
from .errors import (ClipError, InvalidImageError, InvalidInputError, RequestFailedError, ServerTimeoutError,
                     ServerUnavailableError, TransportError)
from .results import EncodeResult, ImageFailure
from .retry import RetryPolicy

__all__ = [
    "AsyncClipClient", "ClipClient", "ClipError", "EncodeResult", "ImageFailure", "InvalidImageError",
    "InvalidInputError", "ModelInfo", "RequestFailedError", "RetryPolicy", "ServerTimeoutError",
    "ServerUnavailableError", "TransportError",
]
__version__ = "0.1.0"
