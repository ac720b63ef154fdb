"""Connection options against real servers: TLS and mutual TLS with certificates generated here, headers
reaching the server, several URLs with one down, gRPC compression and keepalive."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from clip_triton import AsyncClipClient, ClipClient, RequestFailedError, ServerUnavailableError
from clip_triton_serve import free_port, free_ports
from client_support import distinct_images, golden_rows, image_paths, self_signed_certificate
from conftest import IMAGE_NAMES, assert_features_match, running_server

pytestmark = pytest.mark.server
API_KEY_HEADER = "triton-grpc-protocol-x-api-key"  # Triton prefixes the configured header name over gRPC


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("certificates")
    server_cert, server_key = self_signed_certificate(directory, "server")
    client_cert, client_key = self_signed_certificate(directory, "client")
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key}


def test_tls_connects_with_the_servers_certificate_and_fails_clearly_without(vit_repository, certificates) -> None:
    with running_server(vit_repository, tls_cert=certificates["server_cert"],
                        tls_key=certificates["server_key"]) as server:
        with ClipClient(server.grpc_url, ssl=True, root_certificates=certificates["server_cert"]) as client:
            assert_features_match(client.encode(image_paths()), golden_rows(IMAGE_NAMES))
        with ClipClient(server.grpc_url, retry_deadline=1.0) as plain:
            with pytest.raises(ServerUnavailableError) as raised:
                plain.encode(image_paths()[:1])
        assert server.grpc_url in str(raised.value) and "TLS" in str(raised.value), raised.value
        # Trusting another certificate (not the server's) must fail too.
        with ClipClient(server.grpc_url, root_certificates=certificates["client_cert"], retry_deadline=1.0) as wrong:
            with pytest.raises(ServerUnavailableError, match="TLS"):
                wrong.encode(image_paths()[:1])


def test_mutual_tls_requires_the_client_certificate(vit_repository, certificates) -> None:
    with running_server(vit_repository, tls_cert=certificates["server_cert"], tls_key=certificates["server_key"],
                        tls_client_ca=certificates["client_cert"]) as server:
        with ClipClient(server.grpc_url, root_certificates=certificates["server_cert"],
                        certificate_chain=certificates["client_cert"],
                        private_key=certificates["client_key"]) as client:
            assert_features_match(client.encode(image_paths()), golden_rows(IMAGE_NAMES))
        with ClipClient(server.grpc_url, root_certificates=certificates["server_cert"], retry_deadline=1.0) as anonymous:
            with pytest.raises(ServerUnavailableError):
                anonymous.encode(image_paths()[:1])


def test_headers_reach_the_server(vit_repository) -> None:
    with running_server(vit_repository, extra_args=["--grpc-restricted-protocol=inference:x-api-key=secret"]) as server:
        with ClipClient(server.grpc_url, headers={API_KEY_HEADER: "secret"}) as client:
            assert_features_match(client.encode(image_paths()), golden_rows(IMAGE_NAMES))
        for headers in ({}, {API_KEY_HEADER: "wrong"}):
            with ClipClient(server.grpc_url, headers=headers) as client:
                # RequestFailedError (final), not ServerUnavailableError after a retry deadline.
                with pytest.raises(RequestFailedError, match="restricted"):
                    client.encode(image_paths()[:1])

        async def async_with_header():
            async with AsyncClipClient(server.grpc_url, headers={API_KEY_HEADER: "secret"}) as client:
                return await client.encode(image_paths())

        assert_features_match(asyncio.run(async_with_header()), golden_rows(IMAGE_NAMES))


def test_several_urls_with_one_down_fail_over(vit_server) -> None:
    down = f"127.0.0.1:{free_port()}"
    images = distinct_images(96, seed=3)
    with ClipClient(vit_server.grpc_url) as single:
        reference = single.encode(images, batch_size=8)
    for urls in ([down, vit_server.grpc_url], [vit_server.grpc_url, down]):
        with ClipClient(urls, retry_deadline=10) as client:
            assert client.is_ready()
            assert_features_match(client.encode(images, batch_size=8, concurrency=4), reference)

        async def scenario(urls=urls):
            async with AsyncClipClient(urls, retry_deadline=10) as client:
                return await client.encode(images, batch_size=8, concurrency=4)

        assert_features_match(asyncio.run(scenario()), reference)


def test_all_urls_down_is_one_clear_error() -> None:
    urls = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with ClipClient(urls, retry_deadline=1.0) as client:
        with pytest.raises(ServerUnavailableError, match="Connection refused"):
            client.encode([b"x"])


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compression_and_keepalive_options(vit_server, compression: str) -> None:
    keepalive = grpcclient.KeepAliveOptions(keepalive_time_ms=10_000, keepalive_timeout_ms=5_000)
    with ClipClient(vit_server.grpc_url, compression=compression, keepalive=keepalive) as client:
        assert_features_match(client.encode(image_paths()), golden_rows(IMAGE_NAMES))
