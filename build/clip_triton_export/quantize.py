"""int8 variants of an exported ONNX encoder, written as OpenVINO IR and run by OpenVINO.

Measured and chosen (bench/report/cpu-variants.md): on our 2-core AVX512-VNNI VM OpenVINO's int8
kernels beat ONNX Runtime's (ViT-B/32 at batch 32: 75 images/s against 62). Each family gets the
scheme that keeps features within cosine 0.999 of fp32 (measured in the tests):
- VisionTransformer: static int8 (NNCF, activation ranges calibrated on typical images) for the
  attention's q/k/v projections and scores and both MLP layers. The layers that measured sensitive
  do without static ranges: the patch-embedding convolution stays fp32; each block's attention output
  projection and the final projection get int8 weights with activations quantized at run time per
  group of 128 inputs. SmoothQuant is off: with it cosine fell to 0.987. ViT-B/32 alone: 81 -> 101 images/s
  against all-dynamic int8, cosine 0.9996 on the shared images. The export checks the result on the
  calibration images and falls back to all-dynamic int8 (no calibration, cosine 0.9995 measured)
  when any of them drops below cosine 0.999, so a checkpoint whose activations quantize badly still
  gets a faithful model.
- ModifiedResNet: ONNX Runtime's static QDQ quantization, per channel, activation ranges calibrated
  on real images, the stem's first convolution and the attention pool kept fp32; OpenVINO runs the
  QDQ graph with int8 kernels (NNCF's own scheme measured lower quality here, cosine 0.996).
The IR keeps every other weight in fp32 (no fp16 compression) and carries its run-time options in
its rt_info, so Triton's native OpenVINO backend serves the same files with the same behaviour.
See bf16.py for the other reduced-precision variant, and precision.py for what they share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .architectures import ResNetSpec, VisualSpec
from .precision import MIN_COSINE, features, min_cosine as lowest_cosine, quiet

DYNAMIC_QUANTIZATION_GROUP = 128
STATIC_VIT = ("static activations (NNCF), except the patch embedding (fp32) and the attention output and final "
              "projections (activations quantized at run time)")


@dataclass(frozen=True)
class Int8Model:
    """What was written and how faithful it measured: the export prints this for people."""

    path: Path
    scheme: str
    min_cosine: float  # lowest cosine to fp32 over the calibration images
    images: int

    def describe(self) -> str:
        return f"int8 {self.scheme}; min cosine {self.min_cosine:.5f} to fp32 on {self.images} calibration crops"


def quantize_int8(fp32_path: Path, out_path: Path, spec: VisualSpec, calibration: np.ndarray,
                  min_cosine: float = MIN_COSINE) -> Int8Model:
    """Write the int8 IR for `spec`'s family to `out_path` (.xml, plus .bin); `calibration` is float32
    pixels [N, 3, R, R] of typical images, also used to check the result against fp32."""
    import openvino

    if len(calibration) == 0:
        raise ValueError("int8 needs calibration images (--calibration-images)")
    with quiet():
        reference = features(openvino.Core().read_model(str(fp32_path)), calibration, "fp32")
        if isinstance(spec, ResNetSpec):
            qdq = out_path.with_suffix(".qdq.onnx")
            _resnet_qdq(fp32_path, qdq, calibration)
            model, scheme = openvino.convert_model(str(qdq)), "static QDQ activations (ONNX Runtime)"
            qdq.unlink()
        else:
            model, scheme = _vit_static(fp32_path, calibration), STATIC_VIT
        cosine = lowest_cosine(features(model, calibration, "int8"), reference)
        if cosine < min_cosine and not isinstance(spec, ResNetSpec):
            model = _vit_dynamic(openvino.Core().read_model(str(fp32_path)))
            cosine = lowest_cosine(features(model, calibration, "int8"), reference)
            scheme = f"activations quantized at run time (static ranges measured below cosine {min_cosine})"
        if cosine < min_cosine:
            raise ValueError(f"int8 features fell to cosine {cosine:.5f} of fp32 on the calibration images "
                             f"(below {min_cosine}); export fp32, or calibrate on more typical images")
        model.set_rt_info(scheme, ["clip_triton", "int8_scheme"])
        openvino.save_model(model, str(out_path), compress_to_fp16=False)
    return Int8Model(out_path, scheme, cosine, len(calibration))


def _vit_static(fp32_path: Path, calibration: np.ndarray):
    """Static int8 where it measured faithful, run-time int8 activations for the sensitive layers."""
    import nncf
    import openvino
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = openvino.Core().read_model(str(fp32_path))
    sensitive = _vit_sensitive_layers(model)
    quantized = nncf.quantize(
        model, nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))]),
        model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(names=sensitive),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
    return _vit_dynamic(quantized)  # the ignored MatMuls: int8 weights, activations quantized at run time


def _vit_sensitive_layers(model) -> list[str]:
    """The patch-embedding convolution, every attention output projection and the final projection."""
    output_producers = {result.input_value(0).get_node().get_friendly_name() for result in model.get_results()}
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if (op.get_type_name() == "Convolution" and "conv1" in op.get_friendly_name())
            or (op.get_type_name() == "MatMul" and ("out_proj" in op.get_friendly_name()
                                                    or op.get_friendly_name() in output_producers))]


def _vit_dynamic(model):
    import nncf

    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    # Read by OpenVINO's CPU plugin when it compiles the model: quantize each fp32-activation MatMul's
    # input on the fly in groups of 128 and use the int8 (VNNI) kernels. Measured: 64 -> 69, 128 -> 75,
    # 768 -> 57 images/s, all at cosine >= 0.9995; 0 (off) runs int8 weights through fp32 kernels, at 18.
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
