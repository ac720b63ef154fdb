"""The CPU target's model runners: splitting a batch across single-threaded runs changes no result."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clip_triton_export.architectures import named_architecture
from clip_triton_export.repository import RepositoryOptions, model_configs
from clip_triton_export.triton_models.visual_runtime import SplittingRunner, available_cores, open_runner


class Recorder:
    """A fake model (features = per-image pixel sums) that records which thread ran which batch size."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append((len(pixels), threading.current_thread().name))
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True)


def test_small_batches_run_whole_and_larger_ones_are_split_in_order() -> None:
    whole, part = Recorder(), Recorder()
    runner = SplittingRunner(whole, part, ways=3)
    pixels = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    me = threading.current_thread().name
    try:
        assert runner(pixels[:1]).tolist() == [[3.0]]
        assert runner(pixels[:3]).ravel().tolist() == pixels[:3].sum(axis=1).tolist()
        assert whole.calls == [(1, me), (3, me)] and part.calls == []  # parts would be under MIN_PART
        out = runner(pixels)
    finally:
        runner.close()
    assert out.ravel().tolist() == pixels.sum(axis=1).tolist()  # parts come back in input order
    assert sorted(size for size, _ in part.calls) == [2, 2, 3]
    assert all(name.startswith("clip-visual-part") for _, name in part.calls)


def test_without_a_part_runner_nothing_is_split() -> None:
    whole = Recorder()
    runner = SplittingRunner(whole, None, ways=4)
    runner(np.ones((5, 2), dtype=np.float32))
    assert whole.calls == [(5, threading.current_thread().name)]


@pytest.fixture(scope="module")
def vit_onnx(vit_repository: Path) -> str:
    """The tiny golden ViT's exported model.onnx (the session's shared export)."""
    return str(vit_repository / "clip_visual/1/model.onnx")


@pytest.mark.parametrize("split_ways", [1, 2, 3])
def test_onnxruntime_split_runs_give_the_whole_runs_features(vit_onnx: str, split_ways: int) -> None:
    pixels = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    reference = open_runner("onnxruntime", vit_onnx, split_ways=1)
    runner = open_runner("onnxruntime", vit_onnx, split_ways=split_ways)
    try:
        assert (runner.pool is None) == (split_ways == 1)
        np.testing.assert_allclose(runner(pixels), reference(pixels), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(runner(pixels[:1]), reference(pixels[:1]), rtol=1e-5, atol=1e-5)
    finally:
        runner.close()
        reference.close()


@pytest.mark.parametrize("split_ways", [1, 2])
def test_openvino_runs_the_onnx_model_in_fp32(vit_onnx: str, split_ways: int) -> None:
    """OpenVINO (fp32 ViTs' CPU runtime) gives ONNX Runtime's features to fp32 precision, split or whole.

    OpenVINO would run fp32 operations in bf16 on CPUs with bf16 units (this one has AVX512-BF16) unless
    told not to: measured relative L2 error 3e-2 that way, 4e-6 in fp32.
    """
    pixels = np.random.default_rng(1).standard_normal((5, 3, 224, 224)).astype(np.float32)
    reference = open_runner("onnxruntime", vit_onnx, split_ways=1)
    runner = open_runner("openvino", vit_onnx, split_ways=split_ways)
    try:
        assert (runner.pool is None) == (split_ways == 1)
        for batch in (pixels, pixels[:1]):
            expected = reference(batch)
            assert np.linalg.norm(runner(batch) - expected) / np.linalg.norm(expected) < 1e-4
    finally:
        runner.close()
        reference.close()


def test_openvino_requests_first_run_on_the_thread_that_opens_the_runner(vit_onnx: str, monkeypatch) -> None:
    """OpenVINO's binding deadlocked a CI run when two threads made their first inference at once, so every
    request is run once on the opening thread before the split pool can use it."""
    import openvino

    first_caller: dict[int, str] = {}
    infer = openvino.InferRequest.infer

    def recording_infer(request, *args, **kwargs):
        first_caller.setdefault(id(request), threading.current_thread().name)
        return infer(request, *args, **kwargs)

    monkeypatch.setattr(openvino.InferRequest, "infer", recording_infer)
    runner = open_runner("openvino", vit_onnx, split_ways=2)
    try:
        runner(np.zeros((4, 3, 224, 224), dtype=np.float32))  # split: both part requests run in the pool
    finally:
        runner.close()
    assert len(first_caller) == 3  # the whole-batch request and the two part requests
    assert set(first_caller.values()) == {threading.current_thread().name}


def test_cpu_defaults_split_fp32_but_not_int8_and_never_hold_requests() -> None:
    spec = named_architecture("ViT-B/32")
    fp32 = model_configs(spec, RepositoryOptions())
    int8 = model_configs(spec, RepositoryOptions(precision="int8"))
    assert fp32["clip_visual"].parameters["split_ways"].string_value == "0"  # one per core
    assert int8["clip_visual"].parameters["split_ways"].string_value == "1"
    for configs in (fp32, int8):
        for name in ("clip_preprocess", "clip_visual"):
            assert configs[name].dynamic_batching.max_queue_delay_microseconds == 0
    gpu = model_configs(spec, RepositoryOptions(target="gpu"))
    assert gpu["clip_visual"].dynamic_batching.max_queue_delay_microseconds == 0
    assert "split_ways" not in gpu["clip_visual"].parameters
    assert available_cores() >= 1
