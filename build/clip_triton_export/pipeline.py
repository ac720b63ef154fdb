"""Checkpoint (or random init) -> artifact -> complete model repository: what `clip-triton export` does."""
from __future__ import annotations

import dataclasses
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from clip_triton.transform import OPENAI_PREPROCESSING, Preprocessing

from .architectures import named_architecture
from .checkpoint import LoadedVisual, load_checkpoint, random_visual
from .export import export_visual
from .bf16 import convert_bf16
from .half import export_fp16
from .precision import MIN_COSINE, OPENVINO_PRECISIONS
from .quantize import quantize_int8
from .repository import (RepositoryOptions, artifact_bytes, artifact_name, artifact_path, render_repository,
                         write_repository)


def load_source(checkpoint: Path | None, random_init: str | None, seed: int = 0,
                open_clip_config: Path | None = None) -> LoadedVisual:
    if checkpoint is not None:
        return load_checkpoint(checkpoint, open_clip_config)
    if open_clip_config is not None:
        raise ValueError("--open-clip-config describes a checkpoint: give --checkpoint too")
    if random_init is None:
        raise ValueError("give a checkpoint file or an architecture name for random weights")
    return random_visual(named_architecture(random_init), random_init, seed)


def sample_images() -> Path:
    """The images shipped inside this package (a photo, a drawing-like PNG with alpha, a JPEG): the default
    calibration set, found wherever the package is installed."""
    return Path(str(resources.files("clip_triton_export").joinpath("sample_images")))


def export_repository(repository: Path, options: RepositoryOptions | None = None, *,
                      checkpoint: Path | None = None, random_init: str | None = None, seed: int = 0,
                      configs_only: bool = False, calibration_images: Path | None = None,
                      min_cosine: float = MIN_COSINE, open_clip_config: Path | None = None, **fields) -> str:
    """Write the repository; returns a one-paragraph summary for people. The model is built before
    anything in `repository` is replaced, so a failed export leaves a previous one intact.

    `options` (or, for short, its fields as keyword arguments) say what to build; they are checked before
    any weights are loaded."""
    if options is not None and fields:
        raise TypeError("give either RepositoryOptions or its fields, not both")
    options = options or RepositoryOptions(**fields)
    precision = options.precision
    repository = Path(repository)
    loaded = load_source(checkpoint, random_init, seed, open_clip_config)
    weights = None if configs_only else f"{loaded.source}" + (f":{precision}" if precision != "fp32" else "")
    repo_options = dataclasses.replace(options, weights=weights, preprocessing=loaded.preprocessing)
    files = render_repository(loaded.spec, repo_options)
    lines = [f"wrote {repository}: {len(files)} files ({repo_options.fmt}, target {repo_options.target})",
             f"  architecture: {loaded.spec}"]
    if not loaded.preprocessing.is_openai:
        lines.append(f"  preprocessing: {loaded.preprocessing} (the checkpoint's own, not OpenAI's)")
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=repository) as staging:
        if not configs_only:
            staged = Path(staging) / artifact_name(repo_options)
            if precision == "fp16":
                pixels = calibration_pixels(calibration_images or sample_images(), loaded.spec.image_resolution,
                                            loaded.preprocessing)
                lines.append(f"  {export_fp16(loaded.model, loaded.spec, staged, pixels, min_cosine).describe()}")
            elif precision in OPENVINO_PRECISIONS:
                fp32 = export_visual(loaded.model, loaded.spec, "onnx", Path(staging) / "model.fp32.onnx")
                pixels = calibration_pixels(calibration_images or sample_images(), loaded.spec.image_resolution,
                                            loaded.preprocessing)
                if precision == "int8":
                    variant = quantize_int8(fp32, staged, loaded.spec, pixels, min_cosine)
                else:
                    variant = convert_bf16(fp32, staged, pixels, min_cosine)
                fp32.unlink()
                lines.append(f"  {variant.describe()}")
            else:
                export_visual(loaded.model, loaded.spec, repo_options.fmt, staged)
        write_repository(repository, files)
        artifact = artifact_path(repository, repo_options)
        for built in Path(staging).iterdir():
            built.replace(artifact.parent / built.name)
    if not configs_only:
        lines.append(f"  model: {artifact} ({precision}, {artifact_bytes(artifact) / 1e6:.1f} MB)")
    if loaded.random_weights and not configs_only:
        lines.append("  WEIGHTS ARE RANDOM (seeded): features are not meaningful; pass --checkpoint for real ones")
    return "\n".join(lines)


def calibration_pixels(folder: Path, resolution: int, preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> np.ndarray:
    """Preprocessed pixels (OpenAI's transform, or the checkpoint's own) of the images in `folder` (and their
    mirror images): int8 calibrates on them, and the reduced precisions are checked against fp32 on them."""
    from clip_triton.image_files import find_images
    from clip_triton.transform import preprocess

    pixels = [preprocess(path.read_bytes(), resolution, preprocessing=preprocessing) for path in find_images([folder])]
    if not pixels:
        raise ValueError(f"no calibration images found in {folder}")
    stacked = np.stack(pixels)
    return np.concatenate([stacked, stacked[..., ::-1]]).astype(np.float32)
