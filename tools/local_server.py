"""A tiny exported model for the reliability tools (served with clip_triton_serve.local_server)."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator


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
