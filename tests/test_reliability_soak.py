"""A few-second smoke of `make soak` (issue 5, "Faults"): the tool runs end to end against the real server
(locust drives the load, the tool samples the server's memory), serves steadily with zero errors, refuses
the known-bad images as expected, and writes its Markdown and CSV reports. The 10-minute run and its memory
verdict are `make soak`."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from load_tests.request_names import BAD_IMAGE_REFUSED
from tools import soak

pytestmark = pytest.mark.server


def test_soak_smoke_writes_reports_with_zero_errors(tmp_path: Path) -> None:
    # A generous growth allowance: a few seconds say nothing about a trend, only that the tool works.
    code = soak.main(["--seconds", "5", "--interval", "0.5", "--max-growth-mib", "1024", "--output", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "soak.csv")))
    report = (tmp_path / "soak.md").read_text()
    assert code == 0, report
    assert len(rows) >= 6 and int(rows[-1]["requests_ok"]) > 0 and int(rows[-1]["refused_as_expected"]) > 0
    assert all(row["errors"] == "0" for row in rows)
    assert [int(row["requests_ok"]) for row in rows] == sorted(int(row["requests_ok"]) for row in rows)
    assert all(float(row["rss_mib"]) > 50 for row in rows), "RSS must include tritonserver and its stubs"
    assert "Verdict: PASS" in report and "MiB/hour" in report


def test_trend_sees_growth() -> None:
    """The slope is real: a sampled line growing 1 MiB per 10 s reads as 360 MiB/hour."""
    samples = [soak.Sample(t, 0, 0, 0, 100 * soak.MiB + int(t * soak.MiB / 10)) for t in range(0, 101, 5)]
    result = soak.trend(samples)
    assert abs(result["slope_mib_per_hour"] - 360) < 1
    assert abs(result["predicted_growth_mib"] - 8) < 0.1


def test_counts_split_served_refused_and_errors_by_request_name() -> None:
    """Locust's statistics history, per request name, read back as the soak's counters at a moment."""
    history = [
        {"Timestamp": "100", "Name": "clip_image_encoder [4 image(s)]", "Total Request Count": "9", "Total Failure Count": "0"},
        {"Timestamp": "100", "Name": BAD_IMAGE_REFUSED, "Total Request Count": "1", "Total Failure Count": "0"},
        {"Timestamp": "101", "Name": "clip_image_encoder [4 image(s)]", "Total Request Count": "18", "Total Failure Count": "1"},
        {"Timestamp": "101", "Name": BAD_IMAGE_REFUSED, "Total Request Count": "2", "Total Failure Count": "1"},
        {"Timestamp": "101", "Name": "Aggregated", "Total Request Count": "20", "Total Failure Count": "2"},
    ]
    assert soak.counts_at(history, 99.5) == (0, 0, 0)
    assert soak.counts_at(history, 100.7) == (9, 1, 0)
    assert soak.counts_at(history, 101.2) == (17, 1, 2)
