"""Hugging Face and open_clip checkpoints through the real Triton server: exported, served, queried with the
client; the features equal each library's own (its preprocessing and forward) within cosine 0.9999, with the
checkpoint's own normalisation applied by clip_preprocess (mean = std = 0.5 in two of the three cases), and
the same again when the client preprocesses locally from the parameters the server publishes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clip_triton.client import ClipClient
from clip_triton.transform import Preprocessing, preprocess
from clip_triton_export.pipeline import export_repository
from conftest import IMAGE_NAMES, IMAGES, running_server
from library_checkpoints import (HALF, OPEN_CLIP_RESNET, OPEN_CLIP_VIT, cosines, hf_features, open_clip_features,
                                 open_clip_model, save_hf_clip, save_open_clip)

pytestmark = pytest.mark.server
MIN_COSINE = 0.9999


def _hugging_face(folder: Path):
    checkpoint = save_hf_clip(folder / "clip-vit-hf")  # CLIPModel, safetensors, mean = std = 0.5, resize 112 -> 96
    return checkpoint, hf_features(checkpoint)[1], "huggingface:clip-vit-hf", Preprocessing(HALF, HALF).mean


def _open_clip_vit(folder: Path):
    model = open_clip_model(OPEN_CLIP_VIT, mean=HALF, std=HALF, interpolation="bilinear")
    return save_open_clip(folder, model, OPEN_CLIP_VIT), open_clip_features(model)[1], \
        "open_clip:open_clip_model.safetensors", Preprocessing(HALF, HALF).mean


def _open_clip_resnet(folder: Path):
    model = open_clip_model(OPEN_CLIP_RESNET)
    return save_open_clip(folder, model, OPEN_CLIP_RESNET, fmt="bin"), open_clip_features(model)[1], \
        "open_clip:open_clip_pytorch_model.bin", Preprocessing().mean


CASES = {"hugging_face_vit": _hugging_face, "open_clip_vit": _open_clip_vit, "open_clip_resnet": _open_clip_resnet}


@pytest.fixture(scope="module", params=sorted(CASES))
def served(request, tmp_path_factory: pytest.TempPathFactory):
    """(client, the library's features, weights label, mean) for one checkpoint, one server per case."""
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint, expected, label, mean = CASES[request.param](folder)
    repository = folder / "repository"
    export_repository(repository, checkpoint=checkpoint, target="cpu")
    with running_server(repository) as server, ClipClient(server.grpc_url) as client:
        yield client, expected, label, mean


def test_served_features_equal_the_librarys_own(served) -> None:
    client, expected, _, _ = served
    features = client.encode([IMAGES / n for n in IMAGE_NAMES])
    assert cosines(features, expected).min() >= MIN_COSINE


def test_client_side_preprocessing_uses_the_served_models_normalisation(served) -> None:
    client, expected, _, mean = served
    info = client.model_info()
    assert info.preprocessing.mean == mean
    features = client.encode([IMAGES / n for n in IMAGE_NAMES], preprocess="client")
    assert cosines(features, expected).min() >= MIN_COSINE
    if mean == HALF:  # the control: OpenAI's normalisation would not give these features
        openai = np.stack([preprocess((IMAGES / n).read_bytes(), info.input_resolution,
                                      preprocessing=replace(info.preprocessing, mean=Preprocessing().mean,
                                                            std=Preprocessing().std)) for n in IMAGE_NAMES])
        assert cosines(client.encode_pixels(openai), expected).min() < MIN_COSINE


def test_the_weights_label_names_the_source_format(served) -> None:
    client, _, label, mean = served
    parameters = client.model_parameters()
    assert parameters["weights"] == label
    assert Preprocessing.from_parameters(parameters).mean == mean
