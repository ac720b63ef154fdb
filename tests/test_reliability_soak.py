"""A few-second smoke of `make soak` (issue 5, "Faults"): the tool runs end to end against the real server,
serves steadily with zero errors, and writes its Markdown and CSV reports. The 10-minute run and its memory
verdict are `make soak`."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from tools import soak  # noqa: E402

pytestmark = pytest.mark.server


def test_soak_smoke_writes_reports_with_zero_errors(tmp_path: Path) -> None:
    # A generous growth allowance: a few seconds say nothing about a trend, only that the tool works.
    code = soak.main(["--seconds", "5", "--interval", "0.5", "--max-growth-mib", "1024", "--output", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "soak.csv")))
    report = (tmp_path / "soak.md").read_text()
    assert code == 0, report
    assert len(rows) >= 6 and int(rows[-1]["requests_ok"]) > 0 and int(rows[-1]["refused_as_expected"]) > 0
    assert all(row["errors"] == "0" for row in rows)
    assert all(float(row["rss_mib"]) > 50 for row in rows), "RSS must include tritonserver and its stubs"
    assert "Verdict: PASS" in report and "MiB/hour" in report


def test_trend_sees_growth() -> None:
    """The slope is real: a sampled line growing 1 MiB per 10 s reads as 360 MiB/hour."""
    samples = [soak.Sample(t, 0, 0, 0, 100 * soak.MiB + int(t * soak.MiB / 10)) for t in range(0, 101, 5)]
    result = soak.trend(samples)
    assert abs(result["slope_mib_per_hour"] - 360) < 1
    assert abs(result["predicted_growth_mib"] - 8) < 0.1
