"""`make soak`: steady load for a bounded time, sampling errors and server memory, with a trend line.

The load is closed-loop and steady: good images, plus one known-bad image every tenth request so the
error path is soaked too (its refusal is expected; anything else is an error). Every interval we record
requests served, errors, and the resident memory of tritonserver plus its backend stubs (from /proc).
The report (Markdown + CSV) gives the least-squares slope of memory after a warm-up, and the run fails
(exit 1) on any error or when the trend would grow memory by more than the allowed amount.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

ENSEMBLE = "clip_image_encoder"
BAD_IMAGE = b"this is not an image"
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


def _request(blobs: list[bytes]) -> list[aioclient.InferInput]:
    tensor = aioclient.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return [tensor]


async def _steady_load(url: str, images: list[bytes], concurrency: int, stop: threading.Event,
                       counters: Counters) -> None:
    good, bad = _request(images), _request([BAD_IMAGE])
    client = aioclient.InferenceServerClient(url)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while not stop.is_set():
            sent += 1
            expect_refusal = sent % 10 == 0
            try:
                result = await client.infer(ENSEMBLE, bad if expect_refusal else good, client_timeout=60)
                if expect_refusal or result.as_numpy("EMBEDDING").shape[0] != len(images):
                    counters.errors += 1
                    counters.last_errors = (counters.last_errors + ["bad image accepted or wrong row count"])[-5:]
                else:
                    counters.ok += 1
            except InferenceServerException as error:
                if expect_refusal and str(error.status()).endswith("INVALID_ARGUMENT"):
                    counters.refused_as_expected += 1
                else:
                    counters.errors += 1
                    counters.last_errors = (counters.last_errors + [f"{error.status()}: {error.message()}"])[-5:]

    try:
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    finally:
        await client.close()


def run_soak(server, images: list[bytes], seconds: float, interval_s: float, concurrency: int) -> tuple[list[Sample], Counters]:
    """Load `server` for `seconds`, sampling every `interval_s`; the load stops before returning."""
    counters, stop = Counters(), threading.Event()
    load = threading.Thread(target=lambda: asyncio.run(_steady_load(server.grpc_url, images, concurrency, stop, counters)),
                            daemon=True)
    samples: list[Sample] = []
    begin = time.monotonic()
    load.start()
    try:
        while True:
            elapsed = time.monotonic() - begin
            samples.append(Sample(elapsed, counters.ok, counters.refused_as_expected, counters.errors, server.rss_bytes()))
            if elapsed >= seconds or not load.is_alive():
                break
            time.sleep(min(interval_s, max(0.0, seconds - elapsed)))
    finally:
        stop.set()
        load.join(120)
    return samples, counters


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
    from clip_triton.server import local_server
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

    images = [p.read_bytes() for p in sorted(args.images.iterdir()) if p.is_file()][:4]
    with exported_tiny_vit() as repository, local_server(repository) as server:
        samples, counters = run_soak(server, images, args.seconds, interval, args.concurrency)
    result = trend(samples)
    passed = counters.errors == 0 and counters.ok > 0 and result["predicted_growth_mib"] <= args.max_growth_mib
    setup = (f"Tiny ViT-B/32 (ONNX, CPU target) served by tritonserver 2.51 on loopback; {args.concurrency} closed-loop "
             f"senders of {len(images)} images per request, every tenth request a bad image; sampled every "
             f"{interval:.1f} s for {args.seconds:.0f} s; the first 20% is warm-up. {os.cpu_count()} CPU cores.")
    write_report(args.output, samples, counters, result, setup, passed)
    print((args.output / "soak.md").read_text())
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
