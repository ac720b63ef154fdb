"""The `clip_triton_executing_requests` gauge, shipped beside each of our Python-backend models.

Triton's `nv_inference_pending_request_count` counts queued requests only; this gauge counts the ones
inside `execute()`, so `clip-triton serve` (and the container entrypoint) can tell when in-flight work
has drained before stopping the server. One file, copied into each model directory by the exporter.
"""
import contextlib

import triton_python_backend_utils as pb_utils


class ExecutingGauge:
    """Per-instance gauge; keeps its family alive (Triton refuses to update a gauge whose family was
    garbage-collected)."""

    def __init__(self, args):
        self.family = pb_utils.MetricFamily(name="clip_triton_executing_requests",
                                            description="Requests inside a model's execute() right now",
                                            kind=pb_utils.MetricFamily.GAUGE)
        self.metric = self.family.Metric(labels={"model": args["model_name"],
                                                 "model_instance": args["model_instance_name"]})

    @contextlib.contextmanager
    def tracking(self, requests):
        self.metric.increment(len(requests))
        try:
            yield
        finally:
            self.metric.increment(-len(requests))
