"""Rolling restarts lose nothing (issue 16): SIGTERM to `clip-triton serve` in the middle of an encode, or a
SIGKILL of `serve` alone, and a new `serve` on the same ports as soon as they are free: every row comes back
exactly once, in input order, equal to an undisturbed run; no request ever sees NOT_FOUND. A draining server
reports not-ready before it stops serving (`serve` and the container entrypoint alike), and refuses new
requests with UNAVAILABLE.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clip_triton import AsyncClipClient, ClipClient, contract
from clip_triton.errors import ServerUnavailableError
from clip_triton_serve import free_ports
from clip_triton_serve.probes import requests_in_flight
from client_support import assert_rows_distinct, distinct_images
from conftest import (IMAGE_NAMES, assert_features_match, export_golden, golden_features, image_bytes,
                      running_server)
from deploy_support import entrypoint_server, http
from test_cli import CLI, listening_addresses, wait_ready
from test_server import infer

pytestmark = pytest.mark.server
BATCH, CONCURRENCY, IMAGES = 4, 2, 240
PORTS_FREE_WITHIN_S = 5.0  # after a SIGKILL of `serve` alone (its tritonserver dies with it)
SLOW_BATCHER_US = 2_000_000  # requests wait this long in clip_preprocess's queue: "in flight" on demand


class Serve:
    """`clip-triton serve` as a subprocess on fixed ports, so a replacement can take the same ones."""

    def __init__(self, repository: Path, ports: list[int]):
        self.repository, self.ports = repository, ports
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self) -> "Serve":
        grpc_port, http_port, metrics_port = self.ports
        self.process = subprocess.Popen(
            CLI + ["serve", "--repository", str(self.repository), "--grpc-port", str(grpc_port),
                   "--http-port", str(http_port), "--metrics-port", str(metrics_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_ready(http_port, self.process)
        return self

    def ports_free(self) -> bool:
        return all(not listening_addresses(port) for port in self.ports)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition, timeout_s: float, what: str) -> float:
    """Seconds it took `condition` to hold (fails the test after `timeout_s`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture()
def replaceable_serve(vit_repository: Path):
    """A running `serve`, and a function that (after `disrupt` has been applied to it) starts a new `serve`
    on the same ports, in a thread, as soon as they are free."""
    first = Serve(vit_repository, free_ports(3)).start()
    started: list[Serve] = [first]
    timings: dict[str, float] = {}

    def replace(disrupt) -> threading.Thread:
        began = time.monotonic()
        disrupt(first.process)

        def start_replacement() -> None:
            timings["ports_free_s"] = wait_until(first.ports_free, 90, "the old server's ports to be free")
            replacement = Serve(vit_repository, first.ports)
            started.append(replacement)
            replacement.start()
            timings["back_s"] = time.monotonic() - began

        thread = threading.Thread(target=start_replacement, daemon=True)
        thread.start()
        return thread

    try:
        yield first, replace, timings
    finally:
        for server in started:
            server.stop()


def sigterm(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)


def sigkill_serve_alone(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)


def check_every_row_once(received: list, expected: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    indices = np.concatenate([part.indices for part in received])
    np.testing.assert_array_equal(indices, np.arange(len(expected)))  # every row exactly once, in order
    assert not any(part.failures for part in received)
    np.testing.assert_allclose(np.concatenate([part.features for part in received]), expected, rtol=1e-4, atol=1e-5)
    retries = [r.getMessage() for r in caplog.records if r.name == "clip_triton.client" and "retrying" in r.getMessage()]
    assert any("UNAVAILABLE" in message for message in retries), retries  # the restart really hit the job
    assert not any("NOT_FOUND" in message for message in retries), retries


@pytest.mark.parametrize("disrupt", [sigterm, sigkill_serve_alone], ids=["sigterm", "sigkill-serve-alone"])
def test_sync_encode_survives_a_rolling_restart(replaceable_serve, disrupt, caplog) -> None:
    caplog.set_level(logging.INFO, logger="clip_triton.client")
    first, replace, timings = replaceable_serve
    images = distinct_images(IMAGES, seed=21)
    with ClipClient(first.grpc_url) as client:
        expected = client.encode(images, batch_size=16)
    assert_rows_distinct(expected)
    with ClipClient(first.grpc_url, retry_deadline=120) as client:
        parts = client.iter_encode(images, batch_size=BATCH, concurrency=CONCURRENCY)
        received = [next(parts)]
        replacement = replace(disrupt)  # the rest of the job is queued or in flight now
        received += list(parts)
        replacement.join()
    check_every_row_once(received, expected, caplog)
    if disrupt is sigkill_serve_alone:
        assert timings["ports_free_s"] <= PORTS_FREE_WITHIN_S, timings
    print(f"\n{disrupt.__name__}: ports free after {timings['ports_free_s']:.2f} s, "
          f"new server ready after {timings['back_s']:.1f} s, {len(images)} of {len(images)} rows")


@pytest.mark.parametrize("disrupt", [sigterm, sigkill_serve_alone], ids=["sigterm", "sigkill-serve-alone"])
def test_async_encode_survives_a_rolling_restart(replaceable_serve, disrupt, caplog) -> None:
    caplog.set_level(logging.INFO, logger="clip_triton.client")
    first, replace, timings = replaceable_serve
    images = distinct_images(IMAGES, seed=22)
    with ClipClient(first.grpc_url) as client:
        expected = client.encode(images, batch_size=16)

    async def scenario() -> list:
        async with AsyncClipClient(first.grpc_url, retry_deadline=120) as client:
            parts = client.iter_encode(images, batch_size=BATCH, concurrency=CONCURRENCY)
            received = [await parts.__anext__()]
            replacement = replace(disrupt)
            received += [part async for part in parts]
            await asyncio.to_thread(replacement.join)
            return received

    check_every_row_once(asyncio.run(scenario()), expected, caplog)
    if disrupt is sigkill_serve_alone:
        assert timings["ports_free_s"] <= PORTS_FREE_WITHIN_S, timings


# -- a draining server ------------------------------------------------------------------------------------
def test_a_draining_server_is_not_ready_and_refuses_new_requests_with_unavailable(vit_repository: Path) -> None:
    with running_server(vit_repository) as server:
        assert http("GET", f"{server.http_url}/v2/health/ready")[0] == 200
        assert server.drain(10)  # nothing in flight: drained at once, and Triton still runs
        assert http("GET", f"{server.http_url}/v2/health/ready")[0] == 503
        assert http("GET", f"{server.http_url}/v2/models/{contract.ENSEMBLE_MODEL}/config")[0] == 200
        with pytest.raises(InferenceServerException) as refused:
            infer(server.grpc_url, [image_bytes(IMAGE_NAMES[0])])
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert contract.DRAINING_MESSAGE in refused.value.message()
        with ClipClient(server.grpc_url, retry_deadline=1.0) as client:
            with pytest.raises(ServerUnavailableError, match="draining"):
                client.encode([image_bytes(IMAGE_NAMES[0])])


def launch_serve(repository: Path):
    server = Serve(repository, free_ports(3)).start()
    grpc_port, http_port, metrics_port = server.ports
    try:
        yield server.process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", \
            f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        server.stop()


def launch_entrypoint(repository: Path):
    with entrypoint_server(repository) as server:
        yield server.process, server.grpc_url, server.http_url, server.metrics_url


@pytest.mark.parametrize("launch", [launch_serve, launch_entrypoint], ids=["serve", "container-entrypoint"])
def test_sigterm_reports_not_ready_before_in_flight_requests_finish(tmp_path: Path, launch) -> None:
    repository = export_golden(tmp_path, "tiny-vit-b32", preprocess_queue_delay_us=SLOW_BATCHER_US)
    names = IMAGE_NAMES[:4]
    launcher = launch(repository)
    process, grpc_url, http_url, metrics_url = next(launcher)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            futures = [pool.submit(infer, grpc_url, [image_bytes(name)]) for name in names]
            wait_until(lambda: (requests_in_flight(metrics_url) or 0) >= len(names), 10, "requests in flight")
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: http("GET", f"{http_url}/v2/health/ready")[0] == 503, 5, "not ready")
            assert not any(future.done() for future in futures)  # not ready while they are still in flight
            rows = [future.result(timeout=60) for future in futures]
        expected = golden_features("tiny-vit-b32")
        for name, row in zip(names, rows):
            assert_features_match(row, expected[name][None])
        assert process.wait(60) == 0
    finally:
        launcher.close()
