"""Small random-init CLIP models saved exactly the way transformers and open_clip save them, and each
library's own image features (its own preprocessing + forward), the reference our served features must equal.

Weights are perturbed after init (LayerNorm scales and biases, BatchNorm statistics included) so that a
swapped or misnamed tensor changes the features; sizes are deliberately not OpenAI's rules (head width 16
or 32, MLP ratio not 4, resize larger than the crop) so that every setting must come from the config.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import IMAGE_NAMES, IMAGES

HALF = (0.5, 0.5, 0.5)  # the mean = std = 0.5 some LAION / timm models use


def _perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() * 0.5 + 0.5)
            else:
                tensor.add_(noise * 0.05)


# -- Hugging Face -------------------------------------------------------------------------------------------
def hf_vision_config(**overrides) -> dict:
    settings = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=96,
                    patch_size=16, hidden_act="gelu", projection_dim=48)
    return {**settings, **overrides}


def save_hf_clip(folder: Path, *, mean=HALF, std=HALF, shortest_edge: int = 112, vision_only: bool = False,
                 safe: bool = True, seed: int = 0, max_shard_size: str | None = None, **vision) -> Path:
    """CLIPModel (or CLIPVisionModelWithProjection).save_pretrained + CLIPImageProcessor.save_pretrained
    (`max_shard_size`: weights in shards with an index, as large checkpoints come)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vision_config = hf_vision_config(**vision)
    if vision_only:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config))
    else:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=1000,
                    max_position_embeddings=16)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config,
                                     projection_dim=vision_config["projection_dim"]))
    _perturb(model, seed)
    model.save_pretrained(folder, safe_serialization=safe,
                          **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    size = vision_config["image_size"]
    if mean is not None:
        CLIPImageProcessor(size={"shortest_edge": shortest_edge}, crop_size={"height": size, "width": size},
                           image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    return folder


def hf_features(folder: Path, names: list[str] = IMAGE_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, get_image_features) as transformers computes them from the saved folder."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection

    config = read_json(folder / "config.json")
    vision_only = config["model_type"] == "clip_vision_model"
    if (folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(folder)
    else:  # CLIPImageProcessor's defaults at the model's resolution
        size = (config if vision_only else config["vision_config"])["image_size"]
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    model = (CLIPVisionModelWithProjection if vision_only else CLIPModel).from_pretrained(folder).eval()
    pixels = processor(images=[Image.open(IMAGES / n) for n in names], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if vision_only:
            features = model(pixel_values=pixels).image_embeds
        else:
            features = model.get_image_features(pixel_values=pixels)
    return pixels.numpy(), features.numpy()


# -- open_clip ----------------------------------------------------------------------------------------------
OPEN_CLIP_VIT = {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 2, "width": 96, "head_width": 32,
                                                 "mlp_ratio": 2.5, "patch_size": 16},
                 "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
OPEN_CLIP_RESNET = {"embed_dim": 40, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                    "head_width": 32},
                    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}


def open_clip_model(model_cfg: dict, *, mean=None, std=None, interpolation: str = "bicubic", seed: int = 0):
    """open_clip's CLIP from a model config (as its factory builds it), with its preprocess config set."""
    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    torch.manual_seed(seed)
    cfg = {k: v for k, v in model_cfg.items()}
    model = open_clip.model.CLIP(**cfg).eval()
    _perturb(model, seed)
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], "mode": "RGB",
                  "mean": tuple(mean or open_clip.OPENAI_DATASET_MEAN), "std": tuple(std or open_clip.OPENAI_DATASET_STD),
                  "interpolation": interpolation, "resize_mode": "shortest", "fill_color": 0}
    set_model_preprocess_cfg(model, preprocess)
    return model


def save_open_clip(folder: Path, model, model_cfg: dict, *, fmt: str = "safetensors", with_config: bool = True) -> Path:
    """The weights as open_clip's hub export writes them (state_dict to safetensors or torch.save), and its
    open_clip_config.json ({"model_cfg", "preprocess_cfg"}) written by open_clip's own save_config_for_hf."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = folder / "open_clip_model.safetensors"
        save_file(model.state_dict(), str(path))
    else:
        path = folder / "open_clip_pytorch_model.bin"
        torch.save(model.state_dict(), path)
    if with_config:
        save_config_for_hf(model, folder / "open_clip_config.json", model_cfg)
    return path


def open_clip_features(model, names: list[str] = IMAGE_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, encode_image) with open_clip's own eval transform for the model's preprocess config."""
    import open_clip
    from open_clip.model import get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(model)
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                          interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    pixels = torch.stack([transform(Image.open(IMAGES / n)) for n in names])
    with torch.no_grad():
        return pixels.numpy(), model.encode_image(pixels).numpy()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (actual * expected).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
