"""clip_visual on CPU: the exported encoder run by ONNX Runtime, OpenVINO (int8) or TorchScript inside the Python backend.

Same inputs and outputs as the native onnxruntime/pytorch backends use on GPU. Every request of a
dynamic batch is concatenated and goes through the model in one call.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_executing_gauge import ExecutingGauge  # noqa: E402  (shipped beside this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], parameters["artifact"])
        threads = int(parameters.get("intra_op_threads", "0"))
        self.executing = ExecutingGauge(args)  # read by `clip-triton serve` to drain before stopping
        if parameters["runtime"] == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            # Spinning worker threads burn the cores the preprocessing model needs between batches.
            options.add_session_config_entry("session.intra_op.allow_spinning", parameters.get("allow_spinning", "1"))
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.run = lambda pixels: session.run(["EMBEDDING"], {"PIXEL_VALUES": pixels})[0]
        elif parameters["runtime"] == "openvino":
            import openvino

            config = {"PERFORMANCE_HINT": "LATENCY"}  # one stream: a whole dynamic batch per call
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            request = openvino.Core().compile_model(path, "CPU", config).create_infer_request()
            # The result is a view of OpenVINO's output buffer, which the next call overwrites: copy it out.
            self.run = lambda pixels: request.infer({0: pixels})[0].copy()
        else:
            import torch

            if threads:
                torch.set_num_threads(threads)
            module = torch.jit.load(path, map_location="cpu").eval()

            def run(pixels):
                with torch.inference_mode():
                    return module(torch.from_numpy(pixels)).numpy()

            self.run = run

    def execute(self, requests):
        with self.executing.tracking(requests):
            return self._execute(requests)

    def _execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXEL_VALUES").as_numpy() for r in requests]
        pixels = batches[0] if len(batches) == 1 else np.concatenate(batches)
        embeddings = np.ascontiguousarray(self.run(np.ascontiguousarray(pixels, dtype=np.float32)), dtype=np.float32)
        responses, start = [], 0
        for batch in batches:
            output = pb_utils.Tensor("EMBEDDING", embeddings[start:start + len(batch)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += len(batch)
        return responses

