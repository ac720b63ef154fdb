"""The figures a locust run leaves behind, read back: the one reader of locust's output files.

For a prefix P given to `--csv P --json-file P`: `P.json` (per request name, written once at shutdown,
with the response-time histogram), `P_failures.csv` (each distinct error and how often it occurred),
`P_stats_history.csv` (cumulative counts once a second; per request name with `--csv-full-history`)
and `P_stats.csv`. The CSVs are rewritten every second while locust runs, so final totals come from
the JSON. Locust keeps response times rounded (to 1 ms below 100 ms, 10 ms below 1 s, 100 ms below
10 s), so percentiles read here carry that rounding; maxima are exact.
"""
from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path
from typing import Iterable

Histogram = dict[float, int]


def stats(prefix: Path) -> list[dict]:
    """`P.json`: one entry per request name (num_requests, num_failures, max_response_time, response_times...)."""
    return json.loads(Path(f"{prefix}.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def failures(prefix: Path) -> list[dict[str, str]]:
    """`P_failures.csv`: Method, Name, Error, Occurrences per distinct error."""
    return _rows(Path(f"{prefix}_failures.csv"))


def history(prefix: Path) -> list[dict[str, str]]:
    """`P_stats_history.csv`: Timestamp, User Count, Name, Total Request Count, Total Failure Count, ..."""
    return _rows(Path(f"{prefix}_stats_history.csv"))


def aggregated(prefix: Path) -> dict[str, str] | None:
    """The last `Aggregated` row of `P_stats.csv`."""
    rows = [row for row in _rows(Path(f"{prefix}_stats.csv")) if row["Name"] == "Aggregated"]
    return rows[-1] if rows else None


def histogram(entries: Iterable[dict]) -> Histogram:
    """The response-time histograms of some entries (ms -> count), merged."""
    merged: Histogram = {}
    for entry in entries:
        for response_time, count in entry["response_times"].items():
            merged[float(response_time)] = merged.get(float(response_time), 0) + int(count)
    return merged


def histogram_percentile(response_times: Histogram, fraction: float) -> float:
    """The smallest recorded response time that `fraction` of the requests did not exceed (0 when empty)."""
    total = sum(response_times.values())
    if total == 0:
        return 0.0
    needed, seen = fraction * total, 0
    for response_time in sorted(response_times):
        seen += response_times[response_time]
        if seen >= needed:
            return float(response_time)
    return float(max(response_times))


def percentile(entries: Iterable[dict], fraction: float) -> float | None:
    """`histogram_percentile` over some entries, None when they hold no request."""
    merged = histogram(entries)
    return histogram_percentile(merged, fraction) if merged else None


def error_text(error: str) -> str:
    """The message inside a recorded error: locust writes `repr(exception)`, e.g.
    `RequestFailed('[StatusCode.UNAVAILABLE] Exceeds maximum queue size')` -> `Exceeds maximum queue size`."""
    match = re.fullmatch(r"\w+\((.*)\)", error.strip(), flags=re.DOTALL)
    if match:
        try:
            error = str(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            pass
    return re.sub(r"^\[StatusCode\.\w+\]\s*", "", error)
