"""clip_preprocess on the GPU target: encoded images -> CLIP pixels on the GPU, handed to clip_visual by DLPack.

JPEGs are decoded by nvJPEG and resized, cropped and normalized on the GPU, everything else takes the exact
CPU path inside the same batch (clip_gpu_transform says which image goes where, and why the pixels match);
with `gpu_decode: false` every image takes the exact path. The pixels stay on this instance's GPU, in the
config's PIXEL_VALUES type (fp16 for the fp16 variant). An image that cannot be used fails only its own
request, with INVALID_ARGUMENT and a reason per bad element, exactly as on the CPU target. Where each batch's
time goes, stage by stage, and which path each image took are published on Triton's metrics port
(clip_stage_clock.py, clip_preprocess_metrics.py).
"""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
import triton_python_backend_utils as pb_utils
from PIL import Image
from torch.utils.dlpack import to_dlpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_batching import draining, gather_images, refuse_while_draining, respond  # noqa: E402  (shipped beside this file)
from clip_contract import PIXELS_TENSOR  # noqa: E402  (likewise)
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (likewise)
from clip_gpu_transform import BatchPreprocessor  # noqa: E402  (likewise)
from clip_mixed_resize import DEFAULT_MAX_PIXELS as DEFAULT_MIXED_RESIZE_MAX_PIXELS, use_tf32  # noqa: E402
from clip_pillow_resize import exact_method  # noqa: E402  (likewise)
from clip_preprocess_metrics import PreprocessMetrics  # noqa: E402  (likewise)
from clip_transform import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, Preprocessing  # noqa: E402

_DTYPES = {"TYPE_FP16": torch.float16, "TYPE_FP32": torch.float32}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        pixels = pb_utils.get_output_config_by_name(config, PIXELS_TENSOR)
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if args.get("model_instance_kind") == "GPU":
            device = torch.device("cuda", int(args["model_instance_device_id"]))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        Image.MAX_IMAGE_PIXELS = None  # our own limit (checked before decoding) governs in this process
        threads = int(parameters.get("decode_threads", "1")) or len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-decode")
        preprocessing = Preprocessing.from_parameters(parameters)  # the checkpoint's (OpenAI's if none named)
        self.preprocess = BatchPreprocessor(
            int(pixels["dims"][-1]), device, _DTYPES[pixels["data_type"]],
            preprocessing=preprocessing, gpu_decode=parameters.get("gpu_decode", "true") == "true",
            max_pixels=int(parameters.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)),
            max_bytes=int(parameters.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)),
            fast_jpeg=parameters.get("fast_jpeg_decode", "false") == "true", map_images=self.pool.map,
            mixed_resize_max_pixels=int(parameters.get("mixed_resize_max_pixels", DEFAULT_MIXED_RESIZE_MAX_PIXELS)))
        _, why_not_int8 = exact_method(device)
        if why_not_int8:
            pb_utils.Logger.log_warn(f"clip_preprocess: the GPU resize uses float64 products ({why_not_int8})")
        _, why_not_tf32 = use_tf32(device)
        if why_not_tf32:
            pb_utils.Logger.log_warn(f"clip_preprocess: the mixed-size GPU resize uses plain float32 products "
                                     f"({why_not_tf32})")
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping
        self.metrics = PreprocessMetrics(args, self.preprocess.clock)  # where the time goes, which path

    def execute(self, requests):
        if draining():  # the entry of every new encode: refuse it (retryable) so that the drain can finish
            return refuse_while_draining(requests)
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        clock = self.preprocess.clock
        with clock.stage("read_inputs"):
            images, counts = gather_images(requests)
        pixels, errors = self.preprocess(images)
        if pixels.is_cuda:  # Triton copies the outputs on its own stream: our kernels must have finished
            with clock.stage("gpu_wait"):
                torch.cuda.current_stream(pixels.device).synchronize()
        with clock.stage("respond"):
            return respond(counts, errors, lambda start, stop: pb_utils.Tensor.from_dlpack(
                PIXELS_TENSOR, to_dlpack(pixels[start:stop])))

    def finalize(self):
        self.metrics.close()
        self.preprocess.close()
        self.pool.shutdown(wait=True)
