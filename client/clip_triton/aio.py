"""AsyncClipClient: the same client for asyncio, over `tritonclient.grpc.aio`.

The logic lives in `core.ClientCore`; this module runs its steps with `await`. Reading files and
encoding PIL images or arrays is blocking work, so it runs in a worker thread, keeping the event
loop free for the requests in flight.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Iterable

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from .core import (Call, ClientBase, EncodeOptions, ModelInfo, Sleep, Steps, T, check_images_argument,
                   check_on_error, finalize, load_chunk, plan_chunks)
from .errors import ClipError, ServerUnavailableError
from .inputs import ImageInput
from .progress import advance, progress_bar
from .results import EncodeResult, l2_normalize


async def invoke(client: Any, call: Call) -> Any:
    """Await one tritonclient.aio method; a failure is returned (not raised) as an InferenceServerException."""
    try:
        return await getattr(client, call.method)(**call.kwargs)
    except InferenceServerException as error:
        return error
    except grpc.RpcError as error:
        return InferenceServerException(msg=error.details(), status=str(error.code()))


class AsyncClipClient(ClientBase):
    """The asyncio twin of ClipClient: same arguments, same results, same errors; methods are coroutines.

    >>> async with AsyncClipClient("127.0.0.1:8001") as client:
    ...     features = await client.encode(["cat.jpg", "dog.png"])

    `embedding_dim`, `input_resolution` and `max_batch_size` are available after `await client.model_info()`
    (or any encode call) has read them from the server.
    """

    def _open_clients(self) -> dict[str, aioclient.InferenceServerClient] | None:
        return None  # grpc.aio channels bind to the running loop: opened on first use, see _client

    # -- lifecycle --------------------------------------------------------------------------------
    def _client(self, url: str) -> aioclient.InferenceServerClient:
        # grpc.aio channels bind to the running loop, so they are created on first use, inside it.
        if self._clients is None:
            self._clients = {u: aioclient.InferenceServerClient(**self.options.client_kwargs(u))
                             for u in self.options.urls}
        return self._clients[url]

    async def close(self) -> None:
        clients, self._clients = self._clients, None
        for client in (clients or {}).values():
            await client.close()

    async def __aenter__(self) -> "AsyncClipClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, steps: Steps[T]) -> T:
        outcome = None
        try:
            while True:
                try:
                    action = steps.send(outcome)
                except StopIteration as done:
                    return done.value
                if isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                    outcome = None
                else:
                    outcome = await invoke(self._client(action.url), action)
        finally:
            steps.close()

    # -- metadata ---------------------------------------------------------------------------------
    async def model_info(self) -> ModelInfo:
        return await self._run(self.core.fetch_info())

    @property
    def embedding_dim(self) -> int:
        return self._known_info().embedding_dim

    @property
    def input_resolution(self) -> int:
        return self._known_info().input_resolution

    @property
    def max_batch_size(self) -> int:
        return self._known_info().max_batch_size

    def _known_info(self) -> ModelInfo:
        if self.core.info is None:
            raise ClipError("model metadata not read yet: `await client.model_info()` first")
        return self.core.info

    async def model_parameters(self) -> dict[str, str]:
        """See ClipClient.model_parameters."""
        return await self._run(self.core.model_parameters())

    async def is_ready(self) -> bool:
        for call in self.core.readiness_calls():
            if await invoke(self._client(call.url), call) is True:
                return True
        return False

    async def wait_until_ready(self, timeout: float = 60.0, poll_s: float = 0.25) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.is_ready():
            if loop.time() >= deadline:
                raise ServerUnavailableError(f"no server ready at {', '.join(self.options.urls)} after {timeout:g} s")
            await asyncio.sleep(poll_s)

    # -- encoding ---------------------------------------------------------------------------------
    async def encode(self, images: Iterable[ImageInput], *, normalize: bool = False, batch_size: int | None = None,
                     concurrency: int | None = None, show_progress: bool = False, timeout: float | None = None,
                     on_error: str = "raise", preprocess: str | None = None) -> np.ndarray:
        """See ClipClient.encode."""
        check_on_error(on_error)
        result = await self.encode_result(images, normalize=normalize, batch_size=batch_size,
                                          concurrency=concurrency, show_progress=show_progress, timeout=timeout,
                                          preprocess=preprocess)
        return finalize(result, on_error)

    async def encode_result(self, images: Iterable[ImageInput], *, normalize: bool = False,
                            batch_size: int | None = None, concurrency: int | None = None,
                            show_progress: bool = False, timeout: float | None = None,
                            preprocess: str | None = None) -> EncodeResult:
        """See ClipClient.encode_result."""
        parts = [part async for part in self.iter_encode(
            images, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
            show_progress=show_progress, timeout=timeout, preprocess=preprocess)]
        return EncodeResult.concatenate(parts, self.core.info.embedding_dim)

    async def iter_encode(self, images: Iterable[ImageInput], *, normalize: bool = False,
                          batch_size: int | None = None, concurrency: int | None = None,
                          show_progress: bool = False, timeout: float | None = None, preprocess: str | None = None) -> AsyncIterator[EncodeResult]:
        """See ClipClient.iter_encode: per-request results in input order, `concurrency` requests in flight."""
        images = check_images_argument(images)
        info = await self.model_info()
        options = self.core.options_for(info, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                        show_progress=show_progress, timeout=timeout,
                                        preprocess=preprocess or self.preprocess)
        total = len(images) if hasattr(images, "__len__") else None
        slots = asyncio.Semaphore(options.concurrency)
        window: collections.deque[asyncio.Task] = collections.deque()
        with progress_bar(total, options.show_progress) as bar:
            try:
                for chunk in plan_chunks(images, options.batch_size):
                    window.append(asyncio.ensure_future(self._encode_chunk(chunk, options, info, slots)))
                    if len(window) >= 2 * options.concurrency:
                        yield advance(await window.popleft(), bar)
                while window:
                    yield advance(await window.popleft(), bar)
            finally:
                for task in window:
                    task.cancel()
                if window:
                    await asyncio.gather(*window, return_exceptions=True)

    async def _encode_chunk(self, chunk, options: EncodeOptions, info: ModelInfo,
                            slots: asyncio.Semaphore) -> EncodeResult:
        async with slots:
            size = info.input_resolution if options.preprocess == "client" else None
            loaded = await asyncio.to_thread(load_chunk, chunk, size, preprocessing=info.preprocessing)
            return await self._run(self.core.encode_loaded(loaded, options))

    async def encode_pixels(self, pixels: np.ndarray, *, normalize: bool = False, batch_size: int | None = None,
                            concurrency: int | None = None, timeout: float | None = None) -> np.ndarray:
        """See ClipClient.encode_pixels."""
        info = await self.model_info()
        pixels = self.core.check_pixels(pixels)
        options = self.core.options_for(info, normalize=normalize, batch_size=batch_size, concurrency=concurrency,
                                        show_progress=False, timeout=timeout, preprocess="client")
        slots = asyncio.Semaphore(options.concurrency)

        async def one(start: int) -> np.ndarray:
            async with slots:
                return await self._run(self.core.encode_pixels_chunk(
                    pixels[start:start + options.batch_size], start, timeout))

        parts = await asyncio.gather(*(one(s) for s in range(0, len(pixels), options.batch_size)))
        features = np.concatenate(parts) if parts else np.zeros((0, info.embedding_dim), np.float32)
        return l2_normalize(features) if normalize else features

