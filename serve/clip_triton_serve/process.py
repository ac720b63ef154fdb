"""A tritonserver process: start it, wait until it is ready, drain it, stop it (always by PID).

The server runs in its own process group (so it can always be stopped as a whole, backend stubs
included) and gets SIGTERM if its parent dies, so no tritonserver is ever orphaned.
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
from .installation import Installation, InstallationError, local_installation
from .options import ServerOptions

log = logging.getLogger("clip_triton.server")


class ServerError(RuntimeError):
    """The server could not be started, or died; the message carries the end of its log."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if its parent dies (its own process group protects it from
    the parent's Ctrl-C, not from the parent's death)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "TritonServer":
        try:
            installation = self._installation or local_installation(self._workdir)
        except InstallationError as error:
            raise ServerError(str(error)) from None
        command = self.options.command(installation.binary, installation.backends)
        log.info("starting %s", " ".join(command))
        with contextlib.ExitStack() as stack:
            output = None if self._inherit_output else stack.enter_context(open(self.log_path, "ab"))
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT if output else None, stdin=subprocess.DEVNULL,
                env=installation.environment, start_new_session=True,
                # The parent-death signal follows the *thread* that forks: from any other thread it would
                # SIGTERM the server as soon as that thread ends (e.g. a restart done in a helper thread).
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        return self

    def is_ready(self) -> bool:
        return probes.is_ready(self.http_url)

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

    def drain(self, timeout_s: float) -> bool:
        """`wait_until_idle` on this server, while its process lives. Returns whether it went idle."""
        return probes.wait_until_idle(self.metrics_url, timeout_s, alive=self.alive)

    def stop(self, timeout_s: float | None = None, drain_s: float | None = None) -> int | None:
        """Drain in-flight requests (at most `drain_s`, default the exit timeout), SIGTERM the process
        group, wait `timeout_s` for Triton's own exit, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.alive():
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
        if self.alive():
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
def local_server(repository: Path, ready_timeout_s: float = 180.0, log_path: Path | None = None,
                 **options) -> Iterator[TritonServer]:
    """A tritonserver on free 127.0.0.1 ports for tests and tools, stopped (by PID) whatever happens."""
    server = TritonServer(ServerOptions.on_free_ports(repository, **options), log_path=log_path)
    try:
        server.start().wait_until_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
