"""The raw-tensor path (`encode_pixels` -> clip_visual) and preprocess="client" give the ensemble's features."""
from __future__ import annotations

import numpy as np
import pytest

from clip_triton import ClipClient
from clip_triton.transform import preprocess_batch
from client_support import distinct_images, golden_rows, image_paths
from conftest import GOLDEN, IMAGE_NAMES, assert_features_match

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(vit_server):
    with ClipClient(vit_server.grpc_url) as client:
        yield client


def test_encode_pixels_of_openais_preprocessing_equals_the_ensemble(client: ClipClient) -> None:
    golden = np.load(GOLDEN / "pixels-224.npz")
    names = [str(n) for n in golden["names"]]
    ensemble = client.encode([p for n in names for p in image_paths() if p.name == n])
    features = client.encode_pixels(golden["pixels"], batch_size=2, concurrency=3)
    assert_features_match(features, ensemble)  # cosine >= 0.99999
    assert_features_match(features, golden_rows(names))


def test_encode_pixels_accepts_float64_and_normalizes(client: ClipClient) -> None:
    pixels = np.load(GOLDEN / "pixels-224.npz")["pixels"][:3].astype(np.float64)
    raw = client.encode_pixels(pixels)
    unit = client.encode_pixels(pixels, normalize=True)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert client.encode_pixels(pixels[:0]).shape == (0, 32)


def test_client_preprocess_equals_the_ensemble(client: ClipClient) -> None:
    images = image_paths() + [*distinct_images(20, side=300, seed=5)]
    ensemble = client.encode(images)
    local = client.encode(images, preprocess="client", batch_size=8)
    assert_features_match(local, ensemble)
    assert_features_match(local[: len(IMAGE_NAMES)], golden_rows(IMAGE_NAMES))


def test_client_preprocess_uses_the_same_transform_as_the_server(client: ClipClient) -> None:
    data = [p.read_bytes() for p in image_paths()]
    pixels, errors = preprocess_batch(data, client.input_resolution)
    assert not errors
    assert_features_match(client.encode_pixels(pixels), client.encode(data))


def test_client_preprocess_names_bad_images_like_the_server(client: ClipClient) -> None:
    inputs = [image_paths()[0], b"not an image", image_paths()[1]]
    local = client.encode_result(inputs, preprocess="client")
    remote = client.encode_result(inputs)
    assert [(f.index, f.reason) for f in local.failures] == [(f.index, f.reason) for f in remote.failures]
    assert list(local.indices) == [0, 2]
    assert_features_match(local.features, remote.features)
