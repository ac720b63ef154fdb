"""What the reduced-precision variants (bf16.py, quantize.py) share: their names, their artifact, and the
fidelity check every one of them must pass against fp32 before an export writes it.

Both variants are OpenVINO IR run by OpenVINO, in the CPU target's Python backend and in Triton's native
OpenVINO backend alike. OpenVINO decides per compiled model in which precision the operations that are
not int8 run (its `INFERENCE_PRECISION_HINT`); that choice cannot be stored in the IR (its rt_info is
ignored for this key), so it is carried by clip_visual's config (`inference_precision`, or `HINT_BF16`
for the native backend) and by `inference_precision()` here.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

import numpy as np

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
OPENVINO_PRECISIONS = ("bf16", "int8")  # the variants made as OpenVINO IR from the ONNX export
OPENVINO_ARTIFACT = "model.xml"  # OpenVINO IR; the weights lie beside it in model.bin
MIN_COSINE = 0.999  # every calibration image's features against fp32 ones


def inference_precision(precision: str) -> str:
    """OpenVINO's precision for the operations a variant does not quantize. fp32 and int8 hold them to
    fp32 (OpenVINO's default on CPUs with bf16 units is bf16, which would make "fp32" inexact); bf16 asks
    for bf16, computed by AMX where the CPU has it."""
    return "bf16" if precision == "bf16" else "f32"


def features(model, pixels: np.ndarray, precision: str) -> np.ndarray:
    """Run `model` (an OpenVINO model or a path) as the server's runner does for `precision`."""
    import openvino

    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": inference_precision(precision)})
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: pixels[i:i + 8]})[0].copy() for i in range(0, len(pixels), 8)])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def cpu_computes_bf16() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it quietly runs
    a bf16 request in fp32, which is faithful but not faster."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The converters and quantizers log advice and draw progress bars on every call; keep export output readable."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    nncf_logger = logging.getLogger("nncf")
    nncf_level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger().setLevel(level)
        nncf_logger.setLevel(nncf_level)
