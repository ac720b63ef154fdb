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
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

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

    @classmethod
    def on_free_ports(cls, repository: Path, **options) -> "ServerOptions":
        """Options with three distinct free loopback ports (tests, demo, benchmarks)."""
        grpc_port, http_port, metrics_port = free_ports(3)
        return cls(repository=repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                   **options)

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


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` right now.

    All probe sockets stay open until every port is chosen: probing one port at a time can return the
    same port twice (Triton then refuses to start: "cannot listen ... at the same address and port").
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (for several at once, use `free_ports`)."""
    return free_ports(1, host)[0]


def requests_in_flight(metrics_url: str) -> int | None:
    """Requests queued or executing in a server, from its metrics endpoint (None if it cannot be read).

    Triton's `nv_inference_pending_request_count` covers queued requests only; our Python models add
    `clip_triton_executing_requests` for the ones inside `execute()`.
    """
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("nv_inference_pending_request_count{", "clip_triton_executing_requests{"))))


def wait_until_idle(metrics_url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True,
                    poll_s: float = 0.05, settle_s: float = 0.5) -> bool:
    """Wait until no request has been queued or executing for `settle_s` in a row, at most `timeout_s`.

    The drain before stopping a server: Triton's own SIGTERM handling stops every model's scheduler at once,
    so an ensemble request already past `clip_preprocess` would be refused at `clip_visual` ("Server is
    stopping"). A request between the two models (preprocessing returned, not yet queued for the visual
    model) shows in neither count for a moment: 23 ms on an idle machine, and a CI run under load lost a
    request after two quiet readings 50 ms apart. Hence the settling time, about twenty such gaps.
    Returns whether the server went idle (False at once if the metrics cannot be read).
    """
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline and alive():
        count = requests_in_flight(metrics_url)
        if count is None:
            return False
        now = time.monotonic()
        if count:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= settle_s:
            return True
        time.sleep(poll_s)
    return False


def child_processes(parent: int) -> dict[int, list[str]]:
    """Direct child processes of `parent`: pid -> argv (from /proc; empty on other systems)."""
    children: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Fields after the parenthesised command name: state, ppid, ...
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z":
                children[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return children


def _stub_instance(argv: list[str]) -> str:
    """The model instance a Python-backend stub serves (its 9th argument; else its model's directory)."""
    if len(argv) > 8 and argv[8]:
        return argv[8]
    return Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


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
                env=_environment(home), start_new_session=True,
                # The parent-death signal follows the *thread* that forks: from any other thread it would
                # SIGTERM the server as soon as that thread ends (e.g. a restart done in a helper thread).
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
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

    def backend_stubs(self) -> dict[int, str]:
        """Live Python-backend stub processes of this server: pid -> model instance (e.g. clip_preprocess_0_0).

        Triton 2.51 does not restart a stub that dies: the model stays READY and every request to it
        fails with INTERNAL "Stub process ... is not healthy". Watching these PIDs is how `serve` notices.
        """
        if self.process is None:
            return {}
        return {pid: _stub_instance(argv) for pid, argv in child_processes(self.process.pid).items()
                if argv and argv[0].endswith("triton_python_backend_stub")}

    def rss_bytes(self) -> int:
        """Resident memory of tritonserver and its backend stubs together."""
        if self.process is None:
            return 0
        return sum(_rss_bytes(pid) for pid in [self.process.pid, *child_processes(self.process.pid)])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}/metrics"

    def in_flight(self) -> int | None:
        """Requests queued or executing right now (None if the metrics cannot be read)."""
        return requests_in_flight(self.metrics_url)

    def drain(self, timeout_s: float) -> bool:
        """`wait_until_idle` on this server, while its process lives. Returns whether it went idle."""
        return wait_until_idle(self.metrics_url, timeout_s,
                               alive=lambda: self.process is not None and self.process.poll() is None)

    def stop(self, timeout_s: float | None = None, drain_s: float | None = None) -> int | None:
        """Drain in-flight requests (at most `drain_s`, default the exit timeout), SIGTERM the process
        group, wait `timeout_s` for Triton's own exit, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            wait = timeout_s if timeout_s is not None else self.options.exit_timeout_s + 10
            drain_s = self.options.exit_timeout_s if drain_s is None else drain_s
            if drain_s > 0 and self.is_ready() and not self.drain(drain_s):
                log.warning("could not confirm that in-flight requests finished within %.0f s; stopping", drain_s)
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


@contextlib.contextmanager
def local_server(repository: Path, ready_timeout_s: float = 180.0, **options) -> Iterator[TritonServer]:
    """A tritonserver on free 127.0.0.1 ports for tests and tools, stopped (by PID) whatever happens."""
    server = TritonServer(ServerOptions.on_free_ports(repository, **options))
    try:
        server.start().wait_until_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
