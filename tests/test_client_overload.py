"""Queue-full rejections (Triton's "Exceeds maximum queue size") are retried with backoff until they succeed."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from clip_triton import ClipClient
from client_support import distinct_images
from conftest import export_golden, running_server

pytestmark = pytest.mark.server


def test_queue_full_rejections_turn_into_eventual_success(vit_server, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="clip_triton.client")
    images = distinct_images(160, seed=31)
    with ClipClient(vit_server.grpc_url) as client:
        expected = client.encode(images)
    repository = export_golden(tmp_path / "repository", "tiny-vit-b32", max_queue_size=1)
    with running_server(repository) as server, ClipClient(server.grpc_url, retry_deadline=120) as client:
        features = client.encode(images, batch_size=1, concurrency=16)
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried, "the server never rejected a request: the test proved nothing"
    assert any("UNAVAILABLE" in m and "Exceeds maximum queue size" in m for m in retried), retried[:5]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
