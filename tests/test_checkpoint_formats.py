"""Hugging Face and open_clip checkpoints, in process: saved by the libraries themselves, loaded by us, and
compared with the libraries' own preprocessing and forward pass; architecture inference for open_clip's
ViT-H/14 and ViT-bigG/14 shapes; every one-line refusal."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_triton.transform import OPENAI_PREPROCESSING, Preprocessing, preprocess, resize_plan
from clip_triton_export.architectures import CheckpointError, ViTSpec, infer_architecture
from clip_triton_export.checkpoint import load_checkpoint
from clip_triton_export.open_clip_checkpoint import open_clip_spec
from clip_triton_export.visual import build_visual
from conftest import IMAGE_NAMES, IMAGES
from library_checkpoints import (HALF, OPEN_CLIP_RESNET, OPEN_CLIP_VIT, cosines, hf_features, open_clip_features,
                                 open_clip_model, save_hf_clip, save_open_clip)

MIN_COSINE = 0.9999
CLI = [str(Path(sys.executable).parent / "clip-triton")]


def our_pixels(loaded) -> np.ndarray:
    """Our transform, with the preprocessing the loader read from the checkpoint."""
    return np.stack([preprocess((IMAGES / n).read_bytes(), loaded.spec.image_resolution,
                                preprocessing=loaded.preprocessing) for n in IMAGE_NAMES])


def our_features(loaded, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.model(torch.from_numpy(pixels)).numpy()


def assert_same_as_library(loaded, pixels: np.ndarray, features: np.ndarray) -> None:
    """Same pixels as the library's preprocessing, and the library's features from both our pixels and its own."""
    mine = our_pixels(loaded)
    assert np.abs(mine - pixels).max() <= 1e-5
    assert cosines(our_features(loaded, pixels), features).min() >= MIN_COSINE
    assert cosines(our_features(loaded, mine), features).min() >= MIN_COSINE


# -- Hugging Face ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["folder", "weights_file", "vision_with_projection", "pytorch_model_bin",
                                     "quick_gelu_no_preprocessor_config", "sharded_safetensors", "sharded_bin",
                                     "sharded_index_file"])
def test_hugging_face_checkpoints_give_transformers_image_features(variant: str, tmp_path: Path) -> None:
    options = {"vision_with_projection": {"vision_only": True}, "pytorch_model_bin": {"safe": False},
               "quick_gelu_no_preprocessor_config": {"hidden_act": "quick_gelu", "mean": None},
               "sharded_safetensors": {"max_shard_size": "60KB"},
               "sharded_bin": {"max_shard_size": "60KB", "safe": False},
               "sharded_index_file": {"max_shard_size": "60KB"}}.get(variant, {})
    folder = save_hf_clip(tmp_path / "clip-hf", **options)
    if variant.startswith("sharded"):
        index = folder / ("pytorch_model.bin.index.json" if variant == "sharded_bin" else "model.safetensors.index.json")
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2, "expected several shards"
    pixels, features = hf_features(folder)
    target = {"weights_file": folder / "model.safetensors",
              "sharded_index_file": folder / "model.safetensors.index.json"}.get(variant, folder)
    loaded = load_checkpoint(target)
    assert loaded.source == "huggingface:clip-hf" and not loaded.random_weights
    expected_act = "quick_gelu" if variant.startswith("quick_gelu") else "gelu"
    assert loaded.spec == ViTSpec(96, 64, 2, 16, 48, heads=4, mlp_width=96, activation=expected_act)
    if variant.startswith("quick_gelu"):
        # No preprocessor_config.json: OpenAI's transform; transformers' defaults differ only in crop rounding.
        assert loaded.preprocessing == OPENAI_PREPROCESSING
        assert cosines(our_features(loaded, pixels), features).min() >= MIN_COSINE
        return
    assert loaded.preprocessing == Preprocessing(HALF, HALF, "bicubic", 112, "floor", "before_resize")
    assert_same_as_library(loaded, pixels, features)


def test_hugging_face_crop_offsets_are_rounded_down_as_clip_image_processor_does() -> None:
    hf = Preprocessing(resize=112, crop_offsets="floor")
    # 151x112 cropped to 96: a 55-pixel margin, 27.5 each side: HF floors it (27), torchvision rounds half to even (28).
    assert resize_plan(151, 112, 96, preprocessing=hf)[3] == 27
    assert resize_plan(151, 112, 96, preprocessing=Preprocessing(resize=112))[3] == 28


# -- open_clip ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["vit_gelu_bilinear_half_mean", "resnet", "vit_quickgelu_bin_named_config"])
def test_open_clip_checkpoints_give_open_clips_encode_image(variant: str, tmp_path: Path) -> None:
    if variant == "resnet":
        model_cfg, options = OPEN_CLIP_RESNET, {}
    elif variant == "vit_gelu_bilinear_half_mean":
        model_cfg, options = OPEN_CLIP_VIT, {"mean": HALF, "std": HALF, "interpolation": "bilinear"}
    else:
        model_cfg, options = {**OPEN_CLIP_VIT, "quick_gelu": True}, {}
    model = open_clip_model(model_cfg, **options)
    pixels, features = open_clip_features(model)
    if variant == "vit_quickgelu_bin_named_config":
        # torch.save(state_dict()) with no config beside it; the bare model config named explicitly.
        path = save_open_clip(tmp_path / "oc", model, model_cfg, fmt="bin", with_config=False)
        config = tmp_path / "my-model.json"
        config.write_text(json.dumps(model_cfg))
        loaded = load_checkpoint(path, open_clip_config=config)
    else:
        path = save_open_clip(tmp_path / "oc", model, model_cfg)
        loaded = load_checkpoint(path)
        assert load_checkpoint(path.parent).spec == loaded.spec  # the hub folder itself
    assert loaded.source == f"open_clip:{path.name}"
    if variant == "resnet":
        assert loaded.spec.family == "ModifiedResNet" and loaded.spec.heads == 16  # width 16 * 32 / head_width 32
    else:
        assert loaded.spec == ViTSpec(64, 96, 2, 16, 48, heads=3, mlp_width=240,
                                      activation="quick_gelu" if "quickgelu" in variant else "gelu")
    assert loaded.preprocessing.mean == Preprocessing(mean=options.get("mean", OPENAI_PREPROCESSING.mean)).mean
    assert loaded.preprocessing.interpolation == options.get("interpolation", "bicubic")
    assert_same_as_library(loaded, pixels, features)


@pytest.mark.parametrize(("name", "width", "layers", "heads", "mlp_width", "embed_dim"),
                         [("ViT-H-14", 1280, 32, 16, 5120, 1024), ("ViT-bigG-14", 1664, 48, 16, 8192, 1280)])
def test_open_clip_vit_h_and_bigg_are_inferred_from_open_clips_own_shapes(
        name: str, width: int, layers: int, heads: int, mlp_width: int, embed_dim: int, tmp_path: Path) -> None:
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    config_file = Path(open_clip.__file__).parent / "model_configs" / f"{name}.json"
    model_cfg = json.loads(config_file.read_text())
    with torch.device("meta"):  # open_clip's own module, shapes only: billions of parameters cost nothing
        tower = _build_vision_tower(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]))
    visual = tower.state_dict()
    expected = ViTSpec(224, width, layers, 14, embed_dim, heads=heads, mlp_width=mlp_width, activation="gelu")
    spec, preprocessing = open_clip_spec(visual, config_file, config_file)
    assert spec == expected and preprocessing == OPENAI_PREPROCESSING
    assert infer_architecture(visual) == ViTSpec(224, width, layers, 14, embed_dim, mlp_width=mlp_width)
    with torch.device("meta"):  # and our encoder built from the spec has exactly open_clip's tensors
        ours = build_visual(spec).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in visual.items()}


def test_preprocessing_round_trips_through_config_parameters() -> None:
    for preprocessing in (OPENAI_PREPROCESSING, Preprocessing(HALF, HALF, "bilinear", 256, "floor", "before_resize")):
        assert Preprocessing.from_parameters(preprocessing.parameters()) == preprocessing
    assert Preprocessing.from_parameters({}) == OPENAI_PREPROCESSING
    assert Preprocessing(mean=(0.48145466, 0.4578275, 0.40821073)).is_openai  # HF's spelling of OpenAI's values


# -- refusals, one line each, naming the file -----------------------------------------------------------------
def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for key in parents:
            target = target[key]
        target[leaf] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_clip(tmp_path_factory.mktemp("hf") / "clip-hf")


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = save_open_clip(tmp_path_factory.mktemp("oc") / "oc", open_clip_model(OPEN_CLIP_VIT), OPEN_CLIP_VIT)
    return path.parent


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def assert_refused_in_one_line(case: tuple, folder: Path, tmp_path: Path) -> None:
    """(make, message): `make` spoils a copy of `folder`; loading it must fail with `message` on one line."""
    make, message = case
    target = make(_copy(folder, tmp_path))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(target)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def hf_error_cases():
    def text_only(folder: Path) -> Path:
        from transformers import CLIPTextConfig, CLIPTextModel

        CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     vocab_size=100)).save_pretrained(folder / "text")
        return folder / "text"

    def without_projection(folder: Path) -> Path:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        save_file({k: v for k, v in state.items() if not k.startswith("visual_projection")}, str(folder / "model.safetensors"))
        return folder

    def without_vision(folder: Path) -> Path:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        save_file({k: v for k, v in state.items() if not k.startswith("vision_model.")}, str(folder / "model.safetensors"))
        return folder

    def without_config(folder: Path) -> Path:
        (folder / "config.json").unlink()
        return folder / "model.safetensors"

    return {
        "text_only": (text_only, "config.json: a CLIPTextModel (text tower only): no vision weights to serve"),
        "no_projection": (without_projection, "no visual_projection.weight"),
        "no_vision_weights": (without_vision, "clip-hf: no vision weights (no keys starting with 'vision_model.')"),
        "weights_without_config": (without_config, "model.safetensors: Hugging Face CLIP weights need the config.json"),
        "config_contradicts_layers": (lambda f: (_edit_json(f / "config.json", vision_config__num_hidden_layers=3), f)[1],
                                      "clip-hf: config.json says num_hidden_layers 3 but the weights have 2"),
        "config_contradicts_mlp": (lambda f: (_edit_json(f / "config.json", vision_config__intermediate_size=128), f)[1],
                                   "config.json says intermediate_size 128 but the weights have 96"),
        "tanh_gelu": (lambda f: (_edit_json(f / "config.json", vision_config__hidden_act="gelu_new"), f)[1],
                      "hidden_act 'gelu_new' is not supported"),
        "heads_do_not_divide": (lambda f: (_edit_json(f / "config.json", vision_config__num_attention_heads=5), f)[1],
                                "width 64 is not divisible by 5 attention heads"),
        "crop_is_not_the_input": (lambda f: (_edit_json(f / "preprocessor_config.json", crop_size={"height": 80, "width": 80}), f)[1],
                                  "preprocessor_config.json: crop_size"),
        "no_weights": (lambda f: ((f / "model.safetensors").unlink(), f)[1], "clip-hf: Hugging Face folder without weights"),
        "not_clip": (lambda f: (_edit_json(f / "config.json", model_type="bert"), f)[1], "model_type 'bert' is not a CLIP model"),
    }


def test_a_sharded_checkpoint_missing_a_shard_or_with_a_broken_index_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = save_hf_clip(tmp_path / "clip-hf", max_shard_size="60KB")
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    (folder / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json: shard {shards[1]} is missing$"):
        load_checkpoint(folder)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: unreadable shard index"):
        load_checkpoint(folder)


@pytest.mark.parametrize("case", sorted(hf_error_cases()))
def test_hugging_face_refusals_are_one_line(case: str, hf_folder: Path, tmp_path: Path) -> None:
    assert_refused_in_one_line(hf_error_cases()[case], hf_folder, tmp_path)


def open_clip_error_cases():
    def with_layer_scale(folder: Path) -> Path:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "open_clip_model.safetensors"))
        state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(96)
        save_file(state, str(folder / "open_clip_model.safetensors"))
        return folder

    return {
        "layer_scale_tensors": (with_layer_scale, "open_clip layer scale (transformer.resblocks.0.ls_1.gamma) is not supported"),
        "layer_scale_config": (lambda f: (_edit_json(f / "open_clip_config.json", model_cfg__vision_cfg__ls_init_value=1e-5), f)[1],
                               "open_clip_config.json: open_clip vision_cfg ls_init_value=1e-05 is not supported"),
        "avg_pool": (lambda f: (_edit_json(f / "open_clip_config.json", model_cfg__vision_cfg__pool_type="avg"), f)[1],
                     "vision_cfg pool_type='avg' is not supported"),
        "config_contradicts_patch": (lambda f: (_edit_json(f / "open_clip_config.json", model_cfg__vision_cfg__patch_size=32), f)[1],
                                     "the config says patch_size 32 but the weights have 16"),
        "squash_resize": (lambda f: (_edit_json(f / "open_clip_config.json", preprocess_cfg__resize_mode="squash"), f)[1],
                          "resize_mode 'squash' is not supported"),
        "text_only_config": (lambda f: (f / "open_clip_config.json").write_text('{"model_cfg": {"text_cfg": {}}}') and f,
                             "not an open_clip model config (no vision_cfg): a text-only model?"),
        "no_weights": (lambda f: ((f / "open_clip_model.safetensors").unlink(), f)[1], "open_clip folder without weights"),
    }


@pytest.mark.parametrize("case", sorted(open_clip_error_cases()))
def test_open_clip_refusals_are_one_line(case: str, open_clip_folder: Path, tmp_path: Path) -> None:
    assert_refused_in_one_line(open_clip_error_cases()[case], open_clip_folder, tmp_path)


def test_an_open_clip_only_width_without_its_config_is_refused(tmp_path: Path) -> None:
    """ViT-H/14's width with no config: its activation is not in the tensors, so we do not guess."""
    spec = ViTSpec(32, 1280, 0, 32, 8)
    state = {f"visual.{k}": v.to(torch.bfloat16) for k, v in build_visual(spec).state_dict().items()}
    torch.save(state, tmp_path / "vit-h-like.pt")
    with pytest.raises(CheckpointError, match=r"vit-h-like.pt: a width-1280 ViT is an open_clip model .*--open-clip-config"):
        load_checkpoint(tmp_path / "vit-h-like.pt")


def test_an_open_clip_config_given_for_hugging_face_weights_is_refused(hf_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "ViT-B-32.json"
    config.write_text(json.dumps(OPEN_CLIP_VIT))
    for target in (hf_folder, hf_folder / "model.safetensors"):
        with pytest.raises(CheckpointError, match="--open-clip-config is for open_clip state dicts"):
            load_checkpoint(target, open_clip_config=config)


def test_a_folder_of_neither_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="folder holds neither a Hugging Face config.json nor an open_clip_config.json"):
        load_checkpoint(tmp_path)


def test_the_cli_reports_a_text_only_checkpoint_in_one_line(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path)
    _edit_json(folder / "config.json", model_type="clip_text_model")
    result = subprocess.run(CLI + ["export", "--checkpoint", str(folder), "--repository", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "config.json: a CLIPTextModel (text tower only)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "fp16"])
def test_foreign_architectures_export_like_openais(fmt: str, hf_folder: Path, tmp_path: Path) -> None:
    """GELU, 16-wide heads and a 1.5x MLP survive every export path: ONNX, TorchScript, the GPU target's fp16."""
    import onnxruntime

    from clip_triton_export.export import export_visual
    from clip_triton_export.half import export_fp16

    loaded = load_checkpoint(hf_folder)
    pixels = our_pixels(loaded)
    expected = our_features(loaded, pixels)
    if fmt == "fp16":
        result = export_fp16(loaded.model, loaded.spec, tmp_path / "model.pt", pixels)
        assert result.min_cosine >= MIN_COSINE
        return
    path = export_visual(loaded.model, loaded.spec, fmt, tmp_path / "model")
    if fmt == "onnx":
        actual = onnxruntime.InferenceSession(str(path)).run(None, {"PIXEL_VALUES": pixels})[0]
    else:
        actual = torch.jit.load(str(path))(torch.from_numpy(pixels)).detach().numpy()
    assert cosines(actual, expected).min() >= 0.99999
