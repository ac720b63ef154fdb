"""clip_preprocess: encoded image bytes -> CLIP pixels, exactly OpenAI's `clip.load` transform (with the
checkpoint's own mean/std, filter and sizes where its config's parameters name them).

Runs in Triton's Python backend. One `execute` call receives every request the dynamic batcher
gathered; their images are decoded on `decode_threads` threads (0: one per core this process may
use; each thread holds at most one decoded image), then normalized together in one numpy pass. An
image that cannot be decoded fails only its own request, with INVALID_ARGUMENT and a reason per bad
element. The time its batches spend per stage and the images it served or refused are published on Triton's
metrics port (clip_stage_clock.py, clip_preprocess_metrics.py).
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_batching import draining, gather_images, refuse_while_draining, respond  # noqa: E402  (shipped beside this file)
from clip_contract import PIXELS_TENSOR  # noqa: E402  (likewise)
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (likewise)
from clip_preprocess_metrics import PreprocessMetrics  # noqa: E402  (likewise)
from clip_stage_clock import CPU_TARGET_PATHS, CPU_TARGET_STAGES, StageClock  # noqa: E402  (likewise)
from clip_transform import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, Preprocessing, preprocess_batch  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        pixels = pb_utils.get_output_config_by_name(config, PIXELS_TENSOR)
        self.size = int(pixels["dims"][-1])
        parameters = config.get("parameters", {})
        self.max_pixels = int(parameters.get("max_image_pixels", {}).get("string_value", DEFAULT_MAX_IMAGE_PIXELS))
        self.max_bytes = int(parameters.get("max_image_bytes", {}).get("string_value", DEFAULT_MAX_IMAGE_BYTES))
        self.fast_jpeg = parameters.get("fast_jpeg_decode", {}).get("string_value", "false") == "true"
        # The checkpoint's own mean/std, filter and sizes (OpenAI's where the config names none).
        self.preprocessing = Preprocessing.from_parameters({k: v["string_value"] for k, v in parameters.items()})
        Image.MAX_IMAGE_PIXELS = None  # our own limit (checked before decoding) governs in this process
        threads = int(parameters.get("decode_threads", {}).get("string_value", "1")) or len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-decode") if threads > 1 else None
        self.map_images = self.pool.map if self.pool is not None else map
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping
        self.clock = StageClock(CPU_TARGET_STAGES, CPU_TARGET_PATHS)
        self.metrics = PreprocessMetrics(args, self.clock)  # where the time goes, how many were refused

    def execute(self, requests):
        if draining():  # the entry of every new encode: refuse it (retryable) so that the drain can finish
            return refuse_while_draining(requests)
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        clock = self.clock
        with clock.stage("read_inputs"):
            images, counts = gather_images(requests)
        with clock.stage("cpu_path"):
            pixels, errors = preprocess_batch(images, self.size, self.max_pixels, self.max_bytes, self.fast_jpeg,
                                              self.map_images, self.preprocessing)
        clock.count("cpu", len(images) - len(errors))
        clock.count("refused", len(errors))
        with clock.stage("respond"):
            return respond(counts, errors, lambda start, stop: pb_utils.Tensor(PIXELS_TENSOR, pixels[start:stop]))

    def finalize(self):
        self.metrics.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
