"""`make soak`: steady load for a bounded time, sampling errors and server memory, with a trend line.

Locust drives the load (load_tests/locustfile.py, closed-loop users): good images, plus a known-bad image
every tenth request of each user so the error path is soaked too (its refusal is expected; anything else
is an error). While locust runs, the resident memory of tritonserver plus its backend stubs is sampled
here (from /proc) every interval; requests served, refusals and errors at each sample come from locust's
per-second statistics history, the final counts from its JSON. The report (Markdown + CSV) gives the
least-squares slope of memory after a warm-up, and the run fails (exit 1) on any error or when the trend
would grow memory by more than the allowed amount.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from load_tests import headless
from load_tests.request_names import BAD_IMAGE_REFUSED
from measure import locust_output
from measure.images import image_paths

BAD_IMAGE_EVERY = 10
MiB = 2**20


@dataclass
class Counters:
    ok: int = 0
    refused_as_expected: int = 0
    errors: int = 0
    last_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    elapsed_s: float
    requests_ok: int
    refused_as_expected: int
    errors: int
    rss_bytes: int


def counts(totals: Iterable[tuple[str, int, int]]) -> tuple[int, int, int]:
    """(good requests served, bad images refused as expected, errors) from (name, requests, failures) per name."""
    ok = refused = errors = 0
    for name, requests, failures in totals:
        if name == "Aggregated":
            continue
        errors += failures
        if name == BAD_IMAGE_REFUSED:
            refused += requests - failures
        else:
            ok += requests - failures
    return ok, refused, errors


def counts_at(history: list[dict[str, str]], when: float) -> tuple[int, int, int]:
    """`counts` as locust's statistics history last recorded them at or before `when` (time.time())."""
    latest: dict[str, tuple[str, int, int]] = {}
    for row in history:
        if int(row["Timestamp"]) <= when:
            latest[row["Name"]] = (row["Name"], int(row["Total Request Count"]), int(row["Total Failure Count"]))
    return counts(latest.values())


def sample_memory(server, process, interval_s: float, deadline: float) -> list[tuple[float, int]]:
    """(time.time(), server RSS) every `interval_s` while the locust `process` runs, and once after it ends."""
    samples = []
    while process.poll() is None and time.monotonic() < deadline:
        samples.append((time.time(), server.rss_bytes()))
        try:
            process.wait(interval_s)
        except subprocess.TimeoutExpired:
            pass  # still running: sample again
    return samples


def run_soak(server, images: Path, seconds: float, interval_s: float, concurrency: int, images_per_request: int,
             prefix: Path) -> tuple[list[Sample], Counters]:
    """Load `server` with locust for `seconds`, sampling every `interval_s`; the load stops before returning."""
    command = headless.locust_command(server.grpc_url, prefix, users=concurrency, run_time=f"{max(1, round(seconds))}s",
                                      images=images, images_per_request=images_per_request,
                                      options=["--bad-image-every", str(BAD_IMAGE_EVERY), "--csv-full-history"])
    log = Path(f"{prefix}.log")
    process = headless.start(command, log)
    deadline = time.monotonic() + seconds + headless.STOP_TIMEOUT_S + 120
    try:
        memory = sample_memory(server, process, interval_s, deadline)
    finally:
        headless.finish(process, log, timeout_s=max(0.0, deadline - time.monotonic()))
    memory.append((time.time(), server.rss_bytes()))
    return samples_from(prefix, memory)


def samples_from(prefix: Path, memory: list[tuple[float, int]]) -> tuple[list[Sample], Counters]:
    """Memory samples joined with locust's counts; elapsed time counts from the last sample before the first request."""
    entries, history = locust_output.stats(prefix), locust_output.history(prefix)
    first_request = min((float(entry["start_time"]) for entry in entries), default=memory[0][0])
    origin = max((when for when, _ in memory if when <= first_request), default=memory[0][0])
    steady = [(when, rss) for when, rss in memory if when >= origin]
    final = counts((e["name"], e["num_requests"], e["num_failures"]) for e in entries)
    samples = [Sample(when - origin, *counts_at(history, when), rss) for when, rss in steady[:-1]]
    samples.append(Sample(steady[-1][0] - origin, *final, steady[-1][1]))
    errors = [f"{row['Occurrences']}x {row['Name']}: {locust_output.error_text(row['Error'])}"
              for row in locust_output.failures(prefix)]
    return samples, Counters(*final, last_errors=errors[-5:])


def trend(samples: list[Sample], warmup_fraction: float = 0.2) -> dict:
    """Least-squares memory slope after the warm-up, and the growth it predicts over that window."""
    start = samples[0].elapsed_s + warmup_fraction * (samples[-1].elapsed_s - samples[0].elapsed_s)
    steady = [s for s in samples if s.elapsed_s >= start]
    t = np.array([s.elapsed_s for s in steady])
    rss = np.array([s.rss_bytes for s in steady], dtype=np.float64)
    slope = float(np.polyfit(t, rss, 1)[0]) if len(steady) >= 2 and np.ptp(t) > 0 else 0.0
    return {"window_s": float(np.ptp(t)) if len(t) else 0.0, "samples": len(steady),
            "slope_mib_per_hour": slope * 3600 / MiB, "predicted_growth_mib": slope * float(np.ptp(t)) / MiB,
            "rss_first_mib": rss[0] / MiB, "rss_last_mib": rss[-1] / MiB, "rss_max_mib": rss.max() / MiB}


def write_report(output: Path, samples: list[Sample], counters: Counters, result: dict, setup: str,
                 passed: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "soak.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["elapsed_s", "requests_ok", "refused_as_expected", "errors", "rss_mib"])
        for s in samples:
            writer.writerow([f"{s.elapsed_s:.1f}", s.requests_ok, s.refused_as_expected, s.errors, f"{s.rss_bytes / MiB:.1f}"])
    duration = samples[-1].elapsed_s
    lines = [
        "# Soak report", "", setup, "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}** - {counters.errors} error(s), memory trend "
        f"{result['slope_mib_per_hour']:+.2f} MiB/hour ({result['predicted_growth_mib']:+.2f} MiB predicted over the "
        f"{result['window_s']:.0f} s after warm-up).", "",
        "| figure | value |", "|---|---|",
        f"| duration | {duration:.0f} s |",
        f"| requests served (good images) | {counters.ok} ({counters.ok / max(duration, 1e-9):.1f}/s) |",
        f"| bad images refused as expected | {counters.refused_as_expected} |",
        f"| errors | {counters.errors} |",
        f"| server RSS (tritonserver + stubs) first / last / max after warm-up | {result['rss_first_mib']:.1f} / "
        f"{result['rss_last_mib']:.1f} / {result['rss_max_mib']:.1f} MiB |",
        f"| memory slope after warm-up | {result['slope_mib_per_hour']:+.2f} MiB/hour |", "",
        "Samples (elapsed s, requests ok, RSS MiB):", "",
    ]
    step = max(1, len(samples) // 20)
    lines += [f"- {s.elapsed_s:7.1f} s  {s.requests_ok:8d} ok  {s.rss_bytes / MiB:8.1f} MiB" for s in samples[::step]]
    if counters.last_errors:
        lines += ["", "Last errors:", *[f"- `{e}`" for e in counters.last_errors]]
    (output / "soak.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from clip_triton_serve import local_server
    from tools.local_server import SHARED_IMAGES, exported_tiny_vit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples (default: 1/60 of the run)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--max-growth-mib", type=float, default=16.0,
                        help="fail when the trend predicts more growth than this over the run after warm-up")
    parser.add_argument("--output", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    interval = args.interval or max(1.0, args.seconds / 60)

    per_request = min(4, len(image_paths(args.images)))
    with exported_tiny_vit() as repository, local_server(repository) as server:
        samples, counters = run_soak(server, args.images, args.seconds, interval, args.concurrency, per_request,
                                     args.output / "locust" / "soak")
    result = trend(samples)
    passed = counters.errors == 0 and counters.ok > 0 and result["predicted_growth_mib"] <= args.max_growth_mib
    setup = (f"Tiny ViT-B/32 (ONNX, CPU target) served by tritonserver 2.51 on loopback; {args.concurrency} closed-loop "
             f"locust users sending {per_request} images per request, every tenth request of each a bad image; "
             f"sampled every {interval:.1f} s for {args.seconds:.0f} s; the first 20% is warm-up. "
             f"{os.cpu_count()} CPU cores.")
    write_report(args.output, samples, counters, result, setup, passed)
    print((args.output / "soak.md").read_text())
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
