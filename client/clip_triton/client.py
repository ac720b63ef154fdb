"""ClipClient: images in, CLIP image features out, over blocking gRPC with several requests in flight.

The logic lives in `core.ClientCore`; this module only runs its steps with tritonclient's blocking
client, on a thread pool so that `concurrency` requests (and file reads) overlap.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .core import (Call, ClientBase, EncodeOptions, ModelInfo, Sleep, Steps, T, check_images_argument,
                   check_on_error, finalize, load_chunk, plan_chunks)
from .errors import ClipError, ServerUnavailableError
from .inputs import ImageInput
from .progress import advance, progress_bar
from .results import EncodeResult, l2_normalize


class _Cancelled(ClipError):
    """Raised inside worker threads when the encode call that owns them has stopped."""


def invoke(client: Any, call: Call) -> Any:
    """Run one tritonclient method; a failure is returned (not raised) as an InferenceServerException."""
    try:
        return getattr(client, call.method)(**call.kwargs)
    except InferenceServerException as error:
        return error
    except grpc.RpcError as error:  # tritonclient wraps these, but never let one escape raw
        return InferenceServerException(msg=error.details(), status=str(error.code()))


class ClipClient(ClientBase):
    """A blocking client for a clip-triton server (or several: requests spread and fail over).

    >>> with ClipClient("127.0.0.1:8001") as client:
    ...     features = client.encode(["cat.jpg", "dog.png"], normalize=True)

    Connection options: `ssl` / `root_certificates` / `private_key` / `certificate_chain` (PEM file
    paths) for TLS and mutual TLS, `headers` sent with every request (e.g. an auth token), gRPC
    `compression` ("gzip" or "deflate"), `keepalive` (tritonclient's KeepAliveOptions), and `retry`
    (a RetryPolicy; `retry_deadline` overrides its total deadline in seconds).
    """

    def _open_clients(self) -> dict[str, grpcclient.InferenceServerClient]:
        return {u: grpcclient.InferenceServerClient(**self.options.client_kwargs(u)) for u in self.options.urls}

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> "ClipClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, steps: Steps[T], stop: threading.Event | None = None) -> T:
        """Drive a core operation with blocking calls; `stop` aborts it between steps."""
        outcome = None
        try:
            while True:
                if stop is not None and stop.is_set():
                    raise _Cancelled("cancelled")
                try:
                    action = steps.send(outcome)
                except StopIteration as done:
                    return done.value
                if isinstance(action, Sleep):
                    if stop is not None:
                        stop.wait(action.seconds)
                    else:
                        time.sleep(action.seconds)
                    outcome = None
                else:
                    outcome = invoke(self._clients[action.url], action)
        finally:
            steps.close()

    # -- metadata ---------------------------------------------------------------------------------
    def model_info(self) -> ModelInfo:
        """Embedding size, input resolution and batch limits from the server (fetched once, retried)."""
        return self._run(self.core.fetch_info())

    @property
    def embedding_dim(self) -> int:
        return self.model_info().embedding_dim

    @property
    def input_resolution(self) -> int:
        return self.model_info().input_resolution

    @property
    def max_batch_size(self) -> int:
        return self.model_info().max_batch_size

    def is_ready(self) -> bool:
        """True if some server URL reports the ensemble ready (one probe each, no retries)."""
        return any(invoke(self._clients[c.url], c) is True for c in self.core.readiness_calls())

    def wait_until_ready(self, timeout: float = 60.0, poll_s: float = 0.25) -> None:
        """Block until `is_ready()`; ServerUnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(f"no server ready at {', '.join(self.options.urls)} after {timeout:g} s")
            time.sleep(poll_s)

    def model_parameters(self) -> dict[str, str]:
        """String parameters of `clip_visual`'s config (e.g. `weights`, the provenance of the weights)."""
        return self._run(self.core.model_parameters())

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, images: Iterable[ImageInput], *, normalize: bool = False, batch_size: int | None = None,
               concurrency: int | None = None, show_progress: bool = False, timeout: float | None = None,
               on_error: str = "raise", preprocess: str | None = None) -> np.ndarray:
        """Features float32 [N, D], rows in input order (`normalize=True`: unit rows for cosine similarity).

        If any input is refused, on_error="raise" (default) raises InvalidImageError naming every bad
        input, with the good features on `error.result`; on_error="skip" returns only the good rows
        (use `encode_result` to know which inputs they belong to). `timeout` bounds each request.
        """
        check_on_error(on_error)
        result = self.encode_result(images, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                    show_progress=show_progress, timeout=timeout, preprocess=preprocess)
        return finalize(result, on_error)

    def encode_result(self, images: Iterable[ImageInput], *, normalize: bool = False,
                      batch_size: int | None = None, concurrency: int | None = None, show_progress: bool = False,
                      timeout: float | None = None, preprocess: str | None = None) -> EncodeResult:
        """Like `encode`, but never raises for bad images: features, their input indices, and the failures."""
        parts = list(self.iter_encode(images, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                      show_progress=show_progress, timeout=timeout, preprocess=preprocess))
        return EncodeResult.concatenate(parts, self.embedding_dim)

    def iter_encode(self, images: Iterable[ImageInput], *, normalize: bool = False, batch_size: int | None = None,
                    concurrency: int | None = None, show_progress: bool = False, timeout: float | None = None,
                    preprocess: str | None = None) -> Iterator[EncodeResult]:
        """Stream results one request's worth at a time, in input order, while later requests are in flight.

        Inputs are drawn from `images` lazily (at most about 2 x concurrency requests ahead), so an
        iterator over millions of paths never sits in memory.
        """
        images = check_images_argument(images)
        info = self.model_info()
        options = self.core.options_for(info, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                        show_progress=show_progress, timeout=timeout,
                                        preprocess=preprocess or self.preprocess)
        total = len(images) if hasattr(images, "__len__") else None
        stop = threading.Event()
        window: collections.deque[Future] = collections.deque()
        with progress_bar(total, options.show_progress) as bar, \
                ThreadPoolExecutor(options.concurrency, thread_name_prefix="clip-encode") as pool:
            try:
                for chunk in plan_chunks(images, options.batch_size):
                    window.append(pool.submit(self._encode_chunk, chunk, options, info, stop))
                    if len(window) >= 2 * options.concurrency:
                        yield advance(window.popleft().result(), bar)
                while window:
                    yield advance(window.popleft().result(), bar)
            finally:
                stop.set()
                for future in window:
                    future.cancel()

    def _encode_chunk(self, chunk, options: EncodeOptions, info: ModelInfo, stop: threading.Event) -> EncodeResult:
        size = info.input_resolution if options.preprocess == "client" else None
        loaded = load_chunk(chunk, size, preprocessing=info.preprocessing)
        return self._run(self.core.encode_loaded(loaded, options), stop)

    def encode_pixels(self, pixels: np.ndarray, *, normalize: bool = False, batch_size: int | None = None,
                      concurrency: int | None = None, timeout: float | None = None) -> np.ndarray:
        """Features for already-preprocessed pixels [N, 3, R, R] (CLIP-normalized float), via `clip_visual`."""
        info = self.model_info()
        pixels = self.core.check_pixels(pixels)
        options = self.core.options_for(info, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                        show_progress=False, timeout=timeout, preprocess="client")
        starts = range(0, len(pixels), options.batch_size)
        with ThreadPoolExecutor(options.concurrency, thread_name_prefix="clip-pixels") as pool:
            parts = list(pool.map(lambda s: self._run(self.core.encode_pixels_chunk(
                pixels[s:s + options.batch_size], s, timeout)), starts))
        features = np.concatenate(parts) if parts else np.zeros((0, info.embedding_dim), np.float32)
        return l2_normalize(features) if normalize else features

