"""Small batches of the GPU target's clip_visual, replayed from CUDA graphs.

Shipped beside the GPU target's clip_visual as `clip_cuda_graphs.py`; it needs only torch.

Why: on an H200 (2026-11-30) Triton measured 6.3 ms of compute per batch-1 execution of the fp16 ViT-B/32,
while the same model runs 256 images in 17 ms: at batch 1 the time goes to launching a few hundred kernels
one by one from TorchScript's interpreter, while the GPU waits. A CUDA graph launches the same kernels in one call.
A graph has fixed shapes, so there is one per batch size in `sizes`; a batch runs in the smallest graph that
holds it. The rows it does not fill keep whatever pixels an earlier batch left there and their features are
dropped: the encoders compute every image on its own (attention within an image, BatchNorm with fixed
statistics), so those rows cannot change the others. Larger batches run eagerly, where the GPU is busy long
enough for the launches to overlap its work.

Why the capture runs TorchScript unoptimized: TorchScript's profiling executor specializes a graph for the
shapes it has seen and may compile fused kernels on a later run; a first attempt that captured the optimized
module failed on the H200 with cudaErrorStreamCaptureInvalidated. Unoptimized, the module runs plain aten
kernels, which is all a graph replays anyway (the eager batches stay optimized).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

Run = Callable[[torch.Tensor], torch.Tensor]
# (run, static input) -> (replay, static output): replaying recomputes the output from the input, in place.
Capture = Callable[[Run, torch.Tensor], tuple[Callable[[], None], torch.Tensor]]
WARMUP_RUNS = 3  # before each capture: the allocator and cuBLAS settle on what the graph will hold


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1,2,4" -> (1, 2, 4); "" -> () (no graphs). Sorted, without repeats."""
    sizes = {int(part) for part in text.replace(" ", "").split(",") if part}
    if any(size < 1 for size in sizes):
        raise ValueError(f"CUDA graph batch sizes must be positive, got {text!r}")
    return tuple(sorted(sizes))


def cuda_graph_capture(pool: tuple | None = None) -> Capture:
    """Captures on a side stream after a few warm-up runs there; every graph of one runner shares `pool`
    (they never run at once, so the smaller ones reuse the largest one's memory)."""
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()

    def capture(run: Run, static_input: torch.Tensor) -> tuple[Callable[[], None], torch.Tensor]:
        side = torch.cuda.Stream(static_input.device)
        side.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run(static_input)
        torch.cuda.current_stream(static_input.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of Triton's other threads in this process cannot invalidate the capture.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_output = run(static_input)
        return graph.replay, static_output

    return capture


class GraphedBatches:
    """`run` for batches of any size: up to the largest of `sizes` by replaying the smallest captured graph
    that holds the batch, beyond it by `eager` (default: `run` itself). The result of a replay is a view of
    the graph's output, valid until the next call: copy it before then (the model copies it to the host)."""

    def __init__(self, run: Run, image: torch.Tensor, sizes: Iterable[int], capture: Capture,
                 eager: Run | None = None):
        self.eager = eager if eager is not None else run
        self.graphs: dict[int, tuple[torch.Tensor, Callable[[], None], torch.Tensor]] = {}
        for size in sorted(set(sizes), reverse=True):  # the largest first: it sizes the shared memory pool
            static_input = torch.zeros((size, *image.shape), dtype=image.dtype, device=image.device)
            replay, static_output = capture(run, static_input)
            self.graphs[size] = (static_input, replay, static_output)
        self.sizes: Sequence[int] = sorted(self.graphs)

    def graph_size(self, batch: int) -> int | None:
        """The graph a batch of `batch` images replays, or None when it runs eagerly."""
        return next((size for size in self.sizes if size >= batch), None)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.graph_size(len(pixels))
        if size is None:
            return self.eager(pixels)
        static_input, replay, static_output = self.graphs[size]
        static_input[:len(pixels)].copy_(pixels)
        replay()
        return static_output[:len(pixels)]
