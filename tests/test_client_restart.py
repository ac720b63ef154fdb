"""A server killed (SIGKILL) and restarted on the same ports in the middle of `encode`: every row comes
back, exactly once, in input order, equal to an undisturbed run."""
from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from clip_triton import AsyncClipClient, ClipClient
from clip_triton_serve import TritonServer
from client_support import assert_rows_distinct, distinct_images
from conftest import running_server

pytestmark = pytest.mark.server
BATCH, CONCURRENCY = 4, 2


@pytest.fixture()
def restartable_server(vit_repository):
    """A server, and a function that SIGKILLs it and starts a fresh one on the same ports (in a thread)."""
    replacements: list[TritonServer] = []
    with running_server(vit_repository) as server:

        def crash_and_restart() -> threading.Thread:
            server.kill()
            replacement = TritonServer(server.options)
            replacements.append(replacement)
            thread = threading.Thread(target=lambda: replacement.start().wait_until_ready(180), daemon=True)
            thread.start()
            return thread

        try:
            yield server, crash_and_restart
        finally:
            for replacement in replacements:
                replacement.stop()


def reference_features(url: str, images: list[bytes]) -> np.ndarray:
    with ClipClient(url) as client:
        return client.encode(images, batch_size=16)


def assert_retried_through_the_outage(caplog: pytest.LogCaptureFixture) -> None:
    """The crash really hit the job: some request failed with UNAVAILABLE and was retried."""
    retries = [r.getMessage() for r in caplog.records if r.name == "clip_triton.client" and "retrying" in r.getMessage()]
    assert any("UNAVAILABLE" in message for message in retries), retries


def test_sync_encode_survives_a_server_crash_and_restart(restartable_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="clip_triton.client")
    server, crash_and_restart = restartable_server
    images = distinct_images(200, seed=11)
    expected = reference_features(server.grpc_url, images)
    assert_rows_distinct(expected)
    with ClipClient(server.grpc_url, retry_deadline=120) as client:
        parts = client.iter_encode(images, batch_size=BATCH, concurrency=CONCURRENCY)
        received = [next(parts)]
        restart = crash_and_restart()  # the rest of the job is queued or in flight now
        received += list(parts)
        restart.join()
    indices = np.concatenate([part.indices for part in received])
    np.testing.assert_array_equal(indices, np.arange(len(images)))  # every row exactly once, in order
    assert sum(part.count for part in received) == len(images) and not any(part.failures for part in received)
    features = np.concatenate([part.features for part in received])
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert_retried_through_the_outage(caplog)


def test_async_encode_survives_a_server_crash_and_restart(restartable_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="clip_triton.client")
    server, crash_and_restart = restartable_server
    images = distinct_images(200, seed=12)
    expected = reference_features(server.grpc_url, images)

    async def scenario():
        async with AsyncClipClient(server.grpc_url, retry_deadline=120) as client:
            parts = client.iter_encode(images, batch_size=BATCH, concurrency=CONCURRENCY)
            received = [await parts.__anext__()]
            restart = crash_and_restart()
            received += [part async for part in parts]
            await asyncio.to_thread(restart.join)
            return received

    received = asyncio.run(scenario())
    np.testing.assert_array_equal(np.concatenate([p.indices for p in received]), np.arange(len(images)))
    np.testing.assert_allclose(np.concatenate([p.features for p in received]), expected, rtol=1e-4, atol=1e-5)
    assert_retried_through_the_outage(caplog)
