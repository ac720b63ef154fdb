"""Everything both clients share except the transport: request building, batching plan, isolation of
bad images, result assembly, error mapping and the retry loop.

The core never performs I/O itself. Its operations are generators that *yield actions* — `Call` (one
tritonclient method on one URL) or `Sleep` — and receive each action's outcome (the return value, or
the InferenceServerException it raised). `ClipClient` runs them with blocking calls and
`AsyncClipClient` with `await`, so the logic that decides what to send, what to retry and which
image gets which row exists exactly once.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterable, Iterator, Mapping, TypeVar, Union

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from . import contract
from .connection import ConnectionOptions, EndpointPool, Urls, as_path, as_urls
from .errors import InvalidInputError, RequestFailedError
from .inputs import UnreadableInput, describe, path_of, to_bytes
from .results import EncodeResult, ImageFailure, assemble_chunk, l2_normalize
from .retry import RetryPolicy, final_error, status_name, with_deadline
from .transform import DEFAULT_MAX_IMAGE_PIXELS, OPENAI_PREPROCESSING, Preprocessing, preprocess_batch

log = logging.getLogger("clip_triton.client")
T = TypeVar("T")
DEFAULT_CONCURRENCY = 4
METADATA_TIMEOUT_S = 10.0
ON_ERROR = ("raise", "skip")
PREPROCESS = ("server", "client")


@dataclass(frozen=True)
class Call:
    """Invoke `method(**kwargs)` on the tritonclient object for `url`."""

    url: str
    method: str
    kwargs: dict


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Union[Call, Sleep]
Steps = Generator[Action, Any, T]


@dataclass(frozen=True)
class ModelInfo:
    """What the client reads from the server's model configs instead of assuming."""

    embedding_dim: int
    input_resolution: int
    max_batch_size: int  # of the ensemble: images per request
    visual_max_batch_size: int  # of clip_visual: pixel tensors per request
    pixels_datatype: str = "FP32"  # clip_visual's PIXEL_VALUES type: FP16 on the fp16 GPU target
    # How clip_visual wants its pixels made (the checkpoint's mean/std, filter, sizes; OpenAI's by default):
    # preprocess="client" uses it, so local pixels equal the server's.
    preprocessing: Preprocessing = OPENAI_PREPROCESSING


@dataclass
class Chunk:
    """Up to one request's worth of raw inputs; `start` is the global index of the first."""

    start: int
    items: list


@dataclass
class LoadedChunk:
    """A chunk after client-side work: encoded bytes (or pixels) per good index, failures for the rest."""

    start: int
    count: int
    payload: dict[int, Any]
    failures: dict[int, ImageFailure]
    labels: dict[int, str]
    paths: dict[int, str | None]


@dataclass(frozen=True)
class EncodeOptions:
    """Validated arguments of one encode call."""

    normalize: bool
    batch_size: int
    concurrency: int
    show_progress: bool
    timeout: float | None
    preprocess: str


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise InvalidInputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def check_images_argument(images: Any) -> Iterable:
    """`encode` takes a collection of images; catch the single image that would be iterated by accident."""
    if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
        raise InvalidInputError(f"encode takes a sequence of images; wrap the single {describe(images)} in a list")
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise InvalidInputError(
            f"a numpy batch of images must be NHWC uint8 (4-D), got shape {images.shape}; "
            "for one image pass [array]"
        )
    try:
        iter(images)
    except TypeError:
        raise InvalidInputError(f"encode takes an iterable of images, got {type(images).__name__}") from None
    return images


def plan_chunks(images: Iterable, batch_size: int) -> Iterator[Chunk]:
    """Consecutive chunks of at most `batch_size` inputs, drawn lazily so huge inputs stream."""
    iterator = iter(images)
    for start in itertools.count(0, batch_size):
        items = list(itertools.islice(iterator, batch_size))
        if not items:
            return
        yield Chunk(start, items)


def load_chunk(chunk: Chunk, client_preprocess_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> LoadedChunk:
    """Read/encode each input (and, for preprocess="client", transform it). Blocking: run off the event loop."""
    payload: dict[int, Any] = {}
    failures: dict[int, ImageFailure] = {}
    labels: dict[int, str] = {}
    paths: dict[int, str | None] = {}
    for offset, item in enumerate(chunk.items):
        index = chunk.start + offset
        labels[index], paths[index] = describe(item), path_of(item)
        try:
            payload[index] = to_bytes(item)
        except UnreadableInput as error:
            failures[index] = ImageFailure(index, labels[index], str(error), paths[index])
    if client_preprocess_size is not None and payload:
        order = sorted(payload)
        pixels, errors = preprocess_batch([payload[i] for i in order], client_preprocess_size, max_pixels,
                                          preprocessing=preprocessing)
        good = [i for position, i in enumerate(order) if position not in errors]
        for position, reason in errors.items():
            index = order[position]
            failures[index] = ImageFailure(index, labels[index], reason, paths[index])
        payload = dict(zip(good, pixels))
    return LoadedChunk(chunk.start, len(chunk.items), payload, failures, labels, paths)


def clean_message(message: str) -> str:
    """The server's reason without Triton's request-id and ensemble prefixes."""
    return contract.strip_triton_prefixes(message)


def _tensor(config: dict, section: str, name: str) -> dict:
    for tensor in config.get(section, []):
        if tensor["name"] == name:
            return tensor
    raise RequestFailedError(f"model {config.get('name')!r} has no {section} tensor {name!r}; is this a clip-triton server?")


def _preprocessing(visual_config: dict) -> Preprocessing:
    """clip_visual's preprocessing parameters (absent on servers exported before they existed: OpenAI's)."""
    parameters = {k: v.get("string_value", "") for k, v in visual_config.get("parameters", {}).items()}
    try:
        return Preprocessing.from_parameters(parameters)
    except ValueError as error:
        raise RequestFailedError(f"{contract.VISUAL_MODEL}'s preprocessing parameters are unusable: {error}") from None


class ClientCore:
    """Connection state and the transport-free operations of a CLIP client."""

    def __init__(self, options: ConnectionOptions, retry: RetryPolicy):
        self.options = options
        self.retry = retry
        self.pool = EndpointPool(options.urls, retry)
        self.info: ModelInfo | None = None

    # -- the retry loop ---------------------------------------------------------------------------
    def call(self, method: str, *, context: str, timeout: float | None = None,
             returned_statuses: frozenset[str] = frozenset(), **kwargs) -> Steps[Any]:
        """One logical request: retried on transient errors (failing over between URLs) until the deadline.

        Errors whose status is in `returned_statuses` are returned (for the caller to interpret) instead
        of raised; every other final error is raised as a ClipError.
        """
        kwargs = {**kwargs, "headers": dict(self.options.headers) or None, "client_timeout": timeout}
        started, attempt = time.monotonic(), 0
        while True:
            url = self.pool.pick()
            outcome = yield Call(url, method, kwargs)
            if not isinstance(outcome, InferenceServerException):
                self.pool.succeeded(url)
                return outcome
            status, message = status_name(outcome.status()), str(outcome.message() or outcome)
            retryable = self.retry.is_retryable(status, message)
            if status in returned_statuses and not retryable:
                return outcome
            attempt += 1
            if not retryable:
                raise final_error(status, message, url, context=context) from None
            self.pool.failed(url)
            wait, elapsed = self.pool.wait_s(), time.monotonic() - started
            if elapsed + wait > self.retry.deadline_s:
                raise final_error(status, message, url, attempts=attempt, waited_s=elapsed, context=context) from None
            log.info("%s: %s from %s (attempt %d: %s); retrying in %.2f s", context, status, url, attempt,
                     message[:200], wait)
            if wait > 0:
                yield Sleep(wait)

    # -- metadata ---------------------------------------------------------------------------------
    def fetch_info(self) -> Steps[ModelInfo]:
        """Embedding size, resolution and batch limits, read from the server's model configs."""
        if self.info is not None:
            return self.info
        configs = {}
        for model in (contract.ENSEMBLE_MODEL, contract.VISUAL_MODEL):
            response = yield from self.call("get_model_config", context=f"reading {model}'s config",
                                            timeout=METADATA_TIMEOUT_S, model_name=model, as_json=True)
            configs[model] = response["config"]
        ensemble, visual = configs[contract.ENSEMBLE_MODEL], configs[contract.VISUAL_MODEL]
        pixels = _tensor(visual, "input", contract.PIXELS_TENSOR)
        self.info = ModelInfo(
            embedding_dim=int(_tensor(ensemble, "output", contract.EMBEDDING_OUTPUT)["dims"][-1]),
            input_resolution=int(pixels["dims"][-1]),
            max_batch_size=int(ensemble.get("max_batch_size", 0)) or 1,
            visual_max_batch_size=int(visual.get("max_batch_size", 0)) or 1,
            pixels_datatype=pixels.get("data_type", "TYPE_FP32").removeprefix("TYPE_"),
            preprocessing=_preprocessing(visual),
        )
        return self.info

    def model_parameters(self) -> Steps[dict[str, str]]:
        """String parameters of `clip_visual`'s config (e.g. `weights`, the provenance of the weights)."""
        response = yield from self.call("get_model_config", context=f"reading {contract.VISUAL_MODEL}'s config",
                                        timeout=METADATA_TIMEOUT_S, model_name=contract.VISUAL_MODEL, as_json=True)
        parameters = response["config"].get("parameters", {})
        return {key: value.get("string_value", "") for key, value in parameters.items()}

    def options_for(self, info: ModelInfo, *, normalize: bool, batch_size: int | None, concurrency: int | None,
                    show_progress: bool, timeout: float | None, preprocess: str) -> EncodeOptions:
        """Validate encode's keyword arguments against the server's limits."""
        limit = info.visual_max_batch_size if preprocess == "client" else info.max_batch_size
        batch_size = limit if batch_size is None else batch_size
        concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
        if preprocess not in PREPROCESS:
            raise InvalidInputError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= limit:
            raise InvalidInputError(f"batch_size must be an integer from 1 to the server's max_batch_size "
                                    f"{limit}, got {batch_size!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"concurrency must be a positive integer, got {concurrency!r}")
        if timeout is not None and timeout <= 0:
            raise InvalidInputError(f"timeout must be positive seconds or None, got {timeout!r}")
        return EncodeOptions(bool(normalize), batch_size, concurrency, bool(show_progress), timeout, preprocess)

    # -- images -----------------------------------------------------------------------------------
    def encode_loaded(self, loaded: LoadedChunk, options: EncodeOptions) -> Steps[EncodeResult]:
        """Features for one loaded chunk; bad images are isolated so the good ones still get rows.

        A refused multi-image request names its bad elements ("IMAGE[i]: reason"); those become
        failures and the rest is resent. If the server's message names no element, the request is
        split in halves until each bad image stands alone.
        """
        info = self.info
        rows: dict[int, np.ndarray] = {}
        failures = dict(loaded.failures)
        pending = [sorted(loaded.payload)] if loaded.payload else []
        while pending:
            group = pending.pop()
            outcome = yield from self._infer_group(group, loaded, options)
            if isinstance(outcome, np.ndarray):
                rows.update(zip(group, outcome))
                continue
            message = str(outcome.message() or outcome)
            reasons = contract.parse_image_errors(message)
            if reasons and max(reasons) < len(group):
                for position, reason in reasons.items():
                    index = group[position]
                    failures[index] = ImageFailure(index, loaded.labels[index], reason, loaded.paths[index])
                rest = [index for position, index in enumerate(group) if position not in reasons]
                pending += [rest] if rest else []
            elif len(group) == 1:
                index = group[0]
                failures[index] = ImageFailure(index, loaded.labels[index], clean_message(message), loaded.paths[index])
            else:
                half = len(group) // 2
                pending += [group[half:], group[:half]]
        result = assemble_chunk(loaded.count, rows, failures, info.embedding_dim)
        if options.normalize:
            result.features = l2_normalize(result.features)
        return result

    def _infer_group(self, group: list[int], loaded: LoadedChunk, options: EncodeOptions) -> Steps[Any]:
        """Features [len(group), D], or the InferenceServerException that refuses some of the group."""
        if options.preprocess == "client":
            model = contract.VISUAL_MODEL
            tensor = contract.pixels_input(np.stack([loaded.payload[i] for i in group]), self.info.pixels_datatype)
        else:
            model = contract.ENSEMBLE_MODEL
            tensor = contract.image_input([loaded.payload[i] for i in group])
        outcome = yield from self.call(
            "infer", context=f"encoding inputs {group[0]}..{group[-1]}", timeout=options.timeout,
            returned_statuses=frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}),
            model_name=model, inputs=[tensor], outputs=[grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)],
            compression_algorithm=self.options.compression,
        )
        if isinstance(outcome, InferenceServerException):
            if status_name(outcome.status()) == "RESOURCE_EXHAUSTED" and "larger than max" not in str(outcome.message()):
                raise final_error("RESOURCE_EXHAUSTED", str(outcome.message()), "the server", context="encoding")
            return outcome
        return embeddings(outcome, len(group), self.info.embedding_dim)

    # -- pixels -----------------------------------------------------------------------------------
    def check_pixels(self, pixels: Any) -> np.ndarray:
        info = self.info
        array = np.asarray(pixels)
        expected = (3, info.input_resolution, info.input_resolution)
        if array.ndim != 4 or array.shape[1:] != expected:
            raise InvalidInputError(f"pixels must have shape [N, {', '.join(map(str, expected))}] for this server, "
                                    f"got {list(array.shape)}")
        if not np.issubdtype(array.dtype, np.floating):
            raise InvalidInputError(f"pixels must be floating point (normalized like CLIP's transform), got {array.dtype}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def encode_pixels_chunk(self, pixels: np.ndarray, start: int, timeout: float | None) -> Steps[np.ndarray]:
        outcome = yield from self.call(
            "infer", context=f"encoding pixel rows {start}..{start + len(pixels) - 1}", timeout=timeout,
            model_name=contract.VISUAL_MODEL, inputs=[contract.pixels_input(pixels, self.info.pixels_datatype)],
            outputs=[grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)],
            compression_algorithm=self.options.compression,
        )
        return embeddings(outcome, len(pixels), self.info.embedding_dim)

    def readiness_calls(self) -> Iterator[Call]:
        """One readiness probe per URL (no retries: readiness is a question, not a job)."""
        headers = dict(self.options.headers) or None
        for url in self.options.urls:
            yield Call(url, "is_model_ready", {"model_name": contract.ENSEMBLE_MODEL, "headers": headers,
                                                "client_timeout": METADATA_TIMEOUT_S})


def embeddings(result: Any, rows: int, dim: int) -> np.ndarray:
    """The EMBEDDING output, checked: one row of the advertised size per input sent."""
    array = result.as_numpy(contract.EMBEDDING_OUTPUT)
    if array is None or array.shape != (rows, dim):
        shape = None if array is None else list(array.shape)
        raise RequestFailedError(f"server returned {contract.EMBEDDING_OUTPUT} of shape {shape}, expected [{rows}, {dim}]")
    return array.astype(np.float32, copy=False)


def finalize(result: EncodeResult, on_error: str) -> np.ndarray:
    """What encode returns: every row, or raise InvalidImageError; with on_error="skip", the good rows."""
    from .errors import InvalidImageError

    if result.failures and on_error == "raise":
        raise InvalidImageError(result)
    return result.features


class ClientBase:
    """The constructor ClipClient and AsyncClipClient share: connection options, retry policy, where
    preprocessing runs. Each subclass opens its own transport in `_open_clients`."""

    def __init__(self, url: Urls = "127.0.0.1:8001", *, ssl: bool = False,
                 root_certificates: str | Path | None = None, private_key: str | Path | None = None,
                 certificate_chain: str | Path | None = None, headers: Mapping[str, str] | None = None,
                 compression: str | None = None, keepalive: grpcclient.KeepAliveOptions | None = None,
                 retry: RetryPolicy | None = None, retry_deadline: float | None = None,
                 preprocess: str = "server", load_balancing: str | None = None):
        self.options = ConnectionOptions(
            urls=as_urls(url), ssl=ssl, root_certificates=as_path(root_certificates),
            private_key=as_path(private_key), certificate_chain=as_path(certificate_chain),
            headers=dict(headers or {}), compression=compression, keepalive=keepalive,
            load_balancing=load_balancing,
        )
        self.core = ClientCore(self.options, with_deadline(retry or RetryPolicy(), retry_deadline))
        self.preprocess = preprocess
        self._clients = self._open_clients()

    def _open_clients(self) -> Any:
        raise NotImplementedError
