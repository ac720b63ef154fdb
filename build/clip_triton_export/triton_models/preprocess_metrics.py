"""clip_preprocess's own metrics on Triton's metrics port, from its StageClock (clip_stage_clock.py).

Shipped beside both clip_preprocess models as `clip_preprocess_metrics.py`. Two counters per instance:
- `clip_triton_preprocess_seconds_total{model, model_instance, stage}`: the seconds its batches spent in each
  stage. Divided by the images, this is each stage's time per image;
- `clip_triton_preprocess_images_total{model, model_instance, path}`: the images it handled, by path (gpu, cpu,
  refused). This shows how many images miss the GPU path, the PNGs for example.

A thread publishes the totals every PUBLISH_INTERVAL_S. Each increment is a round trip to the Triton
process (measured 30-175 us each on our 2-vCPU VM), and a GPU batch has up to nine to publish. Publishing
from execute() would add that to every batch's latency. The metrics lag the work by at most one interval.
"""
import threading

import triton_python_backend_utils as pb_utils

from clip_stage_clock import StageClock

PUBLISH_INTERVAL_S = 0.5


class PreprocessMetrics:
    """Publishes `clock`'s totals for this instance until `close()`, which publishes the last of them."""

    def __init__(self, args, clock: StageClock, interval_s: float = PUBLISH_INTERVAL_S):
        # Not `instance`: Prometheus sets that label to the scrape target and would rename ours.
        labels = {"model": args["model_name"], "model_instance": args["model_instance_name"]}
        # The families are kept alive: Triton refuses to update a metric whose family was garbage-collected.
        self.seconds_family = pb_utils.MetricFamily(
            name="clip_triton_preprocess_seconds_total", kind=pb_utils.MetricFamily.COUNTER,
            description="Seconds clip_preprocess batches spent in each stage (wall time on the model's thread)")
        self.images_family = pb_utils.MetricFamily(
            name="clip_triton_preprocess_images_total", kind=pb_utils.MetricFamily.COUNTER,
            description="Images clip_preprocess handled, by path: gpu, cpu (the exact CPU path) or refused")
        # Every series exists from the start (at 0), so rates and dashboards see it before its first image.
        self.seconds = {stage: self.seconds_family.Metric(labels={**labels, "stage": stage}) for stage in clock.stages}
        self.images = {path: self.images_family.Metric(labels={**labels, "path": path}) for path in clock.paths}
        self.clock, self.interval_s = clock, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clip-preprocess-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except Exception as error:  # noqa: BLE001 - a lost interval must not stop the metrics for good
                pb_utils.Logger.log_warn(f"clip_preprocess: metrics not published for one interval: {error!r}")

    def publish(self) -> None:
        seconds, images = self.clock.take()
        for stage, value in seconds.items():
            if value > 0:
                self.seconds[stage].increment(value)
        for path, count in images.items():
            if count > 0:
                self.images[path].increment(count)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.publish()
