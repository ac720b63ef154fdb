"""Load a CLIP visual encoder from a checkpoint file, or build one with seeded random weights.

Formats read:
- OpenAI's TorchScript archives, as `clip.load` downloads them (`ViT-B-32.pt`). A TorchScript archive
  is code: it is only loaded from a path the operator names, never from anything a request says.
- A state dict saved with `torch.save` (fp16, bf16 or fp32; optionally wrapped in {"state_dict": ...}
  or {"model": ...}, optionally with DataParallel's `module.` prefix), read with torch's
  weights-only unpickler, so a pickle cannot run code.
- A `.safetensors` file with the same keys.
- The full CLIP model's keys (`visual.*` plus the text tower, ignored) or the visual tower's alone.
- A Hugging Face CLIP folder, or its weights file with `config.json` beside it (hf_checkpoint.py).
- An open_clip state dict with its model config: `open_clip_config.json` beside it (or an open_clip hub
  folder), or one named with `open_clip_config=` (open_clip_checkpoint.py).
Weights are used as float32, like `clip.load` does on CPU.

A state dict with OpenAI's key names and no open_clip config is read as OpenAI's: QuickGELU, OpenAI's
preprocessing. Its tensors cannot say otherwise, so the open_clip widths OpenAI never published
(ViT-H/14, ViT-g/14, ViT-bigG/14: LAION models, exact GELU) are refused without their config.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from clip_triton.transform import OPENAI_PREPROCESSING, Preprocessing

from . import hf_checkpoint, open_clip_checkpoint
from .architectures import OPEN_CLIP_HEADS, CheckpointError, VisualSpec, infer_architecture
from .visual import build_visual

_WRAPPER_KEYS = ("state_dict", "model", "module")


@dataclass
class LoadedVisual:
    """An encoder ready for export, with what it was built from."""

    model: nn.Module
    spec: VisualSpec
    # the source format and file: "openai:<file>", "huggingface:<folder>", "open_clip:<file>",
    # or "random-init:<arch>:seed=<n>"
    source: str
    random_weights: bool
    preprocessing: Preprocessing = OPENAI_PREPROCESSING  # how the checkpoint wants its pixels made


def load_checkpoint(path: str | os.PathLike, open_clip_config: str | os.PathLike | None = None) -> LoadedVisual:
    """Read a checkpoint (file or folder) and return its visual encoder in eval mode, float32, on CPU."""
    path = Path(path)
    config = Path(open_clip_config) if open_clip_config is not None else None
    if config is not None and not config.is_file():
        raise CheckpointError(f"{config}: open_clip config file not found")
    if path.is_dir():
        if config is not None and (path / hf_checkpoint.CONFIG).is_file():
            raise CheckpointError(f"{path}: a Hugging Face folder; --open-clip-config is for open_clip state dicts")
        if (path / open_clip_checkpoint.CONFIG).is_file() or config is not None:
            return _load_open_clip(open_clip_checkpoint.weights_file(path), config or path / open_clip_checkpoint.CONFIG)
        if (path / hf_checkpoint.CONFIG).is_file():
            return _load_hf(path, path)
        raise CheckpointError(f"{path}: folder holds neither a Hugging Face {hf_checkpoint.CONFIG} nor an "
                              f"{open_clip_checkpoint.CONFIG}")
    _check_file(path)
    if path.name.endswith(".index.json"):
        return _load_hf(path.parent, path)
    state = _read_state_dict(path)
    if hf_checkpoint.is_hf_state(state):
        if config is not None:
            raise CheckpointError(f"{path}: Hugging Face weights; --open-clip-config is for open_clip state dicts")
        return _load_hf(path.parent, path, state)
    beside = path.parent / open_clip_checkpoint.CONFIG
    if config is not None or beside.is_file():
        return _load_open_clip(path, config or beside, state)
    visual = _visual_state(state, path)
    open_clip_checkpoint.check_supported_keys(visual, path)
    try:
        spec = infer_architecture(visual)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{path}: incomplete CLIP visual weights (missing {error})") from None
    if spec.family == "VisionTransformer" and spec.width in OPEN_CLIP_HEADS:
        raise CheckpointError(f"{path}: a width-{spec.width} ViT is an open_clip model (OpenAI published none): its "
                              f"activation is not in the tensors; give its config (open_clip_config.json beside it, "
                              f"or --open-clip-config)")
    return LoadedVisual(_build(spec, visual, path), spec, f"openai:{path.name}", random_weights=False)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")


def _build(spec: VisualSpec, visual: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    model = build_visual(spec)
    try:
        model.load_state_dict({k: v.float() for k, v in visual.items()}, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{path}: weights do not fit the inferred {spec}: {reason}") from None
    return model.eval()


def _load_hf(folder: Path, label: Path, state: Mapping[str, torch.Tensor] | None = None) -> LoadedVisual:
    """A Hugging Face checkpoint: `folder` holds config.json; `label` is what the operator named."""
    if state is None:
        weights = hf_checkpoint.weights_file(folder) if label.is_dir() else label
        if not weights.name.endswith(".index.json"):
            _check_file(weights)
        state = hf_checkpoint.read_weights(weights, _read_state_dict)
    spec, visual, preprocessing = hf_checkpoint.load_hf(folder, label, state)
    return LoadedVisual(_build(spec, visual, label), spec, f"huggingface:{folder.resolve().name}",
                        random_weights=False, preprocessing=preprocessing)


def _load_open_clip(path: Path, config: Path, state: Mapping[str, torch.Tensor] | None = None) -> LoadedVisual:
    if state is None:
        _check_file(path)
        state = _read_state_dict(path)
    visual = _visual_state(state, path)
    open_clip_checkpoint.check_supported_keys(visual, path)
    spec, preprocessing = open_clip_checkpoint.open_clip_spec(visual, config, path)
    return LoadedVisual(_build(spec, visual, path), spec, f"open_clip:{path.name}", random_weights=False,
                        preprocessing=preprocessing)


def random_visual(spec: VisualSpec, name: str, seed: int = 0) -> LoadedVisual:
    """A real-architecture encoder with seeded random weights (for demos and tests, not for use)."""
    generator = torch.Generator().manual_seed(seed)
    model = build_visual(spec)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            tensor.copy_(_random_init(key, tensor, generator))
    return LoadedVisual(model.eval(), spec, f"random-init:{name}:seed={seed}", random_weights=True)


def _random_init(key: str, tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale-aware init so features stay finite and differ between images, even in deep models."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros_like(tensor)
    if leaf in ("running_var",) or (leaf == "weight" and tensor.dim() == 1):
        return torch.ones_like(tensor)  # LayerNorm / BatchNorm scale
    if leaf in ("bias", "running_mean"):
        return torch.zeros_like(tensor)
    fan_in = tensor[0].numel() if tensor.dim() > 1 else tensor.shape[-1]
    return torch.randn(tensor.shape, generator=generator) * fan_in ** -0.5


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            try:
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception as error:
                raise CheckpointError(f"{path}: unreadable TorchScript archive: {error}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        if _looks_like_safetensors(path):
            return _read_safetensors(path)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or another format): {reason}"
        ) from None
    for _ in range(2):
        if isinstance(state, Mapping):
            wrapped = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)]
            if wrapped and not any(isinstance(v, torch.Tensor) for v in state.values()):
                state = state[wrapped[0]]
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _visual_state(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The visual tower's tensors, keys relative to it (no `visual.` prefix)."""
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    visual = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
    if not visual and "conv1.weight" in tensors:
        visual = tensors  # a visual-only state dict
    if not visual:
        raise CheckpointError(f"{path}: no CLIP visual encoder found (no keys starting with 'visual.')")
    return visual


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - optional dependency of the export extra
        raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable safetensors file: {error}") from None
