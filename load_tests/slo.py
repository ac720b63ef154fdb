"""Check a locust run against a service-level objective: no more than N failures, p99 under a bound.

    python -m load_tests.slo out/loadtest/locust --max-failures 0 --p99-ms 2000

Reads locust's output for the prefix given to `--csv` (and `--json-file`). The JSON is preferred:
locust writes it once, at shutdown, with the final numbers, while the CSV is rewritten every second
and can miss the last second of the run. Exits 1 when the objective is broken, 2 when there is
nothing to read.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from measure import locust_output


@dataclass(frozen=True)
class LoadSummary:
    """All request types of one locust run, aggregated."""

    requests: int
    failures: int
    p99_ms: float
    source: Path


def summary_from_json(prefix: Path) -> LoadSummary:
    """locust's `--json-file` output: one entry per request name, with a response-time histogram."""
    entries = locust_output.stats(prefix)
    return LoadSummary(
        requests=sum(int(e["num_requests"]) for e in entries),
        failures=sum(int(e["num_failures"]) for e in entries),
        p99_ms=locust_output.histogram_percentile(locust_output.histogram(entries), 0.99),
        source=Path(f"{prefix}.json"),
    )


def summary_from_csv(prefix: Path) -> LoadSummary:
    """The `Aggregated` row of locust's `<prefix>_stats.csv`."""
    row = locust_output.aggregated(prefix)
    if row is None:
        raise ValueError(f"{prefix}_stats.csv: no Aggregated row")
    p99 = row["99%"]
    return LoadSummary(requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                       p99_ms=0.0 if p99 in ("", "N/A") else float(p99), source=Path(f"{prefix}_stats.csv"))


def read_summary(prefix: Path) -> LoadSummary:
    if Path(f"{prefix}.json").is_file():
        return summary_from_json(prefix)
    if Path(f"{prefix}_stats.csv").is_file():
        return summary_from_csv(prefix)
    raise FileNotFoundError(f"no locust results at {prefix}.json or {prefix}_stats.csv")


def failure_messages(prefix: Path, limit: int = 5) -> list[str]:
    """The first distinct failures locust recorded (`<prefix>_failures.csv`), with their counts."""
    return [f"{row['Occurrences']}x {row['Name']}: {row['Error']}" for row in locust_output.failures(prefix)[:limit]]


def violations(summary: LoadSummary, max_failures: int, p99_ms: float) -> list[str]:
    """Why the run breaks the objective; empty when it holds."""
    broken = []
    if summary.requests == 0:
        broken.append("no requests were made")
    if summary.failures > max_failures:
        broken.append(f"{summary.failures} failed request(s), at most {max_failures} allowed")
    if summary.requests and summary.p99_ms > p99_ms:
        broken.append(f"p99 latency {summary.p99_ms:.0f} ms is over the bound of {p99_ms:g} ms")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.slo", description=__doc__.split("\n")[0])
    parser.add_argument("prefix", type=Path, help="the prefix given to locust's --csv (and --json-file)")
    parser.add_argument("--max-failures", type=int, default=0)
    parser.add_argument("--p99-ms", type=float, required=True, help="bound on the 99th percentile latency")
    args = parser.parse_args(argv)
    try:
        summary = read_summary(args.prefix)
    except (OSError, ValueError, KeyError) as error:
        print(f"SLO check: cannot read results: {error}", file=sys.stderr)
        return 2
    print(f"SLO check ({summary.source}): {summary.requests} requests, {summary.failures} failures, "
          f"p99 {summary.p99_ms:.0f} ms (bound {args.p99_ms:g} ms, at most {args.max_failures} failures)")
    for message in failure_messages(args.prefix):
        print(f"  failure: {message}")
    broken = violations(summary, args.max_failures, args.p99_ms)
    for reason in broken:
        print(f"SLO BROKEN: {reason}", file=sys.stderr)
    if not broken:
        print("SLO met")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
