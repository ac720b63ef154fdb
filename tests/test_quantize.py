"""The int8 variant: within cosine 0.999 of fp32 on every shared image, for both architecture families."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import tritonclient.grpc

from clip_triton.transform import preprocess
from clip_triton_export.pipeline import export_repository, load_source
from conftest import IMAGE_NAMES, image_bytes, running_server
from test_server import infer


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_features_stay_within_cosine_0999_of_fp32(arch: str, tmp_path: Path) -> None:
    export_repository(tmp_path, random_init=arch, precision="int8")
    loaded = load_source(None, arch)
    pixels = np.stack([preprocess(image_bytes(n), loaded.spec.image_resolution) for n in IMAGE_NAMES])
    with torch.no_grad():
        fp32 = loaded.model(torch.from_numpy(pixels)).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "clip_visual/1/model.onnx"))
    int8 = session.run(None, {"PIXEL_VALUES": pixels})[0]
    assert cosines(int8, fp32).min() >= 0.999
    assert not np.allclose(int8, fp32, rtol=1e-4, atol=1e-4)  # it really is another computation
    if arch == "RN50":  # and it serves, labelled as int8
        with running_server(tmp_path) as server:
            served = infer(server.grpc_url, [image_bytes(n) for n in IMAGE_NAMES])
            client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
            config = client.get_model_config("clip_visual", as_json=True)["config"]
            client.close()
        assert cosines(served, fp32).min() >= 0.999
        assert config["parameters"]["weights"]["string_value"] == "random-init:RN50:seed=0:int8"


def test_int8_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 is an ONNX Runtime CPU variant"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="int8", target="gpu")
    with pytest.raises(ValueError, match="int8 is an ONNX Runtime CPU variant"):
        export_repository(tmp_path, random_init="ViT-B/32", precision="int8", fmt="torchscript")


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_int8_with_fast_jpeg_decode_stays_within_cosine_0999_of_the_exact_fp32_path(arch: str, tmp_path: Path) -> None:
    """The fastest phone-photo setup (int8 + fast JPEG decode) against OpenAI's exact transform + fp32 model."""
    from test_transform import phone_photo

    export_repository(tmp_path, random_init=arch, precision="int8")
    loaded = load_source(None, arch)
    photos = [phone_photo(name) for name in ("rocket.jpg", "chelsea.png", "hubble_deep_field.jpg")]
    size = loaded.spec.image_resolution
    exact = np.stack([preprocess(data, size) for data in photos])
    fast = np.stack([preprocess(data, size, fast_jpeg=True) for data in photos])
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(exact)).numpy()
    served_way = onnxruntime.InferenceSession(str(tmp_path / "clip_visual/1/model.onnx")).run(None, {"PIXEL_VALUES": fast})[0]
    assert cosines(served_way, reference).min() >= 0.999
