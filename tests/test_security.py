"""Security against the real server (issue 5, "Security"): no remote model control, admin protocols behind a
header key over gRPC and HTTP, a key generated whenever `serve` is exposed beyond loopback.

Elsewhere: `serve` binds 127.0.0.1 by default (test_cli.py), state dicts load weights-only and a pickle
with code is refused (test_checkpoint.py), gRPC over TLS (test_client_faults.py, with the client's TLS).
"""
from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clip_triton import contract
from clip_triton_cli.serve_command import server_options as _server_options
from clip_triton_serve import TritonServer
from clip_triton_serve.options import ADMIN_HEADER
from conftest import assert_features_match, golden_features, image_bytes, running_server
from test_server import infer

pytestmark = pytest.mark.server
ADMIN_KEY = "test-admin-key-4f1c"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton's prefix for restricted gRPC headers

# One call per admin protocol: (protocol, gRPC call, HTTP method, HTTP path).
ADMIN_CALLS: list[tuple[str, Callable, str, str]] = [
    ("model-repository", lambda c, h: c.get_model_repository_index(headers=h), "POST", "/v2/repository/index"),
    ("shared-memory", lambda c, h: c.get_system_shared_memory_status(headers=h), "GET", "/v2/systemsharedmemory/status"),
    ("logging", lambda c, h: c.get_log_settings(headers=h), "GET", "/v2/logging"),
    ("trace", lambda c, h: c.get_trace_settings(headers=h), "GET", "/v2/trace/setting"),
]


@pytest.fixture(scope="module")
def guarded_server(vit_repository: Path) -> Iterator[TritonServer]:
    with running_server(vit_repository, admin_key=ADMIN_KEY) as server:
        yield server


def http(server: TritonServer, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.http_url}{path}", method=method, headers=headers or {},
                                     data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize("protocol, call, method, path", ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
def test_admin_protocols_need_the_key_over_grpc(guarded_server: TritonServer, protocol: str, call: Callable,
                                                method: str, path: str) -> None:
    client = grpcclient.InferenceServerClient(guarded_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            call(client, None)
        with pytest.raises(InferenceServerException):
            call(client, {GRPC_ADMIN_HEADER: "wrong-key"})
        allowed = call(client, {GRPC_ADMIN_HEADER: ADMIN_KEY})
    finally:
        client.close()
    assert "restricted" in refused.value.message() and GRPC_ADMIN_HEADER in refused.value.message(), refused.value
    assert allowed is not None


@pytest.mark.parametrize("protocol, call, method, path", ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
def test_admin_protocols_need_the_key_over_http(guarded_server: TritonServer, protocol: str, call: Callable,
                                                method: str, path: str) -> None:
    refused, body = http(guarded_server, method, path)
    wrong, _ = http(guarded_server, method, path, {ADMIN_HEADER: "wrong-key"})
    allowed, _ = http(guarded_server, method, path, {ADMIN_HEADER: ADMIN_KEY})
    assert refused == wrong == 403 and "restricted" in body, (refused, wrong, body)
    assert allowed == 200


def test_inference_and_health_stay_open_without_the_key(guarded_server: TritonServer) -> None:
    assert guarded_server.is_ready()
    features = infer(guarded_server.grpc_url, [image_bytes("horse.png")])
    assert_features_match(features, golden_features("tiny-vit-b32")["horse.png"][None])


def test_model_control_is_off_even_with_the_admin_key(guarded_server: TritonServer) -> None:
    """Mode NONE: nobody, key or not, loads or unloads models remotely (so no request can make the server
    load a checkpoint of its choosing)."""
    client = grpcclient.InferenceServerClient(guarded_server.grpc_url)
    headers = {GRPC_ADMIN_HEADER: ADMIN_KEY}
    try:
        for action in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException) as refused:
                action(contract.VISUAL_MODEL, headers=headers)
            assert "not allowed" in refused.value.message(), refused.value.message()
        assert client.is_model_ready(contract.VISUAL_MODEL)
    finally:
        client.close()
    for verb in ("unload", "load"):
        status, body = http(guarded_server, "POST", f"/v2/repository/models/{contract.VISUAL_MODEL}/{verb}",
                            {ADMIN_HEADER: ADMIN_KEY})
        assert status >= 400 and "not allowed" in json.loads(body)["error"], (status, body)
    assert guarded_server.is_ready()


def serve_arguments(host: str, admin_key: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(repository=Path("models"), host=host, grpc_port=8001, http_port=8000,
                              metrics_port=8002, admin_key=admin_key, tls_cert=None, tls_key=None, tls_client_ca=None)


def test_serve_generates_an_admin_key_when_exposed(capsys: pytest.CaptureFixture) -> None:
    exposed = _server_options(serve_arguments("0.0.0.0"))
    printed = capsys.readouterr().out
    assert exposed.admin_key and len(exposed.admin_key) >= 24 and exposed.admin_key in printed
    assert any(arg.startswith("--grpc-restricted-protocol=") for arg in exposed.command(Path("t"), Path("b")))
    assert _server_options(serve_arguments("0.0.0.0", "chosen")).admin_key == "chosen"
    assert _server_options(serve_arguments("127.0.0.1")).admin_key is None  # loopback: open admin, local only
