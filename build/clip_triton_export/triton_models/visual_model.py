"""clip_visual on CPU: the exported encoder run by OpenVINO, ONNX Runtime or torch (TorchScript) inside the Python backend.

Same inputs and outputs as the native backends use in the Triton container. Every request of a dynamic
batch is concatenated and goes through the model in one call (which clip_visual_runtime may split
across cores; see there why).
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_batching import respond  # noqa: E402  (shipped beside this file)
from clip_contract import EMBEDDING_OUTPUT, PIXELS_TENSOR  # noqa: E402  (likewise)
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (likewise)
from clip_visual_runtime import open_configured_runner  # noqa: E402  (likewise)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], parameters["artifact"])
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping
        self.run = open_configured_runner(parameters, path)

    def execute(self, requests):
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, PIXELS_TENSOR).as_numpy() for r in requests]
        pixels = batches[0] if len(batches) == 1 else np.concatenate(batches)
        embeddings = np.ascontiguousarray(self.run(np.ascontiguousarray(pixels, dtype=np.float32)), dtype=np.float32)
        return respond([len(batch) for batch in batches], {},
                       lambda start, stop: pb_utils.Tensor(EMBEDDING_OUTPUT, embeddings[start:stop]))

    def finalize(self):
        self.run.close()
