"""The GPU target's CUDA-graph runner (clip_cuda_graphs), run on the CPU with a stand-in capture that replays
by recomputing into the same static buffers: padding to the next graph size, stale rows from an earlier
batch, eager batches beyond the graphs, the capture order. The real capture runs in `make test-gpu`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_triton import contract
from clip_triton_export.pipeline import export_repository
from conftest import golden_checkpoint
from gpu_support import shipped_module


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):
    """(clip_cuda_graphs as shipped, the GPU target's fp16 TorchScript model) from one exported repository."""
    repository = tmp_path_factory.mktemp("gpu-repository")
    export_repository(repository, checkpoint=golden_checkpoint("tiny-vit-b32"), target="gpu")
    folder = repository / contract.VISUAL_MODEL / "1"
    return shipped_module(folder, "clip_cuda_graphs"), torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()


def recomputing_capture(captured: list[int]):
    """Like a CUDA graph: the output lives in a buffer made at capture, and a replay refills it from whatever
    the static input holds then."""
    def capture(run, static_input):
        captured.append(len(static_input))
        static_output = run(static_input)
        return lambda: static_output.copy_(run(static_input)), static_output

    return capture


def pixels(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, 3, 224, 224), generator=generator).half()


def test_batch_sizes_parse_to_a_sorted_set_and_empty_means_none(shipped) -> None:
    graphs, _ = shipped
    assert graphs.parse_batch_sizes("4,1, 2,4") == (1, 2, 4)
    assert graphs.parse_batch_sizes("") == ()
    for wrong in ("1,-2", "0"):
        with pytest.raises(ValueError, match="positive"):
            graphs.parse_batch_sizes(wrong)


def test_every_batch_size_gets_the_models_own_features(shipped) -> None:
    """Sizes 1..11 against graphs of 1, 2, 4, 8: each batch pads to the next size (rows left from a larger
    batch before it stay in the buffer) or, beyond 8, runs eagerly; every row equals the model's own."""
    graphs, model = shipped
    captured: list[int] = []
    eager_batches: list[int] = []

    def eager(batch: torch.Tensor) -> torch.Tensor:
        eager_batches.append(len(batch))
        return model(batch)

    with torch.inference_mode():
        runner = graphs.GraphedBatches(model, pixels(1, 0)[0], [4, 1, 8, 2, 8], recomputing_capture(captured),
                                       eager=eager)
        assert captured == [8, 4, 2, 1]  # the largest first: it sizes the pool the others share
        assert [runner.graph_size(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
        for count in (8, 3, 11, 1, 7, 2, 5, 4, 6, 9, 10):  # fill, then reuse with stale rows behind
            batch = pixels(count, seed=count)
            served = runner(batch).float().clone()
            expected = model(batch).float()
            assert served.shape == expected.shape
            np.testing.assert_allclose(served.numpy(), expected.numpy(), rtol=0, atol=2e-3,
                                       err_msg=f"batch of {count}")
    assert eager_batches == [11, 9, 10]


def test_the_padding_rows_cannot_reach_the_real_ones(shipped) -> None:
    """The premise of padding: a row's features do not depend on what the other rows of its batch hold."""
    _, model = shipped
    batch = pixels(4, seed=1)
    with torch.inference_mode():
        alone = model(batch[:1]).float()
        noisy = batch.clone()
        noisy[1:] = torch.full_like(noisy[1:], 60.0)  # far outside any normalized pixel
        together = model(noisy)[:1].float()
    np.testing.assert_allclose(together.numpy(), alone.numpy(), rtol=0, atol=2e-3)


def test_the_unoptimized_module_that_graphs_capture_computes_the_same(shipped) -> None:
    _, model = shipped
    batch = pixels(3, seed=2)
    with torch.inference_mode():
        optimized = model(batch).float()
        with torch.jit.optimized_execution(False):
            unoptimized = model(batch).float()
    np.testing.assert_allclose(unoptimized.numpy(), optimized.numpy(), rtol=0, atol=1e-6)
