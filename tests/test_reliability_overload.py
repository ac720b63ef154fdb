"""Overload against the real server (issue 5, "Overload"): with bounded queues, load far beyond capacity is
refused at once with UNAVAILABLE ("Exceeds maximum queue size") while accepted requests complete, and the
server serves normally as soon as the load eases. Latency figures go to `make overload-report`, not here.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import IMAGE_NAMES, ROOT, assert_features_match, export_golden, golden_features, image_bytes, running_server
from test_server import infer

sys.path.insert(0, str(ROOT))
from tools.overload import drive, summarise  # noqa: E402

pytestmark = pytest.mark.server


def test_load_beyond_capacity_is_rejected_at_once_and_accepted_requests_complete(tmp_path: Path) -> None:
    images = [image_bytes(name) for name in IMAGE_NAMES[:4]]
    with running_server(export_golden(tmp_path, "tiny-vit-b32", max_queue_size=2)) as server:
        outcomes = drive(server.grpc_url, images, concurrency=32, duration_s=3.0, max_requests=3000)
        assert server.is_ready()
        after = infer(server.grpc_url, [image_bytes("coffee.png")])  # load eased: served normally
    summary = summarise(outcomes, 3.0)
    print(summary)
    assert set(summary["statuses"]) == {"OK", "UNAVAILABLE"}, summary["statuses"]
    assert summary["statuses"]["OK"] > 0 and summary["statuses"]["UNAVAILABLE"] > 0, summary["statuses"]
    assert all("Exceeds maximum queue size" in o.message for o in outcomes if o.status == "UNAVAILABLE")
    assert_features_match(after, golden_features("tiny-vit-b32")["coffee.png"][None])


def test_an_unbounded_queue_never_rejects(tmp_path: Path) -> None:
    """The control for the test above: the same load against max_queue_size=0 (unbounded) is all accepted,
    so the rejections there come from the queue policy, not from something else breaking."""
    images = [image_bytes(name) for name in IMAGE_NAMES[:4]]
    with running_server(export_golden(tmp_path, "tiny-vit-b32", max_queue_size=0)) as server:
        outcomes = drive(server.grpc_url, images, concurrency=32, duration_s=2.0, max_requests=3000)
    assert {o.status for o in outcomes} == {"OK"}
