"""Container entrypoint: tritonserver with exactly the flags `clip-triton serve` uses, under the same supervisor.

Both come from the `clip_triton_serve` package (copied into the image): `ServerOptions.command()` writes the
command line (model control NONE, strict readiness, the graceful-drain exit timeout, metrics on, the
admin protocols behind the `clip-triton-admin-key` header, a CUDA memory pool on each GPU when the
repository has GPU models) and `supervisor.supervise` runs it (drain on SIGTERM, exit 1 when a
Python-backend stub or Triton dies). It never binds a non-loopback address with the admin protocols
open: where `serve` would generate a key and print it, a container refuses to start instead (a key that
changes on every restart and lives only in a log is no use to operators): set CLIP_TRITON_ADMIN_KEY (or
CLIP_TRITON_ADMIN_KEY_FILE, e.g. a mounted Secret). Arguments given to the container are appended (for a
shared cluster's --rate-limit, say).

Environment (defaults are the container's): MODEL_REPOSITORY=/models, TRITON_ADDRESS=0.0.0.0,
HTTP_PORT=8000, GRPC_PORT=8001, METRICS_PORT=8002, EXIT_TIMEOUT_SECS=30, LOG_VERBOSE=0,
TRITONSERVER=/opt/tritonserver/bin/tritonserver, BACKEND_DIRECTORY=/opt/tritonserver/backends.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from clip_triton_serve import ServerOptions, TritonServer, is_loopback
from clip_triton_serve.installation import container_installation
from clip_triton_serve.supervisor import supervise


def admin_key(environ: dict[str, str]) -> str | None:
    """The key from CLIP_TRITON_ADMIN_KEY, else from the file CLIP_TRITON_ADMIN_KEY_FILE names."""
    key = environ.get("CLIP_TRITON_ADMIN_KEY", "").strip()
    if not key and environ.get("CLIP_TRITON_ADMIN_KEY_FILE"):
        key = Path(environ["CLIP_TRITON_ADMIN_KEY_FILE"]).read_text().strip()
    return key or None


def server_options(environ: dict[str, str], extra_args: list[str]) -> ServerOptions:
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
    return options


def triton_command(environ: dict[str, str], extra_args: list[str]) -> list[str]:
    """The tritonserver command line the container runs (what the tests compare with `serve`'s)."""
    installation = _installation(environ)
    return server_options(environ, extra_args).command(installation.binary, installation.backends)


def _installation(environ: dict[str, str]):
    return container_installation(Path(environ.get("TRITONSERVER", "/opt/tritonserver/bin/tritonserver")),
                                  Path(environ.get("BACKEND_DIRECTORY", "/opt/tritonserver/backends")))


def triton_server(environ: dict[str, str], extra_args: list[str]) -> TritonServer:
    return TritonServer(server_options(environ, extra_args), installation=_installation(environ), inherit_output=True)


def main() -> int:
    server = triton_server(dict(os.environ), sys.argv[1:])
    return supervise(server, lambda message: print(message, flush=True),
                     lambda message: print(message, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main())
