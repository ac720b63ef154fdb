"""clip_visual on the GPU target: the TorchScript encoder run by torch on the instance's device.

Inputs arrive as DLPack tensors where they are (on the GPU when clip_preprocess made them there, which
`FORCE_CPU_ONLY_INPUT_TENSORS: no` allows), in the config's PIXEL_VALUES type (fp16 for the fp16 variant:
what OpenAI's fp16 model casts its images to anyway). Every request of a dynamic batch goes through the
model in one call; the features come back as float32 on the host (a few KB per image). On a GPU, batches up to
the config's `cuda_graph_batch_sizes` replay CUDA graphs captured at start (clip_cuda_graphs says why); the
`clip_triton_cuda_graphs` gauge says how many each instance captured (0: it runs eagerly; its log says why).
"""
import json
import os
import sys
import traceback
from typing import Callable

import torch
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_batching import respond  # noqa: E402  (shipped beside this file)
from clip_contract import EMBEDDING_OUTPUT, PIXELS_TENSOR  # noqa: E402  (likewise)
from clip_cuda_graphs import GraphedBatches, cuda_graph_capture, parse_batch_sizes  # noqa: E402  (likewise)
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (likewise)

_DTYPES = {"TYPE_FP16": torch.float16, "TYPE_FP32": torch.float32}


def instance_device(args) -> torch.device:
    """The GPU Triton gave this instance (KIND_GPU), else the CPU (a KIND_CPU instance, e.g. in CI)."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        pixels = pb_utils.get_input_config_by_name(config, PIXELS_TENSOR)
        self.dtype = _DTYPES[pixels["data_type"]]
        self.device = instance_device(args)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        path = os.path.join(args["model_repository"], args["model_version"], parameters["artifact"])
        self.module = torch.jit.load(path, map_location=self.device).eval()
        shape = [int(d) for d in pixels["dims"]]
        with torch.inference_mode():  # first call: kernel selection and allocator warm-up, not a user's request
            self.module(torch.zeros(1, *shape, dtype=self.dtype, device=self.device))
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping
        self.run = self.module
        sizes = parse_batch_sizes(parameters.get("cuda_graph_batch_sizes", ""))
        if self.device.type == "cuda" and sizes:
            self.run = self._graphed(torch.zeros(shape, dtype=self.dtype, device=self.device), sizes)
        self.graphs_family = pb_utils.MetricFamily(
            name="clip_triton_cuda_graphs", kind=pb_utils.MetricFamily.GAUGE,
            description="Batch sizes clip_visual replays from CUDA graphs (0: every batch runs eagerly)")
        self.graphs_metric = self.graphs_family.Metric(labels={"model": args["model_name"],
                                                               "model_instance": args["model_instance_name"]})
        self.graphs_metric.set(len(self.run.sizes) if isinstance(self.run, GraphedBatches) else 0)

    def _graphed(self, image: torch.Tensor, sizes: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The module behind CUDA graphs of `sizes`, or the module alone (logged) if a capture fails."""
        def unoptimized(pixels: torch.Tensor) -> torch.Tensor:
            with torch.jit.optimized_execution(False):
                return self.module(pixels)

        try:
            with torch.inference_mode():
                # batches beyond the graphs run optimized
                graphed = GraphedBatches(unoptimized, image, sizes, cuda_graph_capture(), eager=self.module)
        except Exception:  # noqa: BLE001 - serving eagerly is slower, not wrong
            # torch.cuda.graph leaves its capture stream current when the capture fails: back to the default.
            torch.cuda.set_stream(torch.cuda.default_stream(self.device))
            torch.cuda.synchronize(self.device)
            # The whole chain: the error that broke the capture is the context of the one capture_end raises.
            pb_utils.Logger.log_warn("clip_visual: CUDA graphs not captured, every batch runs eagerly (set "
                                     "cuda_graph_batch_sizes to \"\" to skip the attempt):\n" + traceback.format_exc())
            return self.module
        pb_utils.Logger.log_info(f"clip_visual: CUDA graphs captured for batch sizes {list(graphed.sizes)}")
        return graphed

    def execute(self, requests):
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        batches = [torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, PIXELS_TENSOR).to_dlpack())
                   for r in requests]
        pixels = batches[0] if len(batches) == 1 else torch.cat(batches)
        with torch.inference_mode():
            features = self.run(pixels.to(self.device, self.dtype)).float().cpu().numpy()
        return respond([len(batch) for batch in batches], {},
                       lambda start, stop: pb_utils.Tensor(EMBEDDING_OUTPUT, features[start:stop]))
