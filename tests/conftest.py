"""Shared fixtures: golden data from ../shared, exported repositories, and real Triton servers.

Servers bind 127.0.0.1 on free ports and are always stopped by PID (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from clip_triton_serve import TritonServer, local_server
from clip_triton_serve.procfs import orphaned_backend_stubs
from clip_triton_export.pipeline import export_repository
from measure import preprocess_stages

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "images"
GOLDEN = SHARED / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
IMAGE_NAMES: list[str] = MANIFEST["images"]
CHECKPOINTS: list[str] = sorted(MANIFEST["checkpoints"])


def golden_features(checkpoint: str) -> dict[str, np.ndarray]:
    data = np.load(GOLDEN / MANIFEST["checkpoints"][checkpoint]["features"])
    return dict(zip(data["names"], data["features"]))


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def assert_features_match(actual: np.ndarray, expected: np.ndarray, cosine: float = 0.99999,
                          relative_l2: float = 1e-4) -> None:
    """Rows must agree with OpenAI's encode_image: cosine >= 0.99999 and relative L2 error <= 1e-4."""
    actual, expected = np.atleast_2d(actual), np.atleast_2d(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    cos = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    rel = np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= cosine, cos
    assert rel.max() <= relative_l2, rel


running_server = local_server  # a real tritonserver on free loopback ports, always stopped by PID


def golden_checkpoint(checkpoint: str) -> Path:
    return GOLDEN / MANIFEST["checkpoints"][checkpoint]["file"]


def export_golden(directory: Path, checkpoint: str, fmt: str = "onnx", **options) -> Path:
    export_repository(directory, checkpoint=golden_checkpoint(checkpoint), fmt=fmt, target="cpu", **options)
    return directory


@pytest.fixture(scope="session", autouse=True)
def no_stub_outlives_the_session() -> Iterator[None]:
    """Tests that SIGKILL a server's supervisor leave its Python-backend stubs to exit by themselves, and some
    hang instead; a later start stops them (test_reliability_faults.py), and so does the end of the session."""
    yield
    for pid in orphaned_backend_stubs():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def vit_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_golden(tmp_path_factory.mktemp("vit-onnx"), "tiny-vit-b32")


@pytest.fixture(scope="session")
def variant_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """export(arch, precision): a random-init architecture's repository in that precision, made once per
    session (an int8 ViT-B/32 takes ~20 s)."""
    exports: dict[tuple[str, str], Path] = {}

    def export(arch: str, precision: str) -> Path:
        if (arch, precision) not in exports:
            exports[arch, precision] = tmp_path_factory.mktemp(precision)
            export_repository(exports[arch, precision], random_init=arch, precision=precision)
        return exports[arch, precision]
    return export


@pytest.fixture(scope="module")
def gpu_transform(tmp_path_factory: pytest.TempPathFactory):
    """clip_gpu_transform as the GPU target ships it, imported from a rendered repository (gpu_support)."""
    from gpu_support import shipped_gpu_transform

    return shipped_gpu_transform(tmp_path_factory.mktemp("gpu-repository"))


@pytest.fixture(scope="session")
def vit_server(vit_repository: Path) -> Iterator[TritonServer]:
    """One shared server (tiny ViT, ONNX) for tests that only need *a* correct server."""
    with running_server(vit_repository) as server:
        yield server


def settled_preprocess_totals(metrics_url: str, timeout_s: float = 10.0) -> dict:
    """clip_preprocess's metrics once they have caught up with earlier requests: the same in two readings taken
    more than one publishing interval (0.5 s) apart."""
    deadline = time.monotonic() + timeout_s
    last = preprocess_stages.read(metrics_url)
    while True:
        time.sleep(0.6)
        now = preprocess_stages.read(metrics_url)
        if now == last or time.monotonic() > deadline:
            assert now == last, "clip_preprocess's metrics kept changing with no request in flight"
            return now
        last = now


def preprocess_window(metrics_url: str, before: dict, images: int, timeout_s: float = 10.0) -> dict:
    """clip_preprocess's metrics since `before` (measure.preprocess_stages), once `images` more were counted: the
    models publish every 0.5 s, so this waits for them (and fails if more or fewer than `images` arrive)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = preprocess_stages.window(before, preprocess_stages.read(metrics_url))
        if sum(seen["images"].values()) >= images or time.monotonic() > deadline:
            assert sum(seen["images"].values()) == images, seen
            return seen
        time.sleep(0.1)
