"""The closed-loop load generator: the server end to end over gRPC, like perf_analyzer's --concurrency-range.

C clients each keep one request (N encoded images) in flight: the next is sent as soon as the last
returns. A level's measurement window opens once every client has had a reply and the warm-up time
has passed (so queues have reached steady state), and lasts `seconds`, or longer until as many
replies as clients arrived in it. Triton's statistics are read at both ends of the window.

Throughput is taken from Little's law, which is exact for a closed loop with no think time:
requests/s = concurrency / mean latency (times the fraction that succeeded), and images/s = N times
that. Counting replies inside the window is kept too, but it is quantized at high concurrency: the
dynamic batcher then forms batches as large as the concurrency, replies arrive in bursts, and a window
holds one burst more or less. Only requests that complete inside the window count.

One asyncio event loop drives every client, which keeps the load generator's own CPU use small on a
2-core machine. Where one Python process cannot keep up (10,000+ images/s on a GPU host), `processes`
spreads the clients over that many processes, each with its own event loop; the parent runs the
window, reads Triton's statistics and merges every process's records, all stamped with time.time().
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from clip_triton import contract

from . import preprocess_stages, triton_stats
from .timing import latency_summary

Record = tuple[float, float, Union[str, None]]  # (sent, replied, error or None), on one clock
POLL_S = 0.01


@dataclass(frozen=True)
class Level:
    """One point of a sweep: clients in flight, images in each request, processes the clients are spread over."""

    concurrency: int
    images_per_request: int = 1
    processes: int = 1


def requests_for(images: Sequence[bytes], images_per_request: int = 1) -> list:
    """One IMAGE input per image position: request k holds images k*N .. k*N+N-1 (cyclically).
    Built once and reused by every client, so building requests costs nothing while measuring."""
    count = len(images)
    return [contract.image_input([images[(k * images_per_request + j) % count] for j in range(images_per_request)])
            for k in range(count)]


def encode_all(url: str, images: Sequence[bytes], model: str = contract.ENSEMBLE_MODEL) -> np.ndarray:
    """Each image through the server once, in order: a warm-up and the features for the correctness check."""
    wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
    with grpcclient.InferenceServerClient(url) as client:
        rows = [client.infer(model, [contract.image_input([data])], outputs=wanted).as_numpy(contract.EMBEDDING_OUTPUT)
                for data in images]
    return np.concatenate(rows)


class _Cell:
    """A plain stand-in for multiprocessing.Value when every client runs in this process."""

    def __init__(self, value: Any):
        self.value = value

    def get_lock(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()


class Progress:
    """What the window needs from the clients, and how it stops them: which clients have replied once,
    how many replies arrived since the window opened. Shared memory when the clients live in other processes."""

    def __init__(self, ctx: Any = None):
        value = ctx.Value if ctx is not None else (lambda _kind, initial, lock=True: _Cell(initial))
        self._clients_replied = value("i", 0)
        self._window_start = value("d", math.inf, lock=False)
        self._in_window = value("q", 0)
        self._stop = value("b", 0, lock=False)
        self._seen: set[int] = set()  # this process's clients that have replied

    def replied(self, client: int, at: float) -> None:
        if client not in self._seen:
            self._seen.add(client)
            with self._clients_replied.get_lock():
                self._clients_replied.value += 1
        if at >= self._window_start.value:
            with self._in_window.get_lock():
                self._in_window.value += 1

    def clients_replied(self) -> int:
        return self._clients_replied.value

    def open_window(self, at: float) -> None:
        self._window_start.value = at

    def replies_in_window(self) -> int:
        return self._in_window.value

    def stop(self) -> None:
        self._stop.value = 1

    def stopping(self) -> bool:
        return bool(self._stop.value)


async def _clients(url: str, requests: Sequence, clients: range, images_per_request: int, model: str,
                   timeout_s: float, clock: Callable[[], float], progress: Progress) -> list[Record]:
    """Closed-loop clients on one gRPC channel until `progress` says stop; every request's record."""
    wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
    records: list[Record] = []
    async with grpcaio.InferenceServerClient(url) as client:

        async def client_loop(index: int) -> None:
            position = index
            while not progress.stopping():
                request = requests[position % len(requests)]
                position += 1
                sent = clock()
                error = None
                try:
                    result = await client.infer(model, [request], outputs=wanted, client_timeout=timeout_s)
                    embedding = result.as_numpy(contract.EMBEDDING_OUTPUT)
                    if embedding is None or embedding.shape[0] != images_per_request:
                        error = f"unexpected output {None if embedding is None else embedding.shape}"
                except Exception as raised:  # noqa: BLE001 - an error is a measurement, not a crash
                    error = str(raised) or type(raised).__name__
                replied = clock()
                records.append((sent, replied, error))
                progress.replied(index, replied)

        await asyncio.gather(*(client_loop(index) for index in clients))
    return records


async def _window(url: str, progress: Progress, concurrency: int, warmup_s: float, seconds: float, timeout_s: float,
                  max_window_factor: float, clock: Callable[[], float], check: Callable[[], None],
                  metrics_url: str | None = None) -> tuple[float, float, dict, dict | None]:
    """Wait for every client's first reply and the warm-up, then measure: (window start, end, Triton's breakdown,
    clip_preprocess's stages when `metrics_url` is given, else None). `check` raises when the clients can no
    longer reply (a load process died)."""
    started = clock()
    while progress.clients_replied() < concurrency:
        check()
        await asyncio.sleep(POLL_S)
    await asyncio.sleep(max(0.0, warmup_s - (clock() - started)))
    before = await asyncio.to_thread(triton_stats.read, url)
    stages_before = await asyncio.to_thread(preprocess_stages.read, metrics_url) if metrics_url else None
    window_start = clock()
    progress.open_window(window_start)
    await asyncio.sleep(seconds)
    # Slow levels (large photos, many clients) must still give every client a reply to count.
    while (progress.replies_in_window() < concurrency
           and clock() - window_start < max_window_factor * seconds + timeout_s):
        check()
        await asyncio.sleep(POLL_S)
    window_end = clock()
    after = await asyncio.to_thread(triton_stats.read, url)
    stages = None
    if stages_before is not None:
        stages = preprocess_stages.window(stages_before, await asyncio.to_thread(preprocess_stages.read, metrics_url))
    progress.stop()
    return window_start, window_end, triton_stats.window(before, after), stages


def summarise(records: Sequence[Record], window_start: float, window_end: float, level: Level,
              server_stats: dict, preprocess: dict | None = None) -> dict:
    """A level's figures from every request's record: throughput by Little's law and counted, latency per request."""
    inside = [r for r in records if window_start <= r[1] <= window_end]
    good = [replied - sent for sent, replied, error in inside if error is None]
    errors = [error for _, _, error in inside if error is not None]
    duration = window_end - window_start
    mean_latency = sum(replied - sent for sent, replied, _ in inside) / len(inside) if inside else 0.0
    requests_per_s = level.concurrency / mean_latency * len(good) / len(inside) if inside else 0.0
    per_request = level.images_per_request
    return {
        "concurrency": level.concurrency, "window_s": round(duration, 3), "requests": len(inside),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "images_per_s": round(requests_per_s * per_request, 3),
        "images_per_s_counted": round(len(good) * per_request / duration, 3),
        "latency_ms": latency_summary(good),
        "server_stats": server_stats,
        "preprocess_stages": preprocess,
        "images_per_request": per_request, "processes": level.processes,
        "requests_per_s": round(requests_per_s, 3),
    }


async def closed_loop(url: str, images: Sequence[bytes], concurrency: int, warmup_s: float, seconds: float,
                      model: str = contract.ENSEMBLE_MODEL, timeout_s: float = 300.0,
                      max_window_factor: float = 10.0, images_per_request: int = 1,
                      metrics_url: str | None = None) -> dict:
    """One level in this process: images/s, latency percentiles, errors, and the server's own breakdown."""
    progress = Progress()
    clients = asyncio.create_task(_clients(url, requests_for(images, images_per_request), range(concurrency),
                                           images_per_request, model, timeout_s, time.perf_counter, progress))

    def check() -> None:
        if clients.done():
            clients.result()
            raise RuntimeError("the load generator's clients stopped before the window closed")

    try:
        start, end, server_stats, stages = await _window(url, progress, concurrency, warmup_s, seconds, timeout_s,
                                                         max_window_factor, time.perf_counter, check, metrics_url)
    finally:
        progress.stop()
        records = await clients
    return summarise(records, start, end, Level(concurrency, images_per_request, 1), server_stats, stages)


def _load_process(url: str, images: Sequence[bytes], clients: range, images_per_request: int, model: str,
                  timeout_s: float, progress: Progress, results: Any) -> None:
    """A child process: its share of the clients on its own event loop; its records go back on `results`."""
    try:
        records = asyncio.run(_clients(url, requests_for(images, images_per_request), clients, images_per_request,
                                       model, timeout_s, time.time, progress))
        results.put(("records", records))
    except BaseException as error:  # noqa: BLE001 - the parent must hear of it rather than wait
        results.put(("error", f"{type(error).__name__}: {error}"))


def _across_processes(url: str, images: Sequence[bytes], level: Level, warmup_s: float, seconds: float,
                      model: str, timeout_s: float, max_window_factor: float, metrics_url: str | None = None) -> dict:
    """One level with the clients spread over `level.processes` spawned processes; the window runs here."""
    ctx = multiprocessing.get_context("spawn")
    progress, results = Progress(ctx), ctx.Queue()
    bounds = np.linspace(0, level.concurrency, level.processes + 1).round().astype(int)
    children = [ctx.Process(target=_load_process, daemon=True, name=f"loadgen-{index}",
                            args=(url, list(images), range(bounds[index], bounds[index + 1]), level.images_per_request,
                                  model, timeout_s, progress, results))
                for index in range(level.processes)]
    for child in children:
        child.start()

    def check() -> None:
        if any(child.exitcode is not None for child in children):
            raise RuntimeError(f"a load process ended early: {_drain(results, 0.5)}")

    try:
        start, end, server_stats, stages = asyncio.run(_window(url, progress, level.concurrency, warmup_s, seconds,
                                                       timeout_s, max_window_factor, time.time, check, metrics_url))
        records = [record for _ in children for record in _received(results, timeout_s + 60)]
    finally:
        progress.stop()
        for child in children:
            child.join(10)
            if child.is_alive():
                child.terminate()
                child.join()
    return summarise(records, start, end, level, server_stats, stages)


def _received(results: Any, timeout_s: float) -> list[Record]:
    kind, payload = results.get(timeout=timeout_s)
    if kind != "records":
        raise RuntimeError(f"a load process failed: {payload}")
    return payload


def _drain(results: Any, timeout_s: float) -> str:
    with contextlib.suppress(Exception):
        return str(results.get(timeout=timeout_s)[1])[:500]
    return "no message"


def run_level(url: str, images: Sequence[bytes], concurrency: int, warmup_s: float, seconds: float,
              images_per_request: int = 1, processes: int = 1, model: str = contract.ENSEMBLE_MODEL,
              timeout_s: float = 300.0, max_window_factor: float = 10.0, metrics_url: str | None = None) -> dict:
    """One level, in this process's event loop (processes=1) or spread over processes (never more than clients).
    With `metrics_url` (Triton's metrics page), the level's `preprocess_stages` holds clip_preprocess's own
    stages and paths over the window (else None)."""
    level = Level(concurrency, images_per_request, max(1, min(processes, concurrency)))
    if level.processes == 1:
        return asyncio.run(closed_loop(url, images, concurrency, warmup_s, seconds, model, timeout_s,
                                       max_window_factor, images_per_request, metrics_url))
    return _across_processes(url, images, level, warmup_s, seconds, model, timeout_s, max_window_factor, metrics_url)


def progress_line(level: dict) -> str:
    """One progress line for a measured level."""
    extra = "".join(f", {level[key]} {label}" for key, label in (("images_per_request", "images/request"),
                                                                ("processes", "processes")) if level[key] > 1)
    return (f"  concurrency {level['concurrency']:>3}{extra}: {level['images_per_s']:7.2f} images/s, "
            f"p50 {level['latency_ms']['p50']:8.1f} ms, p99 {level['latency_ms']['p99']:8.1f} ms, "
            f"{level['errors']} errors")


def sweep(url: str, images: Sequence[bytes], levels: Sequence[int | Level], warmup_s: float, seconds: float,
          progress: Callable[[str], None] = print, metrics_url: str | None = None) -> list[dict]:
    """`run_level` at each level in turn; a plain int is a concurrency with one image per request, one process."""
    results = []
    for level in levels:
        level = level if isinstance(level, Level) else Level(int(level))
        measured = run_level(url, images, level.concurrency, warmup_s, seconds, level.images_per_request,
                             level.processes, metrics_url=metrics_url)
        progress(progress_line(measured))
        results.append(measured)
    return results
