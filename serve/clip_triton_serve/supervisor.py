"""The one supervisor loop, run by `clip-triton serve` and by the container entrypoint alike.

Why supervise instead of handing over to tritonserver: Triton 2.51's own SIGTERM handling stops every
model's queue at once, so an ensemble request between its two steps is refused ("Server is stopping");
and it neither restarts a Python-backend stub that dies nor reports the model unready, so it would
answer every request with INTERNAL errors for ever. So on SIGTERM/SIGINT we drain first (report
not-ready, refuse new requests with UNAVAILABLE, let accepted work finish, at most the exit timeout) and
only then stop Triton, and we exit 1 when a stub dies, when Triton dies, or when it stays unready too
long, so that a supervisor above us (systemd, Docker's restart policy, the kubelet) restarts the whole
thing. If this process itself dies, tritonserver gets SIGKILL (see process.py for why not SIGTERM).
"""
from __future__ import annotations

import signal
import time
from typing import Callable

from .options import model_control_mode
from .process import TritonServer

EXIT_STOPPED, EXIT_FAILED = 0, 1
POLL_S = 0.5


def _stop_requests() -> list[int]:
    """Signals received so far (SIGTERM, SIGINT): the loop notices them between polls."""
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _: received.append(number))
    signal.signal(signal.SIGINT, lambda number, _: received.append(number))
    return received


def supervise(server: TritonServer, say: Callable[[str], None], complain: Callable[[str], None] | None = None, *,
              ready_timeout_s: float | None = None, unhealthy_exit_after_s: float | None = None,
              description: str = "") -> int:
    """Start `server` and watch it until asked to stop (drain, stop, exit 0) or until it fails (exit 1).

    `ready_timeout_s`: wait this long for readiness before watching, raising ServerError if it does not
    come (`serve` reports that as a start-up failure); None: watch from the start (the container, whose
    orchestrator has its own start-up probe). `unhealthy_exit_after_s`: exit 1 after being unready this
    long once ready (None or 0: never). `say` reports progress, `complain` (default `say`) failures. Stubs are watched only with model control NONE: under explicit
    control (shared clusters) unloading a model legitimately ends its stubs.
    """
    complain = complain or say
    stopping = _stop_requests()
    server.start()
    if ready_timeout_s is not None:
        server.wait_until_ready(ready_timeout_s)
    watch_stubs = model_control_mode(server.options.extra_args) == "none"
    stubs: dict[int, str] | None = None  # the stubs to watch, once the server has been ready
    unready_since: float | None = None
    while not stopping:
        if not server.alive():
            complain(f"tritonserver exited with {server.process.returncode}:\n{server.log_tail()}")
            return EXIT_FAILED
        ready = server.is_ready()
        if ready and stubs is None:
            stubs = server.backend_stubs() if watch_stubs else {}  # after readiness: load-time stubs are gone
            say(f"serving {description or server.options.repository} - gRPC {server.grpc_url}, HTTP "
                f"{server.http_url}, metrics {server.metrics_url} (pid {server.pid}; SIGINT or SIGTERM stops)")
        dead = {pid: name for pid, name in (stubs or {}).items() if pid not in server.backend_stubs()}
        if dead:
            names = ", ".join(f"{name} (pid {pid})" for pid, name in sorted(dead.items()))
            complain(f"a Python backend stub died: {names}; Triton does not restart it, stopping so that a "
                "supervisor restarts the server")
            server.stop(drain_s=0)
            return EXIT_FAILED
        if ready or stubs is None:
            unready_since = None
        else:
            unready_since = unready_since or time.monotonic()
            if unhealthy_exit_after_s and time.monotonic() - unready_since > unhealthy_exit_after_s:
                complain(f"tritonserver not ready for {unhealthy_exit_after_s:.0f} s, stopping:\n{server.log_tail()}")
                server.stop(drain_s=0)
                return EXIT_FAILED
        time.sleep(POLL_S)
    say("stopping: not ready from now on; refusing new requests (retryable) while accepted ones finish")
    started = time.monotonic()
    server.stop()
    say(f"stopped after {time.monotonic() - started:.1f} s")
    return EXIT_STOPPED
