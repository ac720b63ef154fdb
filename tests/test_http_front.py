"""The HTTP front (serve/clip_triton_serve/http_front.py) in front of a real Triton: every request and response
passes unchanged (keep-alive, chunked bodies, HEAD, Expect: 100-continue, HTTP inference), and once a drain
starts /v2/health/ready answers 503, also on a connection that was already open."""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as httpclient

from clip_triton import contract
from clip_triton_serve import free_port
from clip_triton_serve.http_front import HttpFront
from conftest import IMAGE_NAMES, assert_features_match, golden_features, image_bytes

pytestmark = pytest.mark.server
CONFIG_PATH = f"/v2/models/{contract.ENSEMBLE_MODEL}/config"


@pytest.fixture()
def front(vit_server):
    """A front of our own before the shared test server's Triton, so that draining it disturbs no other test."""
    upstream_port = urlsplit(vit_server.triton_http_url).port
    front = HttpFront("127.0.0.1", free_port(), upstream_port).start()
    try:
        yield front
    finally:
        front.stop()


def get(connection: http.client.HTTPConnection, path: str, method: str = "GET") -> tuple[int, bytes]:
    connection.request(method, path)
    response = connection.getresponse()
    return response.status, response.read()


def raw_exchange(port: int, request: bytes, wait_for: bytes = b"") -> bytes:
    """Send bytes as they are; read until the peer closes (the requests below say Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if wait_for:
            head, body = request.split(b"\r\n\r\n", 1)
            sock.sendall(head + b"\r\n\r\n")
            assert sock.recv(len(wait_for)) == wait_for  # the interim response comes before the body is sent
            request = body
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_requests_pass_through_on_one_kept_alive_connection_and_readiness_turns_503_on_drain(front) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        assert get(connection, "/v2/health/ready")[0] == 200
        status, body = get(connection, CONFIG_PATH)
        assert status == 200 and json.loads(body)["name"] == contract.ENSEMBLE_MODEL
        assert get(connection, "/v2/models/no_such_model/config")[0] == 404  # Triton's own error, passed on
        front.drain()
        status, body = get(connection, "/v2/health/ready")  # the same connection: every request is looked at
        assert status == 503 and b"draining" in body
        assert get(connection, "/v2/health/ready", method="HEAD") == (503, b"")
        assert get(connection, CONFIG_PATH)[0] == 200  # everything else still passes while draining
        assert get(connection, "/v2/health/live")[0] == 200
    finally:
        connection.close()


def test_http_inference_passes_through_the_front(front) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{front.port}")
    try:
        names = IMAGE_NAMES[:3]
        tensor = httpclient.InferInput(contract.IMAGE_INPUT, [len(names), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([image_bytes(n) for n in names], dtype=np.object_).reshape(-1, 1),
                                   binary_data=True)
        features = client.infer(contract.ENSEMBLE_MODEL, [tensor]).as_numpy(contract.EMBEDDING_OUTPUT)
    finally:
        client.close()
    expected = golden_features("tiny-vit-b32")
    assert_features_match(features, np.stack([expected[n] for n in names]))


def test_chunked_request_body_and_expect_100_continue_pass(front) -> None:
    body = b'{"ready": true}'
    chunked = (f"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
               f"\r\n{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    response = raw_exchange(front.port, chunked)
    assert response.startswith(b"HTTP/1.1 200") and contract.ENSEMBLE_MODEL.encode() in response, response[:300]
    expecting = (f"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}"
                 f"\r\nConnection: close\r\n\r\n").encode() + body
    response = raw_exchange(front.port, expecting, wait_for=b"HTTP/1.1 100 Continue\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200") and contract.ENSEMBLE_MODEL.encode() in response, response[:300]


def test_an_oversized_request_head_is_refused_and_the_port_stays_usable(front) -> None:
    response = raw_exchange(front.port, b"GET /v2/health/ready HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 431")
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    try:
        assert get(connection, "/v2/health/ready")[0] == 200
    finally:
        connection.close()


def test_a_taken_port_fails_at_start(front) -> None:
    with pytest.raises(OSError):
        HttpFront("127.0.0.1", front.port, front.upstream_port).start()
