"""int8 variants of an exported ONNX encoder, for CPUs with VNNI (ONNX Runtime's int8 kernels use it).

Each family gets the scheme that keeps features within cosine 0.999 of fp32 (measured in the tests):
- VisionTransformer: dynamic quantization, per-channel int8 weights, activations quantized per batch
  at run time (static activation ranges lose too much through LayerNorm/softmax).
- ModifiedResNet: static QDQ quantization, per-channel, with activation ranges calibrated on real
  images; the stem's first convolution and the attention pool stay fp32.
bf16 is not offered: without AMX (absent on our 2-core VM) it measured slower than fp32.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from .architectures import ResNetSpec, VisualSpec

PRECISIONS = ("fp32", "int8")


def quantize_int8(fp32_path: Path, out_path: Path, spec: VisualSpec, calibration: np.ndarray) -> Path:
    """Write the int8 model for `spec`'s family; `calibration` is float32 pixels [N, 3, R, R] (ResNet only)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    with _quiet():
        if not isinstance(spec, ResNetSpec):
            quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
            return out_path
        if len(calibration) == 0:
            raise ValueError("int8 for a ModifiedResNet needs calibration images")

        class Pixels(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter({"PIXEL_VALUES": calibration[i:i + 1]} for i in range(len(calibration)))

            def get_next(self):
                return next(self.batches, None)

        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = out_path.with_suffix(".prepared.onnx")
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False).graph
        convs = [node.name for node in graph.node if node.op_type == "Conv"]
        keep_fp32 = convs[:1] + [node.name for node in graph.node if "attnpool" in node.name]
        quantize_static(str(prepared), str(out_path), Pixels(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=keep_fp32, calibrate_method=CalibrationMethod.MinMax)
        prepared.unlink()
    return out_path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs advice on every call; keep export output readable."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger().setLevel(level)
