"""Questions asked of a running server over HTTP: is it ready, is anything still in flight, has it drained.

The one readiness probe (used by `TritonServer`, the supervisor and the container healthcheck) and the
drain that waits for in-flight requests before a server is stopped.
"""
from __future__ import annotations

import time
import urllib.request
from typing import Callable


def is_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """Triton answers 200 on /v2/health/ready (with strict readiness: every model, the ensemble included)."""
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def _metrics_text(metrics_url: str) -> str | None:
    """The Prometheus text of a server's metrics endpoint (None if it cannot be read)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def requests_in_flight(metrics_url: str, unqueued_models: tuple[str, ...] = ()) -> int | None:
    """Requests queued or executing in a server, from its metrics endpoint (None if it cannot be read).

    Triton's `nv_inference_pending_request_count` covers queued requests only; our Python models add
    `clip_triton_executing_requests` for the ones inside `execute()`. Queued requests of `unqueued_models`
    are not counted: while a server drains, its entry model refuses what waits in its queue.
    """
    text = _metrics_text(metrics_url)
    if text is None:
        return None
    skipped = tuple(f'nv_inference_pending_request_count{{model="{model}"' for model in unqueued_models)
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("nv_inference_pending_request_count{", "clip_triton_executing_requests{"))
                   and not line.startswith(skipped)))


def queue_progress(metrics_url: str, model: str) -> tuple[int, int] | None:
    """(requests `model` has completed, requests it holds now: queued or executing), from one metrics reading.

    A drain lets the requests that were waiting when it began go first: `model` answers them before any
    later one (its queue is first in, first out), so once it has completed as many more as it held, every
    request it receives is a new one. None if the metrics cannot be read.
    """
    text = _metrics_text(metrics_url)
    if text is None:
        return None
    completed = holding = 0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        value = int(float(line.rsplit(" ", 1)[1]))
        if line.startswith(("nv_inference_request_success{", "nv_inference_request_failure{")):
            completed += value
        elif line.startswith(("nv_inference_pending_request_count{", "clip_triton_executing_requests{")):
            holding += value
    return completed, holding


def wait_until_idle(metrics_url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True,
                    poll_s: float = 0.05, settle_s: float = 0.5, unqueued_models: tuple[str, ...] = ()) -> bool:
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
        count = requests_in_flight(metrics_url, unqueued_models)
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
