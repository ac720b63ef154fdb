"""Faults against the real server (issue 5, "Faults"): a graceful SIGTERM drains in-flight requests, and a
dead Python-backend stub gives clear errors and makes `clip-triton serve` exit non-zero instead of
serving errors for ever. (SIGKILL + restart mid-`encode` needs the retrying client: test_client_faults.py.)
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clip_triton import contract
from clip_triton.client import ClipClient, ClipError
from clip_triton_serve import free_ports
from clip_triton_serve.probes import requests_in_flight
from clip_triton_serve.procfs import child_processes
from conftest import IMAGE_NAMES, assert_features_match, export_golden, golden_features, image_bytes, running_server
from test_cli import CLI, listening_addresses, wait_ready
from test_server import infer

pytestmark = pytest.mark.server
SLOW_BATCHER_US = 2_000_000  # requests wait this long in clip_preprocess's queue: "in flight" on demand


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def send_in_background(pool: concurrent.futures.Executor, url: str, names: list[str]) -> list[concurrent.futures.Future]:
    return [pool.submit(infer, url, [image_bytes(name)]) for name in names]


def test_stop_drains_in_flight_ensemble_requests(tmp_path: Path) -> None:
    """Without the drain, Triton stops every scheduler at once and refuses step 2 of in-flight ensemble
    requests ("Server is stopping"); `TritonServer.stop()` waits for them first."""
    expected = golden_features("tiny-vit-b32")
    names = IMAGE_NAMES[:4]
    with running_server(export_golden(tmp_path, "tiny-vit-b32", preprocess_queue_delay_us=SLOW_BATCHER_US)) as server:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            futures = send_in_background(pool, server.grpc_url, names)
            wait_for(lambda: (server.in_flight() or 0) >= len(names), 10, "requests in flight")
            code = server.stop()
            features = [future.result(timeout=60) for future in futures]
    assert code == -signal.SIGKILL  # drained: nothing left for Triton's own shutdown to do
    for name, row in zip(names, features):
        assert_features_match(row, expected[name][None])


def serve(repository: Path, *extra: str) -> tuple[subprocess.Popen, list[int]]:
    ports = free_ports(3)
    process = subprocess.Popen(
        CLI + ["serve", "--repository", str(repository), "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
               "--metrics-port", str(ports[2]), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_ready(ports[1], process)
    return process, ports


def tritonserver_of(serve_process: subprocess.Popen) -> int:
    return next(pid for pid, argv in child_processes(serve_process.pid).items() if argv[0].endswith("tritonserver"))


def finish(process: subprocess.Popen, timeout_s: float) -> str:
    """Wait for `process` to exit on its own; kill it (by PID) if it does not, failing the test."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return output
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"process did not exit within {timeout_s} s:\n{output}")


def test_serve_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    repository = export_golden(tmp_path, "tiny-vit-b32", preprocess_queue_delay_us=SLOW_BATCHER_US)
    process, ports = serve(repository)
    url, metrics = f"127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[2]}/metrics"
    names = IMAGE_NAMES[:4]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            futures = send_in_background(pool, url, names)
            wait_for(lambda: (requests_in_flight(metrics) or 0) >= len(names), 10, "requests in flight")
            process.send_signal(signal.SIGTERM)
            features = [future.result(timeout=60) for future in futures]
        output = finish(process, 90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    expected = golden_features("tiny-vit-b32")
    for name, row in zip(names, features):
        assert_features_match(row, expected[name][None])
    assert process.returncode == 0, output
    assert "not ready from now on" in output and "stopped after" in output
    assert all(not listening_addresses(port) for port in ports)


def kill_stub(server_pid: int, model: str) -> int:
    stubs = {pid: argv for pid, argv in child_processes(server_pid).items() if argv[0].endswith("_stub")}
    pid = next(pid for pid, argv in stubs.items() if f"{model}_0_0" in argv)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_dead_preprocess_stub_is_not_restarted_and_requests_fail_clearly(tmp_path: Path) -> None:
    """What Triton 2.51 does when clip_preprocess's stub dies: no restart, the model stays READY, and every
    request fails with INTERNAL naming the dead stub. (If Triton learns to restart stubs, this test says so.)"""
    with running_server(export_golden(tmp_path, "tiny-vit-b32")) as server:
        infer(server.grpc_url, [image_bytes("horse.png")])
        kill_stub(server.pid, contract.PREPROCESS_MODEL)
        wait_for(lambda: not any(n.startswith(contract.PREPROCESS_MODEL) for n in server.backend_stubs().values()),
                 10, "the stub to be gone")
        with pytest.raises(InferenceServerException) as raw:
            infer(server.grpc_url, [image_bytes("horse.png")])
        with ClipClient(server.grpc_url) as client, pytest.raises(ClipError) as via_client:
            client.encode([image_bytes("horse.png")])
        client = grpcclient.InferenceServerClient(server.grpc_url)
        still_ready = client.is_server_ready() and client.is_model_ready(contract.PREPROCESS_MODEL)
        client.close()
        restarted = any(n.startswith(contract.PREPROCESS_MODEL) for n in server.backend_stubs().values())
    assert raw.value.status() == "StatusCode.INTERNAL"
    assert "Stub process 'clip_preprocess_0_0' is not healthy" in raw.value.message()
    assert "clip_preprocess_0_0" in str(via_client.value) and "not healthy" in str(via_client.value)
    assert still_ready and not restarted


def test_serve_exits_nonzero_when_a_stub_dies(vit_repository: Path) -> None:
    process, ports = serve(vit_repository)
    try:
        for line in process.stdout:  # `serve` records the stubs it watches before it prints this line
            if line.startswith("serving "):
                break
        server_pid = tritonserver_of(process)
        stub = kill_stub(server_pid, contract.PREPROCESS_MODEL)
        output = finish(process, 90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, output
    assert f"Python backend stub died: clip_preprocess_0_0 (pid {stub})" in output
    assert all(not listening_addresses(port) for port in ports), "tritonserver outlived `serve`"


def test_shared_memory_left_by_a_killed_server_is_found_and_a_mapped_one_is_not() -> None:
    """What `TritonServer.start` removes: our user's Python-backend regions that nobody maps, and only old ones."""
    import mmap
    import uuid

    from clip_triton_serve.procfs import SHM_PREFIX, orphaned_python_backend_shared_memory

    orphan, mapped, fresh = (Path(f"{SHM_PREFIX}test-{uuid.uuid4()}") for _ in range(3))
    try:
        for path in (orphan, mapped, fresh):
            path.write_bytes(b"\0" * 4096)
        for path in (orphan, mapped):
            os.utime(path, (time.time() - 3600, time.time() - 3600))
        with open(mapped, "r+b") as handle, mmap.mmap(handle.fileno(), 4096):
            found = orphaned_python_backend_shared_memory(min_age_s=60)
        assert orphan in found and mapped not in found and fresh not in found
    finally:
        for path in (orphan, mapped, fresh):
            path.unlink(missing_ok=True)


def fake_stub(folder: Path, server_pid: int) -> subprocess.Popen:
    """A process that looks like a Python-backend stub serving `server_pid` (sleep, under the stub's name,
    with the stub's argument layout: the server's pid 6th, the instance 9th)."""
    binary = folder / "triton_python_backend_stub"
    if not binary.exists():
        shutil.copy(shutil.which("sleep"), binary)
    return subprocess.Popen([str(binary), "600", "0", "0", "0", str(server_pid), "0", "0", "7"])


def test_backend_stubs_whose_server_is_gone_are_stopped_by_the_next_start(tmp_path: Path, vit_repository: Path) -> None:
    """A stub re-parented away from the server it names, which no longer runs (it was SIGKILLed), is an orphan;
    a stub whose parent is the server it names is not. The next server's start stops the orphans (they can hang for ever,
    holding their shared memory)."""
    from clip_triton_serve.procfs import orphaned_backend_stubs

    gone = subprocess.Popen(["true"])
    gone.wait()  # a server pid that no longer runs
    orphan, live = fake_stub(tmp_path, server_pid=gone.pid), fake_stub(tmp_path, server_pid=os.getpid())
    # names a running process that is not its parent (as a container's stub names its namespace's pids)
    elsewhere = fake_stub(tmp_path, server_pid=1)
    try:
        found = orphaned_backend_stubs()
        assert orphan.pid in found and live.pid not in found and elsewhere.pid not in found
        with running_server(vit_repository):
            assert orphan.poll() == -signal.SIGKILL, "the orphan outlived the next start"
            assert live.poll() is None and elsewhere.poll() is None, "a stub whose server is alive was stopped"
    finally:
        for process in (orphan, live, elsewhere):
            process.kill()
            process.wait(10)
