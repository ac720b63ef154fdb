"""A tritonserver process: start it, wait until it is ready, drain it, stop it (always by PID).

The server runs in its own process group (so it can always be stopped as a whole, backend stubs
included). If its parent dies it gets SIGKILL at once: without its supervisor nobody can drain it (the
HTTP front that reports readiness and the drain file die with the parent), and a tritonserver left to its
own SIGTERM handling holds the ports for the whole exit timeout while answering NOT_FOUND. Killed, it
frees the ports within a second or two and its clients retry elsewhere.

Draining (`stop`): at once the HTTP front answers 503 on /v2/health/ready; the requests already waiting
in the entry model's queue start; then the drain file appears and the entry model refuses every later
request with UNAVAILABLE (retryable); accepted work finishes; then Triton ends. All within the exit
timeout.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from . import procfs, probes
from .http_front import HttpFront
from .installation import Installation, InstallationError, local_installation
from .options import ServerOptions, free_ports

# Where the drain signal reaches our models: clip_triton.contract.DRAIN_FILE_ENVIRONMENT (the container
# copies only this package, so the name is spelled here too; a test keeps them equal).
DRAIN_FILE_ENVIRONMENT = "CLIP_TRITON_DRAIN_FILE"
# The ensemble's first step, which refuses new requests while draining (contract.PREPROCESS_MODEL).
ENTRY_MODEL = "clip_preprocess"

log = logging.getLogger("clip_triton.server")


class ServerError(RuntimeError):
    """The server could not be started, or died; the message carries the end of its log."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if its parent dies (its own process group protects it from
    the parent's Ctrl-C, not from the parent's death). Why not SIGTERM: see the module docstring."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_orphaned_backend_stubs(timeout_s: float = 2.0) -> None:
    """SIGKILL the Python-backend stubs left by a tritonserver that was killed (procfs says which), and wait
    until they are gone, so that the shared memory they held is free."""
    orphans = procfs.orphaned_backend_stubs()
    for pid, instance in orphans.items():
        log.info("stopping backend stub %s (pid %d), left by a tritonserver that was killed", instance, pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(procfs.is_running(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.02)


class TritonServer:
    """A tritonserver process: start, wait until ready, stop (drain, SIGTERM, then SIGKILL) by PID.

    `installation` says which binary and backends to run; by default the local one from the
    nvidia-pytriton wheel. `log_path=None` writes the log to a temporary file; the container passes
    `inherit_output=True` so the log goes to the container's stdout.
    """

    def __init__(self, options: ServerOptions, log_path: Path | None = None,
                 installation: Installation | None = None, inherit_output: bool = False):
        self.options = options
        self.process: subprocess.Popen | None = None
        self._installation = installation
        self._inherit_output = inherit_output
        self._workdir = Path(tempfile.mkdtemp(prefix="clip-triton-server-"))
        self.log_path = log_path or self._workdir / "tritonserver.log"
        self.drain_file = self._workdir / "draining"
        self._front: HttpFront | None = None
        self._triton_http_port: int | None = None

    @property
    def grpc_url(self) -> str:
        return self.options.grpc_url

    @property
    def http_url(self) -> str:
        return self.options.http_url

    @property
    def metrics_url(self) -> str:
        return self.options.metrics_url

    @property
    def triton_http_url(self) -> str:
        """Triton's own HTTP endpoint behind the front (the supervisor's probes ask it, not the front)."""
        return f"http://127.0.0.1:{self._triton_http_port}" if self._triton_http_port else self.http_url

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "TritonServer":
        try:
            installation = self._installation or local_installation(self._workdir)
        except InstallationError as error:
            raise ServerError(str(error)) from None
        self.drain_file.unlink(missing_ok=True)
        stop_orphaned_backend_stubs()  # before their shared memory is looked at
        for path in procfs.orphaned_python_backend_shared_memory():
            log.info("removing %s, left by a tritonserver that was killed", path)
            path.unlink(missing_ok=True)
        self._triton_http_port = self._private_http_port()
        try:
            self._front = HttpFront(self.options.host, self.options.http_port, self._triton_http_port).start()
        except OSError as error:
            raise ServerError(f"cannot listen on HTTP {self.options.host}:{self.options.http_port}: {error}") from None
        command = self.options.command(installation.binary, installation.backends, self._triton_http_port)
        log.info("starting %s", " ".join(command))
        environment = {**installation.environment, DRAIN_FILE_ENVIRONMENT: str(self.drain_file)}
        with contextlib.ExitStack() as stack:
            output = None if self._inherit_output else stack.enter_context(open(self.log_path, "ab"))
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT if output else None, stdin=subprocess.DEVNULL,
                env=environment, start_new_session=True,
                # The parent-death signal follows the *thread* that forks: from any other thread it would
                # kill the server as soon as that thread ends (e.g. a restart done in a helper thread).
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        return self

    def _private_http_port(self) -> int:
        """A free loopback port for Triton's own HTTP endpoint, none of the ports the options name (those are
        free until Triton and the front bind them, so a bare free_port() could hand one of them out again)."""
        taken = {self.options.grpc_port, self.options.http_port, self.options.metrics_port}
        return next(port for port in free_ports(len(taken) + 1) if port not in taken)

    def is_ready(self) -> bool:
        """Triton itself is ready (what the front reports too, until a drain starts)."""
        return probes.is_ready(self.triton_http_url)

    def wait_until_ready(self, timeout_s: float = 120.0) -> "TritonServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"tritonserver exited during start-up:\n{self.log_tail()}")
            if self.is_ready():
                log.info("ready: gRPC %s, HTTP %s, metrics %s (pid %d)", self.grpc_url, self.http_url,
                         self.metrics_url, self.pid)
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def backend_stubs(self) -> dict[int, str]:
        """Live Python-backend stub processes of this server: pid -> model instance (e.g. clip_preprocess_0_0).

        Triton 2.51 does not restart a stub that dies: the model stays READY and every request to it
        fails with INTERNAL "Stub process ... is not healthy". Watching these PIDs is how `serve` notices.
        """
        return procfs.backend_stubs(self.process.pid) if self.process is not None else {}

    def rss_bytes(self) -> int:
        """Resident memory of tritonserver and its backend stubs together."""
        return procfs.tree_rss_bytes(self.process.pid) if self.process is not None else 0

    def in_flight(self) -> int | None:
        """Requests queued or executing right now (None if the metrics cannot be read)."""
        return probes.requests_in_flight(self.metrics_url)

    def begin_drain(self) -> None:
        """Report not-ready on the HTTP front from now on (load balancers stop sending)."""
        if self._front is not None:
            self._front.drain()

    def drain(self, timeout_s: float) -> bool:
        """Not ready at once; refuse new requests (UNAVAILABLE) once those queued before have started; wait
        until accepted work has finished. At most `timeout_s`, while the process lives; returns whether it did."""
        deadline = time.monotonic() + timeout_s
        self.begin_drain()
        self._refuse_new_requests(deadline)
        return probes.wait_until_idle(self.metrics_url, max(0.0, deadline - time.monotonic()), alive=self.alive,
                                      unqueued_models=(ENTRY_MODEL,))

    def _refuse_new_requests(self, deadline: float) -> None:
        """Create the drain file once the entry model has completed the requests it held when asked."""
        progress = probes.queue_progress(self.metrics_url, ENTRY_MODEL)
        if progress is not None:
            target = sum(progress)
            while time.monotonic() < deadline and self.alive():
                progress = probes.queue_progress(self.metrics_url, ENTRY_MODEL)
                if progress is None or progress[0] >= target:
                    break
                time.sleep(0.02)
        self.drain_file.touch()

    def stop(self, drain_s: float | None = None) -> int | None:
        """Drain (not ready at once, new requests refused, accepted ones finish within `drain_s`, default the
        exit timeout), then end tritonserver with SIGKILL and remove its shared memory. Returns the exit code.

        Why not Triton's own SIGTERM handling after the drain: there is no accepted work left for it to
        finish, and it spends seconds unloading models while answering new requests with NOT_FOUND (1 to 3 s
        measured on the tiny test models; longer for large ones) and finally cancelling them.
        """
        if self.process is None:
            return None
        if self.alive():
            drain_s = self.options.exit_timeout_s if drain_s is None else drain_s
            if drain_s > 0 and self.is_ready() and not self.drain(drain_s):
                log.warning("could not confirm that in-flight requests finished within %.0f s; stopping", drain_s)
        self.kill()
        self.drain_file.unlink(missing_ok=True)
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (server and backend stubs), then remove what a crash leaves behind:
        the Python backend's shared memory, and our HTTP front's port."""
        if self.alive():
            shared_memory = procfs.python_backend_shared_memory(self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            for path in shared_memory:
                path.unlink(missing_ok=True)
        self._stop_front()

    def _stop_front(self) -> None:
        if self._front is not None:
            self._front.stop()
            self._front = None

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
def local_server(repository: Path, ready_timeout_s: float = 180.0, log_path: Path | None = None,
                 **options) -> Iterator[TritonServer]:
    """A tritonserver on free 127.0.0.1 ports for tests and tools, stopped (by PID) whatever happens."""
    server = TritonServer(ServerOptions.on_free_ports(repository, **options), log_path=log_path)
    try:
        server.start().wait_until_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
