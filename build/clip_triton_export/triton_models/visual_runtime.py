"""The CPU target's model runners: pixels [N, 3, R, R] float32 -> features [N, D] float32.

Shipped beside clip_visual's model.py (it imports only numpy and the runtime it is asked for). Which
runtime a repository uses is chosen at export (repository.py): OpenVINO for the int8 IR and for fp32
VisionTransformers (reading model.onnx), ONNX Runtime for fp32 ModifiedResNets, torch for TorchScript.

Why batches are split: on a few cores the preprocessing model runs beside this one. A runtime that
spreads one batch over all cores synchronises its threads after every layer, so whenever the
scheduler lends one core to preprocessing, the other threads wait at that barrier. Measured on our
2-core VM with a process taking 30 % of one core: one 2-thread fp32 ViT-B/32 session fell to 24.0
images/s, while two 1-thread runs of half the batch each, side by side, kept 25.6 (the ideal being
26.5). So a batch is split into up to `split_ways` parts of at least MIN_PART images that run
concurrently on single-threaded runners (no barrier between them); smaller batches, where latency is
what counts and the server is not busy, run on the runner that uses every core. (Splitting a batch
of 2 into two single-image runs made concurrency 2 slower than concurrency 1.) Cost: the model is
held twice in memory.
"""
from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]
MIN_PART = 2


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


class SplittingRunner:
    """Batches under 2 * MIN_PART -> `whole` (all threads); larger ones -> up to `ways` parts of at least
    MIN_PART images, run concurrently by `part`."""

    def __init__(self, whole: Run, part: Run | None, ways: int):
        self.whole, self.part, self.ways = whole, part, ways if part is not None else 1
        self.pool = ThreadPoolExecutor(self.ways, thread_name_prefix="clip-visual-part") if self.ways > 1 else None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        ways = min(self.ways, len(pixels) // MIN_PART)
        if self.pool is None or ways < 2:
            return self.whole(pixels)
        parts = np.array_split(pixels, ways)
        return np.concatenate(list(self.pool.map(self.part, parts)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def open_runner(runtime: str, path: str, threads: int = 0, spinning: str = "1", split_ways: int = 0,
                precision: str = "f32") -> SplittingRunner:
    """`threads`: the whole-batch runner's threads (0 = the runtime's default); `split_ways`: how many
    single-threaded parts a batch is split into (0 = one per available core, 1 = never split); `precision`:
    OpenVINO's precision for operations that are not int8 ("f32", or "bf16" for the bf16 variant)."""
    ways = split_ways or available_cores()
    if runtime == "onnxruntime":
        whole = _onnxruntime(path, threads, spinning)
        return SplittingRunner(whole, _onnxruntime(path, 1, spinning) if ways > 1 else None, ways)
    if runtime == "openvino":
        whole = _openvino(path, threads, streams=1, precision=precision)
        part = _openvino(path, ways, streams=ways, precision=precision) if ways > 1 else None
        return SplittingRunner(whole, part, ways)
    if runtime == "torchscript":
        return SplittingRunner(_torchscript(path, threads), None, 1)
    raise ValueError(f"unknown runtime {runtime!r}")


def open_configured_runner(parameters: Mapping[str, str], path: str, split_ways: int | None = None) -> SplittingRunner:
    """`open_runner` as clip_visual's config parameters (runtime, intra_op_threads, allow_spinning,
    split_ways, inference_precision) say; `split_ways` overrides the config's (the benchmark's model alone
    runs unsplit)."""
    return open_runner(parameters["runtime"], path, threads=int(parameters.get("intra_op_threads", "0")),
                       spinning=parameters.get("allow_spinning", "1"),
                       split_ways=int(parameters.get("split_ways", "0")) if split_ways is None else split_ways,
                       precision=parameters.get("inference_precision", "f32"))


def _onnxruntime(path: str, threads: int, spinning: str) -> Run:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Spinning worker threads burn the cores the preprocessing model needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    # One session serves concurrent calls; with one thread each call computes on its caller's thread.
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})[0]


def _openvino(path: str, threads: int, streams: int, precision: str) -> Run:
    import openvino

    config = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else {"NUM_STREAMS": streams}
    # OpenVINO's default on CPUs with bfloat16 units (AVX512-BF16, AMX) is to run fp32 operations in bf16:
    # the fp32 model would no longer be fp32, so fp32 and int8 repositories ask for "f32" (every operation
    # not quantized stays fp32) and only the bf16 variant asks for "bf16".
    config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(path, "CPU", config)
    # OpenVINO's Python binding initialises function-local statics during its first inference, waiting for
    # the GIL inside the initialiser; two threads making their first call at once deadlocked a CI run (one
    # waiting for the GIL inside the initialiser, the other holding the GIL at the initialiser's guard).
    # So every request runs once here, on this one thread, before the runner is shared.
    sample = np.zeros([1] + [dim.get_length() for dim in list(compiled.input(0).get_partial_shape())[1:]],
                      dtype=np.float32)
    requests: queue.Queue = queue.Queue()
    for _ in range(streams):
        request = compiled.create_infer_request()
        request.infer({0: sample})
        requests.put(request)

    def run(pixels: np.ndarray) -> np.ndarray:
        request = requests.get()
        try:
            # The result is a view of the request's output buffer, which its next call overwrites.
            return request.infer({0: pixels})[0].copy()
        finally:
            requests.put(request)

    return run


def _torchscript(path: str, threads: int) -> Run:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module = torch.jit.load(path, map_location="cpu").eval()

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).numpy()

    return run
