"""Describe the machine a benchmark ran on: numbers without their machine mean nothing.

CPU accounting (how busy the machine was while measuring) is clip_triton_serve.procfs's job; it is
re-exported here so a benchmark needs one import for "where and how loaded".
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

from clip_triton_serve.procfs import cpu_account, cpu_info, cpu_share

__all__ = ["cpu_account", "cpu_share", "describe", "gpu", "gpu_memory_by_process", "load_average", "one_line"]

# The instruction-set extensions that decide CPU inference speed, in the order people look for them.
NOTABLE_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                 "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("torch", "onnxruntime", "openvino", "numpy", "pillow", "pyspng", "tritonclient", "nvidia-pytriton", "grpcio",
            "locust")
_NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]


def _memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _nvidia_smi() -> list[dict]:
    """One entry per GPU that nvidia-smi lists (none without the tool or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        completed = subprocess.run(["nvidia-smi", *_NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    devices = []
    for line in completed.stdout.splitlines() if completed.returncode == 0 else []:
        name, memory, driver = (part.strip() for part in (line.split(",") + ["", ""])[:3])
        devices.append({"name": name, "memory_mib": int(memory) if memory.isdigit() else None, "driver": driver})
    return devices


def parse_compute_apps(text: str) -> dict[int, int]:
    """nvidia-smi's `--query-compute-apps=pid,used_memory --format=csv,noheader,nounits` -> {pid: MiB},
    summed over GPUs (a process may hold memory on several)."""
    held: dict[int, int] = {}
    for line in text.splitlines():
        pid, _, used = (part.strip() for part in line.partition(","))
        if pid.isdigit() and used.isdigit():
            held[int(pid)] = held.get(int(pid), 0) + int(used)
    return held


def gpu_memory_by_process() -> dict[int, int]:
    """MiB of GPU memory each process holds, as nvidia-smi sees it (empty without it, or where it cannot see
    the processes, as in some containers): CUDA context and every allocator's reserve included."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        completed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                    "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_compute_apps(completed.stdout) if completed.returncode == 0 else {}


def _torch_cuda() -> tuple[dict | None, list[dict]]:
    """torch's versions and its view of the GPUs; torch is imported only where it is installed."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return None, []
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        return versions, []
    devices = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append({"name": properties.name, "memory_mib": properties.total_memory // 2**20, "driver": None})
    return versions, devices


def gpu() -> dict | None:
    """The GPUs (name, memory, driver) with the CUDA and torch versions, or None on a machine without one.

    nvidia-smi is asked first (it knows the driver); torch fills in the CUDA version it was built for,
    and lists the devices where nvidia-smi is missing.
    """
    devices = _nvidia_smi()
    versions, torch_devices = _torch_cuda()
    devices = devices or torch_devices
    if not devices:
        return None
    return {"devices": devices, "count": len(devices), "cuda": (versions or {}).get("cuda"),
            "torch": (versions or {}).get("torch")}


def describe(with_gpu: bool = True) -> dict:
    """CPU model, cores, flags, memory, OS, Python and package versions, date (UTC), and the GPUs if any."""
    info = cpu_info()
    flags = info.get("flags", "").split()
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "cpu_family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "notable_flags": [flag for flag in NOTABLE_FLAGS if flag in flags],
        "all_flags": flags,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": versions,
        "gpu": gpu() if with_gpu else None,
    }


def one_line(description: dict) -> str:
    """`describe()` in one line, for report headers."""
    line = (f"{description['cpu_model']}, {description['logical_cpus']} logical CPUs, {description['os']}, "
            f"Python {description['python']}")
    for device in (description.get("gpu") or {}).get("devices", []):
        line += f", {device['name']} ({device['memory_mib']} MiB)"
    return line
