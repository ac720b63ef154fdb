"""open_clip checkpoints: a state dict of open_clip's `CLIP` whose visual tower is OpenAI's (a
VisionTransformer or a ModifiedResNet), read with the settings its model config gives.

open_clip keeps OpenAI's key names, so the tensors load into visual.py unchanged; what the tensors cannot
say comes from open_clip's model config: the MLP activation (`quick_gelu`: absent or false means exact
GELU, as LAION's models use), the heads (`head_width`), LayerNorm's eps (`norm_kwargs`), and the
preprocessing (`preprocess_cfg`: mean, std, interpolation, resize mode). The config is the
`open_clip_config.json` open_clip's hub uploads carry beside the weights (`{"model_cfg", "preprocess_cfg"}`)
or a bare model config such as open_clip's own `model_configs/ViT-B-32.json`, named with --open-clip-config.

Refused, because our encoder does not compute them: layer scale (`ls_init_value`), attentional pooling,
no `ln_pre`, pooling other than the class token, final LayerNorm after pooling, non-learnable position
embeddings, the custom attention block variants, timm towers, resize modes other than `shortest`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from clip_triton.transform import OPENAI_PREPROCESSING, Preprocessing

from .architectures import CheckpointError, VisualSpec, ViTSpec, infer_architecture

CONFIG = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Vision-config settings our encoder does not implement, and the value that means "off" in open_clip.
_UNSUPPORTED = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pool_type": "tok",
                "final_ln_after_pool": False, "pos_embed_type": "learnable", "timm_model_name": None,
                "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                "scale_attn": False, "scale_fc": False, "act_kwargs": None}
# Tensors of open_clip features our encoder lacks (caught even without a config).
_UNSUPPORTED_KEYS = {".ls_1.": "layer scale", ".ls_2.": "layer scale", "attn_pool.": "attentional pooling",
                     "trunk.": "a timm tower", "ln_q": "attentional pooling"}


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: open_clip folder without weights (none of {', '.join(WEIGHT_FILES)})")


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, preprocess config) from open_clip_config.json or a bare open_clip model config."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable open_clip config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not an open_clip config (a JSON object with model_cfg or vision_cfg)")
    model = config.get("model_cfg", config)
    if not isinstance(model, dict) or not isinstance(model.get("vision_cfg"), dict):
        raise CheckpointError(f"{path}: not an open_clip model config (no vision_cfg): a text-only model?")
    return model, dict(config.get("preprocess_cfg") or {})


def check_supported_keys(visual: Mapping[str, torch.Tensor], label: Path) -> None:
    """Refuse tensors of open_clip features our encoder does not compute, whatever the config says."""
    for key in visual:
        for marker, feature in _UNSUPPORTED_KEYS.items():
            if marker in key or key.startswith(marker):
                raise CheckpointError(f"{label}: open_clip {feature} ({key}) is not supported")


def open_clip_spec(visual: Mapping[str, torch.Tensor], config_path: Path, label: Path) -> tuple[VisualSpec, Preprocessing]:
    """(spec, preprocessing) for a visual state dict (keys without `visual.`) and its open_clip config."""
    model, preprocess = read_config(config_path)
    vision = model["vision_cfg"]
    for key, off in _UNSUPPORTED.items():
        if vision.get(key, off) not in (off, {}):
            raise CheckpointError(f"{config_path}: open_clip vision_cfg {key}={vision[key]!r} is not supported")
    head_width = int(vision.get("head_width", 64))
    resnet = isinstance(vision.get("layers"), (list, tuple))
    width = int(vision.get("width", 768))
    settings: dict[str, Any] = {"heads": (width * 32 if resnet else width) // head_width}
    if not resnet:
        settings["activation"] = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
        settings["layer_norm_eps"] = float((vision.get("norm_kwargs") or {}).get("eps", 1e-5))
    try:
        spec = infer_architecture(visual, **settings)
    except CheckpointError as error:
        raise CheckpointError(f"{label}: {error}") from None
    except (KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{label}: incomplete CLIP visual weights (missing {error})") from None
    _check_config(spec, model, vision, config_path)
    return spec, _preprocessing(preprocess, config_path)


def _check_config(spec: VisualSpec, model: Mapping[str, Any], vision: Mapping[str, Any], path: Path) -> None:
    image_size = vision.get("image_size", 224)
    expected = {"embed_dim": (model.get("embed_dim"), spec.embed_dim), "width": (vision.get("width"), spec.width),
                "image_size": (image_size, spec.image_resolution)}
    if isinstance(spec, ViTSpec):
        mlp = int(spec.width * float(vision.get("mlp_ratio", 4.0)))
        expected.update(layers=(vision.get("layers"), spec.layers), patch_size=(vision.get("patch_size"), spec.patch_size),
                        mlp_width=(mlp, spec.mlp_width))
    else:
        expected["layers"] = (list(vision.get("layers", [])), list(spec.layers))
    for key, (said, actual) in expected.items():
        if said is not None and said != actual:
            raise CheckpointError(f"{path}: the config says {key} {said} but the weights have {actual}")


def _preprocessing(preprocess: Mapping[str, Any], path: Path) -> Preprocessing:
    mode = preprocess.get("resize_mode", "shortest")
    if mode != "shortest":
        raise CheckpointError(f"{path}: resize_mode {mode!r} is not supported (only 'shortest', open_clip's default)")
    try:
        return Preprocessing(mean=tuple(preprocess.get("mean", OPENAI_PREPROCESSING.mean)),
                             std=tuple(preprocess.get("std", OPENAI_PREPROCESSING.std)),
                             interpolation=preprocess.get("interpolation", "bicubic"))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
