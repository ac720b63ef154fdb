"""The client's exception family: every failure a user can see is a `ClipError`.

tritonclient and gRPC errors never escape the client raw; they are mapped here to a small set of
types that say what to do about them:

- `InvalidImageError` (also a `ValueError`): some inputs are not usable images. Names every bad input
  with its index, label (path when there is one) and the server's reason, and carries the features of
  the good inputs (`.result`), so a bad image in a large job costs nothing but itself.
- `InvalidInputError` (also a `ValueError`): the call itself is wrong (bad option, wrong tensor shape).
- `ServerUnavailableError`: the server stayed unreachable or overloaded until the retry deadline.
- `ServerTimeoutError` (also a `TimeoutError`): one request ran past the per-request `timeout`.
- `RequestFailedError`: any other refusal (unknown model, authentication, internal error), with the
  gRPC status and the server's message.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .results import EncodeResult


class ClipError(Exception):
    """Base of every error raised by the clip_triton client."""


class InvalidInputError(ClipError, ValueError):
    """The arguments of a call are unusable (wrong shape, dtype, option value)."""


class InvalidImageError(ClipError, ValueError):
    """One or more inputs were refused as images.

    `failures` lists every refused input (index, label, reason); `result` holds the features of all
    the inputs that succeeded, with their input indices, exactly as `encode_result` would return it.
    """

    def __init__(self, result: "EncodeResult"):
        self.result = result
        self.failures = result.failures
        lines = [f"  input {f.index} ({f.label}): {f.reason}" for f in result.failures]
        succeeded = len(result.indices)
        super().__init__(
            f"{len(result.failures)} of {result.count} input(s) refused as images "
            f"({succeeded} encoded; their features are on this exception's .result):\n" + "\n".join(lines)
        )

    @property
    def features(self):
        """Features of the inputs that succeeded, in input order (see `.result.indices`)."""
        return self.result.features


class TransportError(ClipError):
    """A failure reported by the server or by gRPC; `status` is the gRPC status name, `url` the endpoint."""

    def __init__(self, message: str, status: str | None = None, url: str | None = None):
        self.status = status
        self.url = url
        super().__init__(message)


class ServerUnavailableError(TransportError):
    """Every attempt failed with a transient status (down, restarting, queue full) until the deadline."""


class ServerTimeoutError(TransportError, TimeoutError):
    """A request ran past the per-request timeout (the server may be overloaded or stuck)."""


class RequestFailedError(TransportError):
    """The server refused a request for a reason retrying cannot fix."""
