"""Bad images and server errors through the client: every bad input named, good ones still encoded,
INVALID_ARGUMENT never retried, unreachable servers reported clearly."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bad_inputs import bad_images
from clip_triton import (ClipClient, ClipError, InvalidImageError, RequestFailedError, RetryPolicy,
                         ServerUnavailableError)
from clip_triton_serve import free_port
from client_support import golden_rows, image_paths, preprocess_stats
from conftest import IMAGE_NAMES, assert_features_match

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(vit_server):
    with ClipClient(vit_server.grpc_url) as client:
        yield client


def mixed_inputs(tmp_path):
    """Good images with every kind of bad input between them; returns (inputs, good positions, bad expectations)."""
    goods = image_paths()
    bads = {name: payload for name, (payload, _) in bad_images().items()}
    expectations = {name: fragment for name, (_, fragment) in bad_images().items()}
    missing = tmp_path / "does-not-exist.jpg"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text in a .png file")
    bads |= {"missing_file": missing, "text_file": not_an_image, "unsupported_type": 3.14,
             "float_array": np.zeros((8, 8, 3), np.float32)}
    expectations |= {"missing_file": "cannot read file", "text_file": "not a recognised image format",
                     "unsupported_type": "unsupported input type float",
                     "float_array": "numpy images must be uint8"}
    inputs, good_positions, bad_positions = [], [], {}
    bad_items = list(bads.items())
    for i in range(max(len(goods), len(bad_items))):
        if i < len(bad_items):
            bad_positions[len(inputs)] = bad_items[i][0]
            inputs.append(bad_items[i][1])
        if i < len(goods):
            good_positions.append(len(inputs))
            inputs.append(goods[i])
    return inputs, good_positions, {index: (name, expectations[name]) for index, name in bad_positions.items()}


@pytest.mark.parametrize("batch_size", [64, 4])
def test_bad_images_mixed_into_a_batch_are_each_named_and_good_ones_keep_their_features(
        client: ClipClient, tmp_path, batch_size: int) -> None:
    inputs, good_positions, bad = mixed_inputs(tmp_path)
    with pytest.raises(InvalidImageError) as raised:
        client.encode(inputs, batch_size=batch_size)
    error = raised.value
    assert isinstance(error, ValueError) and isinstance(error, ClipError)
    assert [f.index for f in error.failures] == sorted(bad)
    for failure in error.failures:
        name, fragment = bad[failure.index]
        assert fragment in failure.reason, (name, failure.reason)
        assert f"input {failure.index} ({failure.label}): {failure.reason}" in str(error)
    assert f"{len(bad)} of {len(inputs)} input(s) refused" in str(error)
    assert str(tmp_path / "does-not-exist.jpg") in str(error)  # paths are named
    # A bad image never receives a vector; the good ones get exactly theirs.
    assert list(error.result.indices) == good_positions
    assert_features_match(error.features, golden_rows(IMAGE_NAMES))


def test_on_error_skip_returns_only_the_good_rows(client: ClipClient, tmp_path) -> None:
    inputs, good_positions, bad = mixed_inputs(tmp_path)
    features = client.encode(inputs, on_error="skip", batch_size=5, concurrency=3)
    assert_features_match(features, golden_rows(IMAGE_NAMES))
    result = client.encode_result(inputs)
    assert list(result.indices) == good_positions and len(result.failures) == len(bad)
    assert result.count == len(inputs) and not result.ok


def test_isolation_resends_only_the_good_images_and_never_retries_invalid_argument(vit_server, client) -> None:
    good = image_paths()[0].read_bytes()
    before = preprocess_stats(vit_server.grpc_url)
    result = client.encode_result([b"bad one", good, b"bad two", good])
    after = preprocess_stats(vit_server.grpc_url)
    assert [f.index for f in result.failures] == [0, 2] and list(result.indices) == [1, 3]
    # One request of 4 images refused (naming elements 0 and 2), then one request with the 2 good ones.
    assert (after[0] - before[0], after[1] - before[1]) == (6, 2)

    before = preprocess_stats(vit_server.grpc_url)
    with pytest.raises(InvalidImageError, match="input 0"):
        client.encode([b"bad alone"])
    after = preprocess_stats(vit_server.grpc_url)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1), "INVALID_ARGUMENT must not be retried"


def test_an_unreachable_server_is_retried_then_reported_clearly() -> None:
    url = f"127.0.0.1:{free_port()}"
    with ClipClient(url, retry=RetryPolicy(deadline_s=1.0, initial_backoff_s=0.05)) as client:
        with pytest.raises(ServerUnavailableError) as raised:
            client.encode([b"x"])
    message = str(raised.value)
    assert url in message and "UNAVAILABLE" in message and "Connection refused" in message
    attempts = int(message.split(" after ")[1].split(" attempt")[0])
    assert attempts > 1, message
    assert raised.value.status == "UNAVAILABLE" and raised.value.url == url


def test_server_refusals_that_retrying_cannot_fix_are_raised_at_once(vit_server) -> None:
    """A model the server never had is NOT_FOUND "is not found": final at once, even with a long retry deadline
    (unlike the NOT_FOUND "has no available versions" of a server that is stopping, which is retried)."""
    with ClipClient(vit_server.grpc_url, retry_deadline=60) as client:
        client.model_info()
        started = time.monotonic()
        with pytest.raises(RequestFailedError, match="NOT_FOUND: Request for unknown model: 'no_such_model' is not found"):
            client._run(client.core.call("get_model_config", context="reading no_such_model's config",
                                         model_name="no_such_model", as_json=True))
        assert time.monotonic() - started < 5


def test_a_tiny_timeout_surfaces_as_a_clip_timeout_error(client: ClipClient) -> None:
    images = [path.read_bytes() for path in image_paths()] * 4
    with pytest.raises(ClipError) as raised:
        client.encode(images, timeout=1e-6)
    assert isinstance(raised.value, TimeoutError), raised.value
    # A ServerTimeoutError, not a ServerUnavailableError: a timed-out request is final, not retried.
    assert "timed out" in str(raised.value) and "Deadline Exceeded" in str(raised.value)
