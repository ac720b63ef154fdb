"""The bf16 variant: the fp32 export as OpenVINO IR, computed in bfloat16 by OpenVINO (AMX on CPUs that have it).

Why this way (bench/report/cpu-variants.md): on our AMX VM, ViT-B/32 alone at batch 16 runs 145 images/s
in bf16 against 42 in fp32, at cosine 0.99994 to fp32 on the calibration images. Nothing is calibrated: the weights stay fp32 in
the IR (no fp16 compression on the way) and OpenVINO rounds weights and activations to bf16 when it
compiles and runs the model, so one file serves every CPU. The export still checks the result on the
calibration images against fp32 and refuses below the minimum cosine, as the int8 export does. On a CPU
without bf16 units OpenVINO computes the same model in fp32: faithful, but no faster.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .precision import MIN_COSINE, cpu_computes_bf16, features, min_cosine as lowest_cosine, quiet


@dataclass(frozen=True)
class Bf16Model:
    """What was written and how faithful it measured: the export prints this for people."""

    path: Path
    min_cosine: float  # lowest cosine to fp32 over the calibration images
    images: int
    native: bool  # whether this CPU computed the check in bf16 (else OpenVINO fell back to fp32)

    def describe(self) -> str:
        where = "computed in bf16 here" if self.native else "this CPU has no bf16 units, so it ran in fp32 here"
        return f"bf16 (OpenVINO); min cosine {self.min_cosine:.5f} to fp32 on {self.images} calibration crops ({where})"


def convert_bf16(fp32_path: Path, out_path: Path, calibration: np.ndarray, min_cosine: float = MIN_COSINE) -> Bf16Model:
    """Write the IR for bf16 serving to `out_path` (.xml, plus .bin) once its features on `calibration`
    (float32 pixels [N, 3, R, R]) stay within `min_cosine` of fp32; raise ValueError otherwise."""
    import openvino

    if len(calibration) == 0:
        raise ValueError("bf16 needs calibration images to check its features (--calibration-images)")
    with quiet():
        model = openvino.Core().read_model(str(fp32_path))
        cosine = lowest_cosine(features(model, calibration, "bf16"), features(model, calibration, "fp32"))
        if cosine < min_cosine:
            raise ValueError(f"bf16 features fell to cosine {cosine:.5f} of fp32 on the calibration images "
                             f"(below {min_cosine}); export fp32")
        model.set_rt_info("bf16", ["clip_triton", "precision"])
        openvino.save_model(model, str(out_path), compress_to_fp16=False)
    return Bf16Model(out_path, cosine, len(calibration), cpu_computes_bf16())
