"""Replicas behind one name (issue 16): gRPC's own resolver and round_robin balancing instead of a hand-made
address snapshot. A headless Service's DNS name cannot be faked here, so the balancing is proven with gRPC's
static `ipv4:` target (two real servers behind one target) and the `dns:///` resolver with a name this
machine resolves; failover across URLs stays (test_client_connection.py)."""
from __future__ import annotations

import asyncio

import pytest

from clip_triton import AsyncClipClient, ClipClient
from clip_triton.connection import ConnectionOptions
from clip_triton.errors import InvalidInputError
from client_support import distinct_images, preprocess_stats
from conftest import assert_features_match, running_server

pytestmark = pytest.mark.server


def test_round_robin_spreads_requests_over_every_address_of_one_target(vit_server, vit_repository) -> None:
    images = distinct_images(64, seed=31)
    with ClipClient(vit_server.grpc_url) as single:
        reference = single.encode(images, batch_size=4)
    with running_server(vit_repository) as second:
        ports = [url.rsplit(":", 1)[1] for url in (vit_server.grpc_url, second.grpc_url)]
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        before = [preprocess_stats(url)[0] for url in (vit_server.grpc_url, second.grpc_url)]
        with ClipClient(target, load_balancing="round_robin") as client:
            assert_features_match(client.encode(images, batch_size=4, concurrency=2), reference)

        async def scenario():
            async with AsyncClipClient(target, load_balancing="round_robin") as client:
                return await client.encode(images, batch_size=4, concurrency=2)

        assert_features_match(asyncio.run(scenario()), reference)
        served = [preprocess_stats(url)[0] - b for url, b in zip((vit_server.grpc_url, second.grpc_url), before)]
    assert sum(served) == 2 * len(images) and min(served) >= len(images) // 2, served  # both took a fair share


def test_a_dns_target_resolves_through_grpcs_resolver(vit_server) -> None:
    port = vit_server.grpc_url.rsplit(":", 1)[1]
    images = distinct_images(8, seed=32)
    with ClipClient(vit_server.grpc_url) as single:
        reference = single.encode(images)
    with ClipClient(f"dns:///127.0.0.1:{port}", load_balancing="round_robin") as client:
        assert_features_match(client.encode(images), reference)


def test_targets_and_balancing_options_are_checked() -> None:
    options = ConnectionOptions(urls=("dns:///clip-triton-headless.clip-triton.svc:8001",), load_balancing="round_robin")
    args = dict(options.channel_args())
    assert args["grpc.lb_policy_name"] == "round_robin" and args["grpc.dns_min_time_between_resolutions_ms"] <= 1000
    assert "grpc.lb_policy_name" not in dict(ConnectionOptions(urls=("h:1",)).channel_args())
    with pytest.raises(InvalidInputError, match="without a scheme"):
        ConnectionOptions(urls=("http://h:8001",))
    with pytest.raises(InvalidInputError, match="load_balancing"):
        ConnectionOptions(urls=("h:1",), load_balancing="random")
