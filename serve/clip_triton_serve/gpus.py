"""Which GPUs a model repository uses, so that the server is given a CUDA memory pool on each of them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

_GPU_INSTANCE = re.compile(r"kind:\s*KIND_GPU")


def repository_uses_gpu(repository: Path) -> bool:
    """Whether any model's config asks for GPU instances (Triton's default for a GPU backend counts too
    rarely to matter here: every config we generate says its kind)."""
    return any(_GPU_INSTANCE.search(config.read_text(errors="replace"))
               for config in Path(repository).glob("*/config.pbtxt"))


def visible_gpus() -> tuple[int, ...]:
    """CUDA device ids this process would see: from CUDA_VISIBLE_DEVICES, else the NVIDIA driver's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry for entry in visible.split(",") if entry.strip() and entry.strip() != "-1"]
        return tuple(range(len(entries)))
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return tuple(range(len(list(driver.iterdir()))))
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return ()
        return tuple(range(sum(1 for line in listed.splitlines() if line.startswith("GPU "))))
    return ()


def repository_gpus(repository: Path) -> tuple[int, ...]:
    """The GPUs a server for `repository` will use: every visible one if its models run on GPUs."""
    return visible_gpus() if repository_uses_gpu(repository) else ()
