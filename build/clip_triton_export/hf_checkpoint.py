"""Hugging Face CLIP checkpoints: a folder as `CLIPModel.save_pretrained` or
`CLIPVisionModelWithProjection.save_pretrained` writes it, turned into our OpenAI-layout encoder.

What is read: `config.json` (a CLIPModel's `vision_config` + `projection_dim`, or a vision model's own
fields), the weights (`model.safetensors`, `pytorch_model.bin`, or their sharded `*.index.json`), and
`preprocessor_config.json` when present. The tensors are renamed to OpenAI's keys (q/k/v stacked into
`in_proj`, the projection transposed), so the one encoder in visual.py serves them. Sizes come from the
tensor shapes and are checked against the config; heads, activation and LayerNorm eps come from the
config, with CLIPVisionConfig's own defaults (OpenAI's values) where it leaves them out.

Preprocessing follows CLIPImageProcessor (the PIL-based one): its mean/std, filter and shortest-edge size,
the RGB conversion before resizing, and centre-crop offsets rounded down. Without a
`preprocessor_config.json` it is OpenAI's transform (what CLIPImageProcessor's defaults also are, but for
the crop offsets' rounding).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from clip_triton.transform import OPENAI_PREPROCESSING, Preprocessing

from .architectures import CheckpointError, ViTSpec, infer_architecture

CONFIG = "config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# CLIPVisionConfig's defaults: save_pretrained writes only the fields that differ from them.
_VISION_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_attention_heads": 12,
                    "image_size": 224, "patch_size": 32, "hidden_size": 768, "intermediate_size": 3072,
                    "num_hidden_layers": 12, "projection_dim": 512}
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's enum values, as preprocessor_config.json stores them
_PREFIX = "vision_model."


def is_hf_state(state: Mapping[str, Any]) -> bool:
    """Whether the keys are Hugging Face's CLIP names rather than OpenAI's."""
    return any(k.startswith(("vision_model.", "text_model.", "visual_projection.")) for k in state)


def weights_file(folder: Path) -> Path:
    """The folder's weights file (safetensors preferred, as transformers does)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: Hugging Face folder without weights (none of {', '.join(WEIGHT_FILES)})")


def read_weights(path: Path, read_file: Callable[[Path], Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One weights file, or every shard a `*.index.json` names."""
    if not path.name.endswith(".index.json"):
        return dict(read_file(path))
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable shard index ({error})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (path.parent / shard).is_file():
            raise CheckpointError(f"{path}: shard {shard} is missing")
        state.update(read_file(path.parent / shard))
    return state


def load_hf(folder: Path, label: Path, state: Mapping[str, torch.Tensor]) -> tuple[ViTSpec, dict[str, torch.Tensor], Preprocessing]:
    """(spec, OpenAI-layout visual state dict, preprocessing) of a Hugging Face CLIP checkpoint in `folder`;
    errors name `label` (the folder or weights file the operator gave)."""
    vision = _vision_config(folder, label)
    if not any(k.startswith(_PREFIX) for k in state):
        raise CheckpointError(f"{label}: no vision weights (no keys starting with '{_PREFIX}'): a text-only checkpoint?")
    if "visual_projection.weight" not in state:
        raise CheckpointError(f"{label}: no visual_projection.weight: a CLIPVisionModel without projection gives no "
                              "CLIP image features (save CLIPModel or CLIPVisionModelWithProjection)")
    try:
        visual = openai_layout(state)
    except KeyError as error:
        raise CheckpointError(f"{label}: incomplete Hugging Face CLIP vision weights (missing {error})") from None
    act = vision["hidden_act"]
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"{label}: hidden_act {act!r} is not supported (only quick_gelu and gelu)")
    try:
        spec = infer_architecture(visual, heads=int(vision["num_attention_heads"]), activation=_ACTIVATIONS[act],
                                  layer_norm_eps=float(vision["layer_norm_eps"]))
    except (KeyError, IndexError) as error:
        raise CheckpointError(f"{label}: incomplete Hugging Face CLIP vision weights (missing {error})") from None
    except CheckpointError as error:
        raise CheckpointError(f"{label}: {error}") from None
    _check_config(spec, vision, label)
    return spec, visual, _preprocessing(folder, spec.image_resolution, label)


def openai_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF vision keys -> our (OpenAI's) visual keys, without the `visual.` prefix."""
    embeddings, encoder = f"{_PREFIX}embeddings.", f"{_PREFIX}encoder.layers."
    out = {
        "conv1.weight": state[f"{embeddings}patch_embedding.weight"],
        "class_embedding": state[f"{embeddings}class_embedding"],
        "positional_embedding": state[f"{embeddings}position_embedding.weight"],
        "proj": state["visual_projection.weight"].t().contiguous(),
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for leaf in ("weight", "bias"):
            out[f"{ours}.{leaf}"] = state[f"{_PREFIX}{theirs}.{leaf}"]
    layers = sorted({int(k[len(encoder):].split(".")[0]) for k in state if k.startswith(encoder)})
    renames = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for layer in layers:
        theirs, ours = f"{encoder}{layer}.", f"transformer.resblocks.{layer}."
        for leaf in ("weight", "bias"):
            out[f"{ours}attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{theirs}self_attn.{p}_proj.{leaf}"] for p in ("q", "k", "v")])
            for old, new in renames.items():
                out[f"{ours}{new}.{leaf}"] = state[f"{theirs}{old}.{leaf}"]
    return out


def _vision_config(folder: Path, label: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{label}: Hugging Face CLIP weights need the {CONFIG} beside them")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable config ({error})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "clip":
        vision = dict(config.get("vision_config") or {})
        vision.setdefault("projection_dim", config.get("projection_dim", _VISION_DEFAULTS["projection_dim"]))
    elif kind == "clip_vision_model":
        vision = dict(config)
    elif kind == "clip_text_model":
        raise CheckpointError(f"{path}: a CLIPTextModel (text tower only): no vision weights to serve")
    else:
        raise CheckpointError(f"{path}: model_type {kind!r} is not a CLIP model (expected 'clip' or 'clip_vision_model')")
    return {**_VISION_DEFAULTS, **vision}


def _check_config(spec: ViTSpec, vision: Mapping[str, Any], label: Path) -> None:
    """A config that contradicts the tensors is refused: one of the two is not what it claims."""
    pairs = {"hidden_size": spec.width, "num_hidden_layers": spec.layers, "patch_size": spec.patch_size,
             "intermediate_size": spec.mlp_width, "image_size": spec.image_resolution,
             "projection_dim": spec.embed_dim}
    for key, actual in pairs.items():
        if int(vision[key]) != actual:
            raise CheckpointError(f"{label}: {CONFIG} says {key} {vision[key]} but the weights have {actual}")


def _preprocessing(folder: Path, resolution: int, label: Path) -> Preprocessing:
    path = folder / PREPROCESSOR_CONFIG
    if not path.is_file():
        return OPENAI_PREPROCESSING
    try:
        config = json.loads(path.read_text())
        size, crop = config.get("size", {"shortest_edge": 224}), config.get("crop_size", {"height": 224, "width": 224})
        size = {"shortest_edge": size} if isinstance(size, int) else size
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: unreadable preprocessor config ({error})") from None
    if not config.get("do_resize", True) or "shortest_edge" not in size:
        raise CheckpointError(f"{path}: only a shortest-edge resize is supported (size {size})")
    if not config.get("do_center_crop", True) or crop.get("height") != resolution or crop.get("width") != resolution:
        raise CheckpointError(f"{path}: crop_size {crop} does not give the model's {resolution}x{resolution} input")
    if not config.get("do_normalize", True) or not config.get("do_rescale", True) \
            or abs(float(config.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise CheckpointError(f"{path}: only rescaling by 1/255 followed by normalization is supported")
    resample = config.get("resample", 3)
    if resample not in _RESAMPLE:
        raise CheckpointError(f"{path}: resample {resample} is not supported (2 bilinear or 3 bicubic)")
    shortest = int(size["shortest_edge"])
    if shortest < resolution:
        raise CheckpointError(f"{path}: shortest_edge {shortest} is smaller than the crop {resolution}")
    try:
        return Preprocessing(mean=_three(config.get("image_mean", OPENAI_PREPROCESSING.mean)),
                             std=_three(config.get("image_std", OPENAI_PREPROCESSING.std)),
                             interpolation=_RESAMPLE[resample], resize=0 if shortest == resolution else shortest,
                             crop_offsets="floor",
                             convert_rgb="before_resize" if config.get("do_convert_rgb", True) else "after_crop")
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _three(values: Any) -> tuple[float, ...]:
    """HF allows one number for all channels."""
    return (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
