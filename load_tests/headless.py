"""The one way our tools run locust: headless, bounded, on load_tests/locustfile.py, with every output file.

`make loadtest`, `make soak` and `make overload-report` all build their command here, so they share
the locustfile, the stop timeout (users finish the request in flight) and the output files that
measure.locust_output reads (`--csv`, `--json-file`). Locust runs as a subprocess: importing it here
would monkey-patch this process for gevent.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .phases import Phase, format_phases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCUSTFILE = HERE / "locustfile.py"
SHAPES = HERE / "shapes.py"
STOP_TIMEOUT_S = 30


def locust_command(url: str, prefix: Path, *, users: int = 1, run_time: str = "20s", spawn_rate: float = 0,
                   phases: Sequence[Phase] = (), images: Path | None = None, images_per_request: int = 1,
                   html: bool = False, options: Sequence[str] = ()) -> list[str]:
    """locust's command line: `users` for `run_time`, or the named `phases` (then users and run time are unused).

    Failed requests do not change the exit code (`--exit-code-on-error 0`): judging them is the caller's
    job, from the output files; a non-zero exit means locust itself failed. Run it with `cwd=ROOT`.
    """
    files = f"{LOCUSTFILE},{SHAPES}" if phases else str(LOCUSTFILE)
    prefix = Path(prefix).resolve()
    command = [sys.executable, "-m", "locust", "-f", files, "--headless", "--only-summary",
               "--stop-timeout", str(STOP_TIMEOUT_S), "--host", url, "--csv", str(prefix), "--json-file", str(prefix),
               "--exit-code-on-error", "0", "--images-per-request", str(images_per_request)]
    if phases:
        command += ["--phases", format_phases(phases)]
    else:
        users = max(1, users)
        command += ["--users", str(users), "--spawn-rate", str(spawn_rate or users), "--run-time", run_time]
    if html:
        command += ["--html", f"{prefix}.html"]
    if images:
        command += ["--images", str(Path(images).resolve())]
    return command + list(options)


def start(command: list[str], log_path: Path) -> subprocess.Popen:
    """Launch a locust command from the checkout's root, its output going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def finish(process: subprocess.Popen, log_path: Path, timeout_s: float | None = None) -> None:
    """Wait for locust to end (killing it after `timeout_s`); an error with the log's end if locust itself failed."""
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"locust exited with {process.returncode}:\n{tail}")
