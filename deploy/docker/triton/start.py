"""Container entrypoint: run tritonserver with exactly the flags `clip-triton serve` uses, and supervise it.

The flags come from `ServerOptions.command()` in client/clip_triton/server.py (copied into the image
as `clip_triton/server.py`), so the container and the local server cannot drift apart: model control
NONE, strict readiness, the graceful-drain exit timeout, metrics on, and the admin protocols behind
the `clip-triton-admin-key` header. It never binds a non-loopback address with the admin protocols
open: where `serve` would generate a key and print it, a container refuses to start instead (a key that
changes on every restart and lives only in a log is no use to operators): set CLIP_TRITON_ADMIN_KEY
(or CLIP_TRITON_ADMIN_KEY_FILE, e.g. a mounted Secret). Arguments given to the container are appended (for a shared cluster's --rate-limit, say).

Environment (defaults are the container's): MODEL_REPOSITORY=/models, TRITON_ADDRESS=0.0.0.0,
HTTP_PORT=8000, GRPC_PORT=8001, METRICS_PORT=8002, EXIT_TIMEOUT_SECS=30, LOG_VERBOSE=0,
TRITONSERVER=/opt/tritonserver/bin/tritonserver, BACKEND_DIRECTORY=/opt/tritonserver/backends.

Why supervise instead of exec: Triton 2.51's own SIGTERM handling stops every model's queue at once, so
an ensemble request between its two steps is refused ("Server is stopping"); and it neither restarts a
Python-backend stub that dies nor reports the model unready. So, like `clip-triton serve`, this process
drains (waits until nothing is queued or executing, at most EXIT_TIMEOUT_SECS) before passing SIGTERM
on, and exits 1 when a stub dies, so the orchestrator restarts the container.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from clip_triton.server import ServerOptions, child_processes, is_loopback, wait_until_idle


def admin_key(environ: dict[str, str]) -> str | None:
    """The key from CLIP_TRITON_ADMIN_KEY, else from the file CLIP_TRITON_ADMIN_KEY_FILE names."""
    key = environ.get("CLIP_TRITON_ADMIN_KEY", "").strip()
    if not key and environ.get("CLIP_TRITON_ADMIN_KEY_FILE"):
        key = Path(environ["CLIP_TRITON_ADMIN_KEY_FILE"]).read_text().strip()
    return key or None


def triton_command(environ: dict[str, str], extra_args: list[str]) -> list[str]:
    options = ServerOptions(
        repository=Path(environ.get("MODEL_REPOSITORY", "/models")),
        host=environ.get("TRITON_ADDRESS", "0.0.0.0"),
        http_port=int(environ.get("HTTP_PORT", "8000")),
        grpc_port=int(environ.get("GRPC_PORT", "8001")),
        metrics_port=int(environ.get("METRICS_PORT", "8002")),
        exit_timeout_s=int(environ.get("EXIT_TIMEOUT_SECS", "30")),
        log_verbose=int(environ.get("LOG_VERBOSE", "0")),
        admin_key=admin_key(environ),
        extra_args=list(extra_args),
    )
    if options.admin_key is None and not is_loopback(options.host):
        raise SystemExit(
            f"refusing to listen on {options.host} with the admin protocols open: set CLIP_TRITON_ADMIN_KEY "
            "(or CLIP_TRITON_ADMIN_KEY_FILE) to a secret; clients of those protocols send it in the "
            "`clip-triton-admin-key` header")
    binary = Path(environ.get("TRITONSERVER", "/opt/tritonserver/bin/tritonserver"))
    backends = Path(environ.get("BACKEND_DIRECTORY", "/opt/tritonserver/backends"))
    return options.command(binary, backends)


def _local_url(environ: dict[str, str], port_variable: str, default: str) -> str:
    host = environ.get("TRITON_ADDRESS", "0.0.0.0")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{environ.get(port_variable, default)}"


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stubs(pid: int) -> set[int]:
    return {child for child, argv in child_processes(pid).items() if argv and argv[0].endswith("_stub")}


def model_control_mode(command: list[str]) -> str:
    """The effective --model-control-mode (the last one given wins, as in tritonserver)."""
    modes = [arg.split("=", 1)[1] for arg in command if arg.startswith("--model-control-mode=")]
    return modes[-1] if modes else "none"


def supervise(command: list[str], environ: dict[str, str]) -> int:
    """Run tritonserver; on SIGTERM/SIGINT drain, then stop it; exit 1 if it dies or loses a stub.

    Stubs are watched only with model control NONE: under explicit control (shared clusters) unloading a
    model legitimately ends its stubs."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _: stopping.append(number))
    signal.signal(signal.SIGINT, lambda number, _: stopping.append(number))
    process = subprocess.Popen(command)
    http_url = _local_url(environ, "HTTP_PORT", "8000")
    metrics_url = _local_url(environ, "METRICS_PORT", "8002") + "/metrics"
    exit_timeout = float(environ.get("EXIT_TIMEOUT_SECS", "30"))
    watched: set[int] = set()
    watch_stubs = model_control_mode(command) == "none"
    while process.poll() is None:
        if stopping:
            wait_until_idle(metrics_url, exit_timeout, alive=lambda: process.poll() is None)
            process.send_signal(signal.SIGTERM)
            return process.wait()
        if watch_stubs and not watched and _ready(http_url):
            watched = _stubs(process.pid)  # after readiness: load-time helper stubs have come and gone
        elif watched and watched - _stubs(process.pid):
            print(f"a Python backend stub died (pid {sorted(watched - _stubs(process.pid))}); stopping so the "
                  "container is restarted", file=sys.stderr, flush=True)
            process.send_signal(signal.SIGTERM)
            process.wait()
            return 1
        time.sleep(0.5)
    return 1  # tritonserver exited on its own


def main() -> int:
    environ = dict(os.environ)
    command = triton_command(environ, sys.argv[1:])
    sys.stdout.flush()
    return supervise(command, environ)


if __name__ == "__main__":
    sys.exit(main())
