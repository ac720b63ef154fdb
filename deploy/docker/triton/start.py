"""Container entrypoint: exec tritonserver with exactly the flags `clip-triton serve` uses.

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
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from clip_triton.server import ServerOptions, is_loopback


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


def main() -> None:
    command = triton_command(dict(os.environ), sys.argv[1:])
    sys.stdout.flush()
    os.execv(command[0], command)  # tritonserver replaces us: it gets SIGTERM directly and drains


if __name__ == "__main__":
    main()
