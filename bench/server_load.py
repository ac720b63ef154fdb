"""The server end to end over gRPC: closed-loop concurrency, like perf_analyzer's --concurrency-range.

C clients each keep one request (one encoded image) in flight: the next is sent as soon as the last
returns. A level's measurement window opens once every client has had a reply and the warm-up time
has passed (so queues have reached steady state), and lasts `seconds`, or longer until as many
replies as clients arrived in it.

Throughput is taken from Little's law, which is exact for a closed loop with no think time:
images/s = concurrency / mean latency (times the fraction that succeeded). Counting replies inside the
window is kept too, but it is quantized at high concurrency: the dynamic batcher then forms batches
as large as the concurrency, replies arrive in bursts, and a window holds one burst more or less. Only requests that complete
inside the window count; Triton's statistics are read at both ends of it. One asyncio event loop
drives every client, which keeps the load generator's own CPU use small on a 2-core machine.
"""
from __future__ import annotations

import asyncio
import time
from typing import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from clip_triton import contract

from .timing import latency_summary
from .triton_stats import snapshot, window


def image_input(data: bytes) -> grpcclient.InferInput:
    """IMAGE [1, 1] BYTES holding one encoded file; built once per image and reused by every request."""
    tensor = grpcclient.InferInput(contract.IMAGE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


async def encode_all(url: str, images: Sequence[bytes], model: str = contract.ENSEMBLE_MODEL) -> np.ndarray:
    """Each image through the server once, in order: a warm-up and the features for the correctness check."""
    wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
    async with grpcaio.InferenceServerClient(url) as client:
        results = [await client.infer(model, [image_input(data)], outputs=wanted) for data in images]
    return np.concatenate([r.as_numpy(contract.EMBEDDING_OUTPUT) for r in results])


async def closed_loop(url: str, images: Sequence[bytes], concurrency: int, warmup_s: float, seconds: float,
                      model: str = contract.ENSEMBLE_MODEL, timeout_s: float = 300.0,
                      max_window_factor: float = 10.0) -> dict:
    """One concurrency level: images/s, latency percentiles, errors, and the server's own breakdown."""
    inputs = [image_input(data) for data in images]
    wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
    records: list[tuple[float, float, str | None]] = []  # (sent, replied, error or None)
    replied_once: set[int] = set()
    everyone_replied = asyncio.Event()
    stopping = asyncio.Event()

    async with grpcaio.InferenceServerClient(url) as client:

        async def client_loop(index: int) -> None:
            position = index
            while not stopping.is_set():
                request = inputs[position % len(inputs)]
                position += 1
                sent = time.perf_counter()
                error = None
                try:
                    result = await client.infer(model, [request], outputs=wanted, client_timeout=timeout_s)
                    embedding = result.as_numpy(contract.EMBEDDING_OUTPUT)
                    if embedding is None or embedding.shape[0] != 1:
                        error = f"unexpected output {None if embedding is None else embedding.shape}"
                except Exception as raised:  # noqa: BLE001 - an error is a measurement, not a crash
                    error = str(raised) or type(raised).__name__
                records.append((sent, time.perf_counter(), error))
                replied_once.add(index)
                if len(replied_once) == concurrency:
                    everyone_replied.set()

        tasks = [asyncio.create_task(client_loop(i)) for i in range(concurrency)]
        started = time.perf_counter()
        await everyone_replied.wait()
        await asyncio.sleep(max(0.0, warmup_s - (time.perf_counter() - started)))
        before = snapshot(await client.get_inference_statistics("", as_json=True))
        window_start = time.perf_counter()
        await asyncio.sleep(seconds)
        # Slow levels (large photos, many clients) must still give every client a reply to count.
        while (sum(1 for r in records if r[1] >= window_start) < concurrency
               and time.perf_counter() - window_start < max_window_factor * seconds + timeout_s):
            await asyncio.sleep(0.05)
        window_end = time.perf_counter()
        after = snapshot(await client.get_inference_statistics("", as_json=True))
        stopping.set()
        await asyncio.gather(*tasks)

    inside = [r for r in records if window_start <= r[1] <= window_end]
    good = [replied - sent for sent, replied, error in inside if error is None]
    errors = [error for _, _, error in inside if error is not None]
    duration = window_end - window_start
    mean_latency = sum(replied - sent for sent, replied, _ in inside) / len(inside) if inside else 0.0
    littles_law = concurrency / mean_latency * len(good) / len(inside) if inside else 0.0
    return {
        "concurrency": concurrency, "window_s": round(duration, 3), "requests": len(inside),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "images_per_s": round(littles_law, 3), "images_per_s_counted": round(len(good) / duration, 3),
        "latency_ms": latency_summary(good),
        "server_stats": window(before, after),
    }


def sweep(url: str, images: Sequence[bytes], levels: Sequence[int], warmup_s: float, seconds: float,
          progress=print) -> list[dict]:
    """`closed_loop` at each concurrency level in turn."""
    results = []
    for concurrency in levels:
        level = asyncio.run(closed_loop(url, images, concurrency, warmup_s, seconds))
        progress(f"  concurrency {concurrency:>3}: {level['images_per_s']:7.2f} images/s, "
                 f"p50 {level['latency_ms']['p50']:8.1f} ms, p99 {level['latency_ms']['p99']:8.1f} ms, "
                 f"{level['errors']} errors")
        results.append(level)
    return results
