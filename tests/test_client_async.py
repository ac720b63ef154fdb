"""AsyncClipClient against the real server: same rows, order and error behaviour as the sync client."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clip_triton import AsyncClipClient, ClipClient, ClipError, InvalidImageError, ServerUnavailableError
from clip_triton_serve import free_port
from client_support import assert_rows_distinct, distinct_images, golden_rows, image_paths
from conftest import GOLDEN, IMAGE_NAMES, assert_features_match

pytestmark = pytest.mark.server


def run(coroutine):
    return asyncio.run(coroutine)


def test_async_encode_gives_openais_features_and_metadata(vit_server) -> None:
    async def scenario():
        async with AsyncClipClient(vit_server.grpc_url) as client:
            with pytest.raises(ClipError, match="model_info"):
                client.embedding_dim  # noqa: B018 (not read from the server yet)
            assert await client.is_ready()
            await client.wait_until_ready(timeout=5)
            features = await client.encode([str(p) for p in image_paths()])
            parameters = await client.model_parameters()
            return features, client.embedding_dim, client.input_resolution, client.max_batch_size, parameters

    features, dim, resolution, max_batch_size, parameters = run(scenario())
    assert (dim, resolution, max_batch_size) == (32, 224, 64)
    with ClipClient(vit_server.grpc_url) as client:
        assert parameters == client.model_parameters() and parameters["weights"].startswith("openai:")
    assert_features_match(features, golden_rows(IMAGE_NAMES))


@pytest.mark.parametrize(("batch_size", "concurrency"), [(1, 4), (9, 3), (64, 1)])
def test_async_rows_keep_input_order(vit_server, batch_size: int, concurrency: int) -> None:
    images = distinct_images(120, seed=2)
    with ClipClient(vit_server.grpc_url) as sync:
        reference = np.stack([sync.encode([image])[0] for image in images])
    assert_rows_distinct(reference)

    async def scenario():
        async with AsyncClipClient(vit_server.grpc_url) as client:
            return await client.encode(images, batch_size=batch_size, concurrency=concurrency, normalize=True)

    features = run(scenario())
    np.testing.assert_allclose(features, reference / np.linalg.norm(reference, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)


def test_async_isolates_bad_images(vit_server) -> None:
    paths = image_paths()
    inputs = [paths[0], b"", paths[1], b"<html>", paths[2]]

    async def scenario():
        async with AsyncClipClient(vit_server.grpc_url) as client:
            with pytest.raises(InvalidImageError) as raised:
                await client.encode(inputs)
            skipped = await client.encode(inputs, on_error="skip", batch_size=2)
            return raised.value, skipped

    error, skipped = run(scenario())
    assert [f.index for f in error.failures] == [1, 3]
    assert "empty input" in error.failures[0].reason and "not a recognised image format" in error.failures[1].reason
    assert list(error.result.indices) == [0, 2, 4]
    assert_features_match(error.features, golden_rows(IMAGE_NAMES[:3]))
    assert_features_match(skipped, golden_rows(IMAGE_NAMES[:3]))


def test_async_encode_pixels_and_client_preprocess_match_the_ensemble(vit_server) -> None:
    pixels = np.load(GOLDEN / "pixels-224.npz")["pixels"]

    async def scenario():
        async with AsyncClipClient(vit_server.grpc_url) as client:
            return (await client.encode(image_paths()), await client.encode_pixels(pixels, batch_size=3),
                    await client.encode(image_paths(), preprocess="client"))

    ensemble, from_pixels, client_side = run(scenario())
    assert_features_match(from_pixels, ensemble)
    assert_features_match(client_side, ensemble)


def test_async_unreachable_server_is_reported_clearly() -> None:
    url = f"127.0.0.1:{free_port()}"

    async def scenario():
        async with AsyncClipClient(url, retry_deadline=0.5) as client:
            assert not await client.is_ready()
            await client.encode([b"x"])

    with pytest.raises(ServerUnavailableError, match=f"{url}.*UNAVAILABLE"):
        run(scenario())


def test_the_async_client_has_every_argument_and_attribute_of_the_sync_one() -> None:
    """"Same arguments, same results": every public name of ClipClient exists on AsyncClipClient (coroutines
    where ClipClient blocks), and the constructors take the same arguments."""
    import inspect

    sync_names = {name for name in dir(ClipClient) if not name.startswith("_")}
    async_names = {name for name in dir(AsyncClipClient) if not name.startswith("_")}
    assert sync_names <= async_names, sync_names - async_names
    assert inspect.signature(ClipClient.__init__) == inspect.signature(AsyncClipClient.__init__)
    for name in sync_names - {"close"}:
        sync_member, async_member = getattr(ClipClient, name), getattr(AsyncClipClient, name)
        if isinstance(sync_member, property):
            assert isinstance(async_member, property), name
        elif callable(sync_member) and name not in ("iter_encode",):
            parameters = list(inspect.signature(sync_member).parameters)
            assert list(inspect.signature(async_member).parameters) == parameters, name
            assert inspect.iscoroutinefunction(async_member), name
