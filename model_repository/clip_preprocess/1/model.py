"""clip_preprocess: encoded image bytes -> CLIP pixels, exactly OpenAI's `clip.load` transform.

Runs in Triton's Python backend. One `execute` call receives every request the dynamic batcher
gathered; their images are decoded on `decode_threads` threads (0: one per core this process may
use; each thread holds at most one decoded image), then normalized together in one numpy pass. An
image that cannot be decoded fails only its own request, with INVALID_ARGUMENT and a reason per bad
element.
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (shipped beside this file)
from clip_transform import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, preprocess_batch  # noqa: E402  (likewise)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        pixels = pb_utils.get_output_config_by_name(config, "PIXEL_VALUES")
        self.size = int(pixels["dims"][-1])
        parameters = config.get("parameters", {})
        self.max_pixels = int(parameters.get("max_image_pixels", {}).get("string_value", DEFAULT_MAX_IMAGE_PIXELS))
        self.max_bytes = int(parameters.get("max_image_bytes", {}).get("string_value", DEFAULT_MAX_IMAGE_BYTES))
        self.fast_jpeg = parameters.get("fast_jpeg_decode", {}).get("string_value", "false") == "true"
        Image.MAX_IMAGE_PIXELS = None  # our own limit (checked before decoding) governs in this process
        threads = int(parameters.get("decode_threads", {}).get("string_value", "1")) or len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-decode") if threads > 1 else None
        self.map_images = self.pool.map if self.pool is not None else map
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping

    def execute(self, requests):
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        images, counts = [], []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            images.extend(bytes(blob) for blob in blobs)
            counts.append(len(blobs))
        pixels, errors = preprocess_batch(images, self.size, self.max_pixels, self.max_bytes, self.fast_jpeg,
                                          self.map_images)

        responses, first, good = [], 0, 0
        for count in counts:
            bad = {index - first: errors[index] for index in range(first, first + count) if index in errors}
            if bad:
                reasons = "; ".join(f"IMAGE[{index}]: {reason}" for index, reason in sorted(bad.items()))
                error = pb_utils.TritonError(reasons, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                output = pb_utils.Tensor("PIXEL_VALUES", pixels[good:good + count])
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            good += count - len(bad)
            first += count
        return responses

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
