"""int8 variants of an exported ONNX encoder, written as OpenVINO IR and run by OpenVINO.

Measured and chosen (bench/report/cpu-variants.md): on our 2-core AVX512-VNNI VM OpenVINO's int8
kernels beat ONNX Runtime's (ViT-B/32 at batch 32: 75 images/s against 62). Each family gets the
scheme that keeps features within cosine 0.999 of fp32 (measured in the tests):
- VisionTransformer: int8 weights (symmetric, per output channel) and activations quantized at run
  time per group of 128 inputs, like ONNX Runtime's dynamic quantization: no calibration, cosine
  0.9995. Static activation ranges (NNCF's transformer preset, even with 48 calibration crops) stayed
  below 0.999 on the shared images, at about 88 images/s.
- ModifiedResNet: ONNX Runtime's static QDQ quantization, per channel, activation ranges calibrated
  on real images, the stem's first convolution and the attention pool kept fp32; OpenVINO runs the
  QDQ graph with int8 kernels (NNCF's own scheme measured lower quality here, cosine 0.996).
The IR keeps every other weight in fp32 (no fp16 compression) and carries its run-time options in
its rt_info, so Triton's native OpenVINO backend serves the same files with the same behaviour.
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
INT8_ARTIFACT = "model.xml"  # OpenVINO IR; the weights lie beside it in model.bin
DYNAMIC_QUANTIZATION_GROUP = 128


def quantize_int8(fp32_path: Path, out_path: Path, spec: VisualSpec, calibration: np.ndarray) -> Path:
    """Write the int8 IR for `spec`'s family to `out_path` (.xml, plus .bin); `calibration` is float32
    pixels [N, 3, R, R] of typical images."""
    import openvino

    with _quiet():
        if isinstance(spec, ResNetSpec):
            if len(calibration) == 0:
                raise ValueError("int8 for a ModifiedResNet needs calibration images")
            qdq = out_path.with_suffix(".qdq.onnx")
            _resnet_qdq(fp32_path, qdq, calibration)
            model = openvino.convert_model(str(qdq))
            qdq.unlink()
        else:
            model = _vit_dynamic(fp32_path)
        openvino.save_model(model, str(out_path), compress_to_fp16=False)
    return out_path


def _vit_dynamic(fp32_path: Path):
    import nncf
    import openvino

    model = nncf.compress_weights(openvino.Core().read_model(str(fp32_path)), mode=nncf.CompressWeightsMode.INT8_SYM)
    # Read by OpenVINO's CPU plugin when it compiles the model: quantize each MatMul's activations on
    # the fly in groups of 128 and use the int8 (VNNI) kernels. Measured: 64 -> 69, 128 -> 75, 768 -> 57
    # images/s, all at cosine >= 0.9995; 0 (off) runs int8 weights through fp32 kernels, at 18.
    model.set_rt_info(str(DYNAMIC_QUANTIZATION_GROUP), ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    return model


def _resnet_qdq(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Pixels(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"PIXEL_VALUES": calibration[i:i + 1]} for i in range(len(calibration)))

        def get_next(self):
            return next(self.batches, None)

    prepared = out_path.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared), load_external_data=False).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    keep_fp32 = convs[:1] + [node.name for node in graph.node if "attnpool" in node.name]
    quantize_static(str(prepared), str(out_path), Pixels(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=keep_fp32, calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers log advice and draw progress bars on every call; keep export output readable."""
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
