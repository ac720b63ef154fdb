"""Drive the ensemble far beyond capacity for a bounded time and summarise what happened, phase by phase.

Locust runs the traffic (load_tests/locustfile.py with the phases of load_tests/shapes.py): closed-loop
users send requests back to back, and each request is named after its phase and outcome
("overload: accepted", "overload: rejected (UNAVAILABLE)"), so every figure of a phase (counts per
status, accepted and rejected latency percentiles, rejection messages) is read from locust's output.
Used by the overload test (a few seconds) and by `make overload-report` (longer, figures for the README).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from load_tests import headless
from load_tests.phases import Phase
from load_tests.request_names import outcome
from measure import locust_output


def plan(overload_concurrency: int, seconds: float) -> list[Phase]:
    """Baseline (1 user), far beyond capacity, then eased load again."""
    return [Phase("baseline", 1, seconds / 2), Phase("overload", overload_concurrency, seconds),
            Phase("eased", 1, seconds / 2)]


def run_phases(url: str, images: Path, phases: Sequence[Phase], images_per_request: int, prefix: Path) -> dict[str, dict]:
    """Locust through `phases` against `url`; the summary of each phase, read from its output at `prefix`."""
    command = headless.locust_command(url, prefix, phases=phases, images=images,
                                      images_per_request=images_per_request, options=["--name-by-outcome"])
    log = Path(f"{prefix}.log")
    headless.finish(headless.start(command, log), log, timeout_s=sum(phase.seconds for phase in phases) + 120)
    entries, failures = locust_output.stats(prefix), locust_output.failures(prefix)
    return {phase.name: summarise(phase.name, entries, failures, phase.seconds) for phase in phases}


def _outcome(name: str) -> tuple[str | None, str | None]:
    return outcome(name) or (None, None)


def summarise(phase: str, entries: list[dict], failures: list[dict], duration_s: float) -> dict:
    """Counts per status and latency percentiles (ms) of one phase's accepted and rejected requests."""
    accepted, rejected, statuses = [], [], Counter()
    for entry in entries:
        label, status = _outcome(entry["name"])
        if label != phase:
            continue
        if status == "OK":
            accepted.append(entry)
            statuses["OK"] += entry["num_requests"] - entry["num_failures"]
            statuses["WRONG_OUTPUT"] += entry["num_failures"]  # accepted, but not one row per image
        else:
            rejected.append(entry)
            statuses[status] += entry["num_requests"]
    return {
        "requests": sum(entry["num_requests"] for entry in accepted + rejected),
        "duration_s": duration_s,
        "statuses": dict(+statuses),
        "messages": sorted({locust_output.error_text(row["Error"]) for row in failures
                            if _outcome(row["Name"])[0] == phase})[:5],
        "accepted_per_s": statuses["OK"] / duration_s,
        "accepted_p50_ms": locust_output.percentile(accepted, 0.50),
        "accepted_p99_ms": locust_output.percentile(accepted, 0.99),
        "accepted_max_ms": max((entry["max_response_time"] for entry in accepted), default=None),
        "rejected_p50_ms": locust_output.percentile(rejected, 0.50),
        "rejected_p99_ms": locust_output.percentile(rejected, 0.99),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(results: dict[str, dict], setup: str) -> str:
    lines = [f"# Overload report\n\n{setup}\n",
             "| phase | requests | statuses | accepted/s | accepted p50 ms | accepted p99 ms | accepted max ms "
             "| rejected p50 ms | rejected p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items()))
        lines.append(f"| {name} | {s['requests']} | {statuses} | {s['accepted_per_s']:.1f} | {_fmt(s['accepted_p50_ms'])} "
                     f"| {_fmt(s['accepted_p99_ms'])} | {_fmt(s['accepted_max_ms'])} | {_fmt(s['rejected_p50_ms'])} "
                     f"| {_fmt(s['rejected_p99_ms'])} |")
    messages = sorted({m for s in results.values() for m in s["messages"]})
    lines += ["", "Rejection messages:", *[f"- `{m}`" for m in messages]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`make overload-report`: the three phases against a freshly exported tiny model; writes .md and .json."""
    from clip_triton_serve import local_server
    from tools.local_server import SHARED_IMAGES, exported_tiny_vit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the overload phase")
    parser.add_argument("--concurrency", type=int, default=64, help="senders during the overload phase")
    parser.add_argument("--max-queue-size", type=int, default=8, help="queue bound of each composing model")
    parser.add_argument("--images-per-request", type=int, default=4)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES, help="folder of images to send")
    parser.add_argument("--output", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)

    phases = plan(args.concurrency, args.seconds)
    with exported_tiny_vit(max_queue_size=args.max_queue_size) as repository, local_server(repository) as server:
        results = run_phases(server.grpc_url, args.images, phases, args.images_per_request,
                             args.output / "locust" / "overload")
    setup = (f"Tiny ViT-B/32 (ONNX, CPU target), `max_queue_size={args.max_queue_size}` per composing model, "
             f"{args.images_per_request} images per request; phases: 1 sender for {args.seconds / 2:.0f} s, "
             f"{args.concurrency} senders for {args.seconds:.0f} s, 1 sender for {args.seconds / 2:.0f} s. "
             f"Closed-loop locust users over gRPC on loopback (locust's response times are rounded to 10 ms above "
             f"100 ms and 100 ms above 1 s); {os.cpu_count()} CPU cores shared with the load generator.")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "overload.json").write_text(json.dumps(results, indent=2))
    (args.output / "overload.md").write_text(markdown(results, setup))
    print(markdown(results, setup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
