"""Time-bounded repetition and latency percentiles, shared by every measurement."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of durations given in seconds, in milliseconds."""
    if len(seconds) == 0:
        return {**{f"p{p}": 0.0 for p in PERCENTILES}, "mean": 0.0}
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    summary = {f"p{p}": round(float(np.percentile(values, p)), 2) for p in PERCENTILES}
    summary["mean"] = round(float(values.mean()), 2)
    return summary


def repeat_for(step: Callable[[], int], seconds: float, warmup_steps: int = 1, min_steps: int = 2) -> dict:
    """Run `step` (which returns how many images it handled) for at least `seconds` and `min_steps`.

    Warm-up steps run first and are not counted: first calls pay for lazy initialisation and cold caches.
    """
    for _ in range(warmup_steps):
        step()
    durations: list[float] = []
    images = 0
    started = time.perf_counter()
    while len(durations) < min_steps or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        images += step()
        durations.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    return {
        "images": images, "steps": len(durations), "seconds": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 3), "step_latency_ms": latency_summary(durations),
    }
