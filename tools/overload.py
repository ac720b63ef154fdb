"""Drive the ensemble far beyond capacity for a bounded time and summarise what happened.

Closed-loop senders (asyncio, one gRPC channel) send requests back to back until the time or count
budget runs out, recording the status and latency of every request. Used by the overload test
(a few seconds) and by `make overload-report` (longer, figures for the README).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

ENSEMBLE = "clip_image_encoder"


@dataclass(frozen=True)
class Outcome:
    started_s: float  # since the run began
    latency_s: float
    status: str  # "OK" or the gRPC status name, e.g. "UNAVAILABLE"
    message: str


def image_request(images: list[bytes]) -> list[aioclient.InferInput]:
    tensor = aioclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return [tensor]


def drive(url: str, images: list[bytes], concurrency: int, duration_s: float,
          max_requests: int = 100_000) -> list[Outcome]:
    """`concurrency` closed-loop senders for at most `duration_s` seconds and `max_requests` requests.

    One asyncio loop and one gRPC channel: cheap enough on the client that the server, not the load
    generator's GIL, is what saturates.
    """
    return asyncio.run(_drive(url, images, concurrency, duration_s, max_requests))


async def _drive(url: str, images: list[bytes], concurrency: int, duration_s: float,
                 max_requests: int) -> list[Outcome]:
    inputs = image_request(images)
    outcomes: list[Outcome] = []
    begin = time.perf_counter()
    deadline = begin + duration_s
    client = aioclient.InferenceServerClient(url)

    async def sender() -> None:
        while time.perf_counter() < deadline and len(outcomes) < max_requests:
            start = time.perf_counter()
            try:
                await client.infer(ENSEMBLE, inputs, client_timeout=30)
                status, message = "OK", ""
            except InferenceServerException as error:
                status = str(error.status()).replace("StatusCode.", "")
                message = error.message()
            end = time.perf_counter()
            outcomes.append(Outcome(start - begin, end - start, status, message))

    try:
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    finally:
        await client.close()
    return sorted(outcomes, key=lambda o: o.started_s)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(outcomes: list[Outcome], duration_s: float) -> dict:
    """Counts per status and latency percentiles (ms) of accepted and rejected requests."""
    accepted = [o.latency_s * 1000 for o in outcomes if o.status == "OK"]
    rejected = [o.latency_s * 1000 for o in outcomes if o.status != "OK"]
    return {
        "requests": len(outcomes),
        "duration_s": duration_s,
        "statuses": dict(Counter(o.status for o in outcomes)),
        "messages": sorted({o.message for o in outcomes if o.message})[:5],
        "accepted_per_s": len(accepted) / duration_s,
        "accepted_p50_ms": percentile(accepted, 50),
        "accepted_p99_ms": percentile(accepted, 99),
        "accepted_max_ms": max(accepted, default=None),
        "rejected_p50_ms": percentile(rejected, 50),
        "rejected_p99_ms": percentile(rejected, 99),
    }


def phases(url: str, images: list[bytes], overload_concurrency: int, seconds: float) -> dict[str, dict]:
    """Baseline (1 sender), far beyond capacity, then eased load again: the summary of each phase."""
    plan = [("baseline", 1, seconds / 2), ("overload", overload_concurrency, seconds), ("eased", 1, seconds / 2)]
    return {name: summarise(drive(url, images, concurrency, duration), duration) for name, concurrency, duration in plan}


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
    from clip_triton.server import local_server
    from tools.local_server import SHARED_IMAGES, exported_tiny_vit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the overload phase")
    parser.add_argument("--concurrency", type=int, default=64, help="senders during the overload phase")
    parser.add_argument("--max-queue-size", type=int, default=8, help="queue bound of each composing model")
    parser.add_argument("--images-per-request", type=int, default=4)
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES, help="folder of images to send")
    parser.add_argument("--output", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)

    images = [p.read_bytes() for p in sorted(args.images.iterdir()) if p.is_file()]
    images = (images * args.images_per_request)[: args.images_per_request]
    with exported_tiny_vit(max_queue_size=args.max_queue_size) as repository, local_server(repository) as server:
        results = phases(server.grpc_url, images, args.concurrency, args.seconds)
    setup = (f"Tiny ViT-B/32 (ONNX, CPU target), `max_queue_size={args.max_queue_size}` per composing model, "
             f"{args.images_per_request} images per request; phases: 1 sender for {args.seconds / 2:.0f} s, "
             f"{args.concurrency} senders for {args.seconds:.0f} s, 1 sender for {args.seconds / 2:.0f} s. "
             f"Closed loop over gRPC on loopback; {os.cpu_count()} CPU cores shared with the load generator.")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "overload.json").write_text(json.dumps(results, indent=2))
    (args.output / "overload.md").write_text(markdown(results, setup))
    print(markdown(results, setup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
