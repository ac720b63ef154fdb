"""A tiny exported model and a real tritonserver on free loopback ports, for the reliability tools."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from clip_triton.server import ServerOptions, TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = ROOT.parent / "shared" / "golden" / "tiny-vit-b32.pt"
SHARED_IMAGES = ROOT.parent / "shared" / "images"


@contextlib.contextmanager
def exported_tiny_vit(**options) -> Iterator[Path]:
    """The tiny golden ViT exported (ONNX, CPU target) to a temporary repository."""
    from clip_triton_export.pipeline import export_repository

    with tempfile.TemporaryDirectory(prefix="clip-triton-tool-") as directory:
        export_repository(Path(directory), checkpoint=TINY_VIT, fmt="onnx", target="cpu", **options)
        yield Path(directory)


@contextlib.contextmanager
def local_server(repository: Path, **options) -> Iterator[TritonServer]:
    """tritonserver on free 127.0.0.1 ports, always stopped by PID."""
    server = TritonServer(ServerOptions(repository=repository, grpc_port=free_port(), http_port=free_port(),
                                        metrics_port=free_port(), **options))
    try:
        server.start().wait_until_ready(180)
        yield server
    finally:
        server.stop()
