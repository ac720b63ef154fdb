"""Overload against the real server (issue 5, "Overload"): with bounded queues, load far beyond capacity is
refused at once with UNAVAILABLE ("Exceeds maximum queue size") while accepted requests complete, and the
server serves normally as soon as the load eases. The traffic is `make overload-report`'s own: locust with
the phases of load_tests/shapes.py, figures read from locust's output. Latency figures go to the report,
not here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import IMAGES, assert_features_match, export_golden, golden_features, image_bytes, running_server
from load_tests.phases import Phase
from measure import locust_output
from test_server import infer
from tools import overload

pytestmark = pytest.mark.server


def test_load_beyond_capacity_is_rejected_at_once_and_accepted_requests_complete(tmp_path: Path) -> None:
    prefix = tmp_path / "overload"
    with running_server(export_golden(tmp_path / "repository", "tiny-vit-b32", max_queue_size=2)) as server:
        results = overload.run_phases(server.grpc_url, IMAGES, [Phase("overload", 32, 3.0)], 4, prefix)
        assert server.is_ready()
        after = infer(server.grpc_url, [image_bytes("coffee.png")])  # load eased: served normally
    summary = results["overload"]
    print(summary)
    assert set(summary["statuses"]) == {"OK", "UNAVAILABLE"}, summary["statuses"]
    assert summary["statuses"]["OK"] > 0 and summary["statuses"]["UNAVAILABLE"] > 0, summary["statuses"]
    assert summary["accepted_max_ms"] > 0 and summary["rejected_p50_ms"] is not None
    rejections = [row for row in locust_output.failures(prefix) if "rejected" in row["Name"]]
    assert rejections and all("Exceeds maximum queue size" in row["Error"] for row in rejections), rejections
    assert_features_match(after, golden_features("tiny-vit-b32")["coffee.png"][None])


def test_an_unbounded_queue_never_rejects(tmp_path: Path) -> None:
    """The control for the test above: the same load against max_queue_size=0 (unbounded) is all accepted,
    so the rejections there come from the queue policy, not from something else breaking."""
    with running_server(export_golden(tmp_path / "repository", "tiny-vit-b32", max_queue_size=0)) as server:
        results = overload.run_phases(server.grpc_url, IMAGES, [Phase("overload", 32, 2.0)], 4, tmp_path / "load")
    assert set(results["overload"]["statuses"]) == {"OK"}, results["overload"]
    assert results["overload"]["requests"] > 0
