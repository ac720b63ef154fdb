"""Run a real Triton server locally, without Docker, from the binary in the `nvidia-pytriton` wheel.

The wheel ships `tritonserver`, the Python backend and one backend stub per Python version. We
assemble a backend directory (the stub for *this* interpreter), give the stub an environment that
finds this virtual environment (its `bin/` first on PATH) and this interpreter's libpython, and
start the server in its own process group so it can always be stopped by PID.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("clip_triton.server")


class ServerError(RuntimeError):
    """The server could not be started, or died; the message carries the end of its log."""


@dataclass
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    exit_timeout_s: int = 30  # graceful drain: in-flight requests finish before exit
    log_verbose: int = 0
    # Admin protocols need this header key (`clip-triton-admin-key: <key>`); None leaves them open,
    # which `serve` only allows on loopback.
    admin_key: str | None = None
    # gRPC over TLS: the server's PEM certificate and key; with a client CA, clients must present a
    # certificate signed by it (mutual TLS). HTTP and metrics stay plain (bind them to loopback).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("a client CA (--tls-client-ca) only makes sense with --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name.replace('_', '-')}: no such file {path}")

    def command(self, binary: Path, backends: Path) -> list[str]:
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            "--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            *restricted_protocol_args(self.admin_key),
            *tls_args(self.tls_cert, self.tls_key, self.tls_client_ca),
            *self.extra_args,
        ]


ADMIN_HEADER = "clip-triton-admin-key"
ADMIN_PROTOCOLS = "model-repository,shared-memory,logging,trace"


def restricted_protocol_args(admin_key: str | None) -> list[str]:
    """tritonserver flags that put the admin protocols behind the `clip-triton-admin-key` header."""
    if not admin_key:
        return []
    rule = f"{ADMIN_PROTOCOLS}:{ADMIN_HEADER}={admin_key}"
    return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


def tls_args(cert: Path | None, key: Path | None, client_ca: Path | None) -> list[str]:
    """tritonserver flags for gRPC over TLS (mutual TLS when a client CA is given)."""
    if cert is None or key is None:
        return []
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}",
            f"--grpc-server-key={Path(key).resolve()}"]
    if client_ca is not None:
        args += [f"--grpc-root-cert={Path(client_ca).resolve()}", "--grpc-use-ssl-mutual=true"]
    return args


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def triton_home() -> Path:
    """The tritonserver tree inside the installed nvidia-pytriton wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed: pip install 'clip-triton[serve]'")
    home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise ServerError(f"no tritonserver binary under {home}")
    return home


def _prepare_backends(home: Path, workdir: Path) -> Path:
    """A writable backend directory with the Python-backend stub for this interpreter."""
    python = workdir / "backends" / "python"
    shutil.copytree(home / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version}")
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return python.parent


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(home.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")])
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if its parent dies, so no tritonserver is ever orphaned
    (its own process group protects it from the parent's Ctrl-C, not from the parent's death)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A tritonserver process: start, wait until ready, stop (SIGTERM, then SIGKILL) by PID."""

    def __init__(self, options: ServerOptions, log_path: Path | None = None):
        self.options = options
        self.process: subprocess.Popen | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="clip-triton-server-"))
        self.log_path = log_path or self._workdir / "tritonserver.log"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.options.host}:{self.options.http_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> "TritonServer":
        home = triton_home()
        backends = _prepare_backends(home, self._workdir)
        command = self.options.command(home / "bin" / "tritonserver", backends)
        log.info("starting %s", " ".join(command))
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_environment(home), start_new_session=True, preexec_fn=_die_with_parent,
            )
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_until_ready(self, timeout_s: float = 120.0) -> "TritonServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"tritonserver exited during start-up:\n{self.log_tail()}")
            if self.is_ready():
                log.info("ready: gRPC %s, HTTP %s, metrics %s:%d (pid %d)", self.grpc_url, self.http_url,
                         self.options.host, self.options.metrics_port, self.pid)
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server's process group, wait for the drain, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            wait = timeout_s if timeout_s is not None else self.options.exit_timeout_s + 10
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (server and backend stubs), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        """The log's error lines (model load failures come early), then its last lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text[:-lines] if line.startswith("E")]
        return "\n".join(errors + text[-lines:])

    def __enter__(self) -> "TritonServer":
        return self.start().wait_until_ready()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
