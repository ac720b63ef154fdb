"""clip_triton: CLIP image features from a Triton Inference Server, over gRPC."""
from .client import ClipClient, ClipError, InvalidImageError

__all__ = ["ClipClient", "ClipError", "InvalidImageError"]
__version__ = "0.1.0"
