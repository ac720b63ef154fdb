"""The client's transport-free pieces, without a server: parsing the server's per-image reasons, the
retry policy, failover order, the features file, and input encoding."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from clip_triton.connection import EndpointPool
from clip_triton_cli.feature_file import FeatureFile
from clip_triton.inputs import UnreadableInput, describe, encode_array, encode_pil, to_bytes
from clip_triton.retry import RetryPolicy, final_error
from clip_triton.errors import RequestFailedError, ServerTimeoutError, ServerUnavailableError


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(0)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (30, 1.0)]:
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert cap / 2 <= min(waits) and max(waits) <= cap
        assert max(waits) - min(waits) > cap / 4  # jittered, not a constant
    assert RetryPolicy().deadline_s >= 30


@pytest.mark.parametrize(
    ("status", "message", "retried"),
    [("StatusCode.UNAVAILABLE", "failed to connect to all addresses", True),
     ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True),
     ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size", True),
     ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-k'", False),
     ("StatusCode.INVALID_ARGUMENT", "IMAGE[0]: empty input", False),
     ("StatusCode.INTERNAL", "boom", False),
     ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", False),
     # A server going away (issue 16): draining, stopping, unloading, cancelling its calls, resetting.
     ("StatusCode.UNAVAILABLE", "in ensemble 'clip_image_encoder', server is draining before it stops", True),
     ("StatusCode.UNAVAILABLE", "Server is stopping, scheduler for model has stopped accepting requests", True),
     ("StatusCode.NOT_FOUND", "Request for unknown model: 'clip_image_encoder' has no available versions", True),
     ("StatusCode.NOT_FOUND", "Request for unknown model: 'clip_visual' version 1 is not at ready state", True),
     ("StatusCode.CANCELLED", "CANCELLED", True),
     ("StatusCode.UNAVAILABLE", "Stream removed (recvmsg:Connection reset by peer (104))", True),
     # A model the server never had stays final.
     ("StatusCode.NOT_FOUND", "Request for unknown model: 'no_such_model' is not found", False)],
)
def test_what_is_retried(status: str, message: str, retried: bool) -> None:
    assert RetryPolicy().is_retryable(status, message) is retried


def test_final_errors_have_the_right_type_and_a_readable_message() -> None:
    assert isinstance(final_error("DEADLINE_EXCEEDED", "Deadline Exceeded", "h:1"), ServerTimeoutError)
    unavailable = final_error("UNAVAILABLE", "Socket closed", "h:1", attempts=3, waited_s=2.5, context="encoding")
    assert isinstance(unavailable, ServerUnavailableError)
    assert str(unavailable).startswith("encoding to h:1 failed after 3 attempt(s) over 2.5 s: UNAVAILABLE: Socket closed")
    assert isinstance(final_error("INTERNAL", "stub died", "h:1"), RequestFailedError)
    going_away = final_error("NOT_FOUND", "Request for unknown model: 'm' has no available versions", "h:1", attempts=9)
    assert isinstance(going_away, ServerUnavailableError)
    assert isinstance(final_error("NOT_FOUND", "Request for unknown model: 'm' is not found", "h:1"), RequestFailedError)


def test_endpoint_pool_fails_over_and_comes_back() -> None:
    now = [0.0]
    pool = EndpointPool(["a", "b"], RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0), clock=lambda: now[0])
    assert [pool.pick() for _ in range(4)] == ["a", "b", "a", "b"]
    pool.failed("a")
    assert [pool.pick() for _ in range(3)] == ["b", "b", "b"] and pool.wait_s() == 0
    pool.failed("b")
    assert 0 < pool.wait_s() <= 1.0
    now[0] = 1.0  # both benches of at most 1 s are over
    assert {pool.pick(), pool.pick()} == {"a", "b"}
    pool.succeeded("a")
    pool.failed("b")
    assert pool.pick() == "a"


def test_feature_file_round_trip_and_refusal_of_foreign_files(tmp_path) -> None:
    path = tmp_path / "f.npz"
    store = FeatureFile(normalized=True)
    store.add(["/x/1.png", "/x/2.png"], np.ones((2, 4), np.float32), {"/x/3.png": "empty input"})
    store.save(path, 4)
    store.add(["/x/3.png"], np.zeros((1, 4), np.float32), {})  # a retried failure that now succeeded
    store.save(path, 4)
    loaded = FeatureFile.load(path)
    assert loaded.paths == ["/x/1.png", "/x/2.png", "/x/3.png"] and loaded.failures == {} and loaded.normalized
    np.testing.assert_array_equal(loaded.features, [[1] * 4, [1] * 4, [0] * 4])
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary file left behind
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="not a clip-triton features file"):
        FeatureFile.load(tmp_path / "other.npz")


def test_images_are_encoded_losslessly() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (5, 7, 1), (5, 7, 3), (5, 7, 4)]:
        array = rng.integers(0, 256, size=shape, dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(encode_array(array))))
        np.testing.assert_array_equal(decoded, array.reshape(decoded.shape))
    cmyk = Image.new("CMYK", (3, 2), (1, 2, 3, 4))
    reopened = Image.open(io.BytesIO(encode_pil(cmyk)))
    assert reopened.mode == "CMYK" and np.array_equal(np.asarray(reopened), np.asarray(cmyk))


@pytest.mark.parametrize(
    ("item", "reason"),
    [(np.zeros((4, 4, 2), np.uint8), "1, 3 or 4 channels"), (np.zeros((0, 4, 3), np.uint8), "no pixels"),
     (np.zeros((4, 4, 3), np.int16), "must be uint8"), (io.StringIO("text"), "binary mode"),
     (object(), "unsupported input type object")],
)
def test_unusable_inputs_say_why(item, reason: str) -> None:
    with pytest.raises(UnreadableInput, match=reason):
        to_bytes(item)


def test_labels_name_the_input() -> None:
    assert describe("/a/b.png") == "/a/b.png"
    assert describe(b"abc") == "<3 bytes>"
    assert describe(Image.new("RGB", (4, 2))) == "<PIL image RGB 4x2>"
    assert describe(np.zeros((2, 3, 3), np.uint8)) == "<array uint8 (2, 3, 3)>"
