"""The GPU path's decoder wrapper (`nvjpeg_decoder`) on CPU: torchvision's `decode_jpeg` is the same call on
either device, so its batch-first, one-by-one-on-failure logic is tested here; nvJPEG itself runs in
`make test-gpu`."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_bytes
from gpu_support import jpeg, shipped_gpu_transform

pytest.importorskip("torchvision.io", reason="torchvision is what the GPU path decodes JPEGs with")


@pytest.fixture(scope="module")
def decode(tmp_path_factory: pytest.TempPathFactory):
    return shipped_gpu_transform(tmp_path_factory.mktemp("gpu-repository")).nvjpeg_decoder(torch.device("cpu"))


def pillow_rgb(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)


def test_a_batch_of_good_jpegs_decodes_in_one_call_like_libjpeg(decode) -> None:
    photos = [jpeg(Image.open(io.BytesIO(image_bytes(name))).convert("RGB"), quality=90)
              for name in ("chelsea.png", "coffee.png")] + [image_bytes("rocket.jpg")]
    decoded = decode(photos)
    assert len(decoded) == len(photos)
    for blob, image in zip(photos, decoded):
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
        difference = np.abs(image.numpy().astype(int) - pillow_rgb(blob).astype(int))
        assert difference.max() <= 1, difference.max()  # two builds of libjpeg-turbo: at most rounding apart


def test_a_jpeg_the_decoder_refuses_fails_alone(decode) -> None:
    good = image_bytes("rocket.jpg")
    broken = good[:2] + b"\xff\xc0\x00\x03\x00" + good[2:]  # a frame header too short to hold a frame
    decoded = decode([good, broken, good])
    assert isinstance(decoded[1], Exception)
    assert all(isinstance(image, torch.Tensor) for image in (decoded[0], decoded[2]))
    assert torch.equal(decoded[0], decoded[2])
