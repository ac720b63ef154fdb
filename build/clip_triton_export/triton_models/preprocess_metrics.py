"""clip_preprocess's own metrics on Triton's metrics port, from its StageClock (clip_stage_clock.py).

Shipped beside both clip_preprocess models as `clip_preprocess_metrics.py`. Two counters per instance:
- `clip_triton_preprocess_seconds_total{model, model_instance, stage}`: the seconds its batches spent in each
  stage. Divided by the images, this is each stage's time per image;
- `clip_triton_preprocess_images_total{model, model_instance, path}`: the images it handled, by path (gpu, cpu,
  refused). This shows how many images miss the GPU path, the PNGs for example.

A thread publishes the totals every PUBLISH_INTERVAL_S. Each increment is a round trip to the Triton
process (measured 30-175 us each on our 2-vCPU VM), and a GPU batch has up to nine to publish. Publishing
from execute() would add that to every batch's latency. A stage's time is added when the stage ends, so the metrics lag the work by
up to one interval plus the batch in progress.
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
        self._failing = False  # one warning per run of failed intervals, not one every 0.5 s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clip-preprocess-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._publish_or_warn()

    def _publish_or_warn(self) -> None:
        try:
            self.publish()
        except Exception as error:  # noqa: BLE001 - kept for the next interval; the metrics must go on
            if not self._failing:
                pb_utils.Logger.log_warn(f"clip_preprocess: metrics not published (kept for the next try): {error!r}")
            self._failing = True
        else:
            self._failing = False

    def publish(self) -> None:
        """Add what the clock counted since the last publish to the counters; what could not be added goes
        back to the clock."""
        seconds, images = self.clock.take()
        left_seconds, left_images = dict(seconds), dict(images)
        try:
            for stage, value in seconds.items():
                if value > 0:
                    self.seconds[stage].increment(value)
                left_seconds.pop(stage)
            for path, count in images.items():
                if count > 0:
                    self.images[path].increment(count)
                left_images.pop(path)
        except Exception:
            self.clock.add(left_seconds, left_images)
            raise

    def close(self) -> None:
        """Stop the thread and publish the rest (a failure is logged: a model's finalize must go on)."""
        self._stop.set()
        self._thread.join()
        self._publish_or_warn()
