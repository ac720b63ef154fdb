"""Where a preprocessing batch's time goes, stage by stage, and which path each image took.

Shipped beside both clip_preprocess models as `clip_stage_clock.py`. It is plain Python, so the in-process
benchmark and the tests use it too. The models publish its totals as Triton metrics
(clip_preprocess_metrics.py). A GPU run's figures then say what holds a batch up: decoding, the resize,
the exact CPU path or the GPU's queue. No profiler is needed and no synchronization is added: each stage is
wall time on the model's own thread, so a stage that only queues GPU work shows the time to queue it, and
`gpu_wait` shows what the GPU still had to do when the batch was ready to answer.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

# Every stage either model can report, in the order a batch meets them:
# - read_inputs: the requests' IMAGE elements read into one list;
# - inspect (GPU target): each JPEG's header read, to route it and check the size limits before decoding;
# - gpu_decode: nvJPEG decoding (torchvision waits for it, so this is the decoding itself);
# - gpu_resize: the GPU resize, crop and normalization queued (weights for new sizes included);
# - cpu_path: the exact CPU path. On the CPU target it is the whole transform. On the GPU target it runs
#   beside the GPU work, so this is what the batch still waited for it afterwards, plus the exact path of the
#   JPEGs nvJPEG refused (known only after decoding, so run after the GPU work);
# - assemble: the pixels of both paths put in input order, in the model's dtype, on its device (the CPU
#   path's are queued behind the GPU work without waiting for it);
# - gpu_wait: waiting for the GPU to finish the batch's queued work before Triton takes the pixels;
# - respond: one response per request.
STAGES = ("read_inputs", "inspect", "gpu_decode", "gpu_resize", "cpu_path", "assemble", "gpu_wait", "respond")
CPU_TARGET_STAGES = ("read_inputs", "cpu_path", "respond")
# gpu: decoded and resized on the GPU; cpu: the exact CPU path; refused: bad input, answered with its reason.
PATHS = ("gpu", "cpu", "refused")
CPU_TARGET_PATHS = ("cpu", "refused")


class StageClock:
    """Seconds per stage and images per path since the last `take()`. Thread-safe: a model's batches add to
    it while a publisher thread takes the totals."""

    def __init__(self, stages: tuple[str, ...] = STAGES, paths: tuple[str, ...] = PATHS):
        self.stages, self.paths = stages, paths
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(stages, 0.0)
        self._images = dict.fromkeys(paths, 0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (added even when the block raises: the time was spent)."""
        if name not in self._seconds:
            raise ValueError(f"unknown stage {name!r}; this clock has {self.stages}")
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._seconds[name] += elapsed

    def add(self, seconds: dict[str, float], images: dict[str, int]) -> None:
        """Put totals back (a publisher's that could not be published), to go out with the next ones."""
        with self._lock:
            for stage, value in seconds.items():
                self._seconds[stage] += value
            for path, count in images.items():
                self._images[path] += count

    def count(self, path: str, images: int) -> None:
        if path not in self._images:
            raise ValueError(f"unknown path {path!r}; this clock has {self.paths}")
        with self._lock:
            self._images[path] += images

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        """(seconds per stage, images per path) accumulated since the last take, and start again from zero."""
        with self._lock:
            seconds, images = self._seconds, self._images
            self._seconds = dict.fromkeys(self.stages, 0.0)
            self._images = dict.fromkeys(self.paths, 0)
        return seconds, images
