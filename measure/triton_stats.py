"""Triton's statistics API as perf_analyzer reads it: per-model deltas over a measurement window.

Triton keeps cumulative counters per model. Two snapshots, one at each end of a window, give what
happened inside it: requests, inferences (batch elements), executions (model calls), and the
nanoseconds spent queued and in compute input / infer / output. Each request of a dynamic batch is
charged the whole batch's compute time, so per-request averages are what a request experienced;
`batch_compute_ns` (from `batch_stats`) counts each execution once, which is what the server spent.
"""
from __future__ import annotations

from typing import Any

Snapshot = dict[str, dict[str, int]]

_DURATIONS = ("success", "queue", "compute_input", "compute_infer", "compute_output")
_COMPUTE = ("compute_input", "compute_infer", "compute_output")


def fetch(url: str, model: str = "") -> dict[str, Any]:
    """`get_inference_statistics(as_json=True)` of one model, or of every model when `model` is empty."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        return client.get_inference_statistics(model, as_json=True)


def snapshot(statistics_json: dict[str, Any]) -> Snapshot:
    """Flatten `get_inference_statistics(as_json=True)` to {model: {counter: int}} (JSON gives strings)."""
    flat: Snapshot = {}
    for model in statistics_json.get("model_stats", []):
        stats = model.get("inference_stats", {})
        counters = {
            "inference_count": int(model.get("inference_count", 0)),
            "execution_count": int(model.get("execution_count", 0)),
            "fail_count": int(stats.get("fail", {}).get("count", 0)),
            "batch_compute_ns": sum(int(batch.get(part, {}).get("ns", 0))
                                    for batch in model.get("batch_stats", []) for part in _COMPUTE),
        }
        for name in _DURATIONS:
            counters[f"{name}_count"] = int(stats.get(name, {}).get("count", 0))
            counters[f"{name}_ns"] = int(stats.get(name, {}).get("ns", 0))
        flat[model["name"]] = counters
    return flat


def read(url: str, model: str = "") -> Snapshot:
    """A snapshot taken now from the server at `url`."""
    return snapshot(fetch(url, model))


def deltas(before: Snapshot, after: Snapshot) -> Snapshot:
    """Per model, each counter's growth between two snapshots."""
    return {model: {key: value - before.get(model, {}).get(key, 0) for key, value in end.items()}
            for model, end in after.items()}


def window(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Per model, what happened between two snapshots, as averages per request (milliseconds)."""
    breakdown: dict[str, dict[str, float]] = {}
    for model, delta in deltas(before, after).items():
        requests = delta["success_count"]
        executions = delta["execution_count"]
        breakdown[model] = {
            "requests": requests,
            "failures": delta["fail_count"],
            "inferences": delta["inference_count"],
            "executions": executions,
            "avg_batch_size": delta["inference_count"] / executions if executions else 0.0,
            # "success" is the whole time a successful request spent in this model, queue included.
            "request_ms": _average_ms(delta["success_ns"], delta["success_count"]),
            **{f"{name}_ms": _average_ms(delta[f"{name}_ns"], delta[f"{name}_count"]) for name in _DURATIONS[1:]},
        }
    return breakdown


def _average_ms(total_ns: int, count: int) -> float:
    return total_ns / count / 1e6 if count else 0.0
