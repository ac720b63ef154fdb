"""Describe the machine a benchmark ran on: numbers without their machine mean nothing."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

# The instruction-set extensions that decide CPU inference speed, in the order people look for them.
NOTABLE_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                 "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
PACKAGES = ("torch", "onnxruntime", "openvino", "numpy", "pillow", "pyspng", "tritonclient", "nvidia-pytriton", "grpcio",
            "locust")


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    block = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines()) if k.strip()}


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict:
    """CPU model, cores, flags, memory, OS, Python and package versions, date (UTC)."""
    info = _cpuinfo()
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
    }


def cpu_account() -> dict[str, float]:
    """CPU seconds so far: busy on the whole machine, stolen by the hypervisor, and used by this process
    and its reaped children (the server counts once it has been stopped), with a wall-clock stamp."""
    import time

    ticks = os.sysconf("SC_CLK_TCK")
    busy = steal = 0.0
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, stolen = (fields + [0] * 8)[:8]
        busy, steal = (user + nice + system + irq + softirq) / ticks, stolen / ticks
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    return {"wall": time.monotonic(), "busy": busy, "steal": steal,
            "own": own.user + own.system + own.children_user + own.children_system}


def cpu_share(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """Average CPUs in use between two accounts: by the benchmark, by everything else, and stolen."""
    wall = max(end["wall"] - start["wall"], 1e-9)
    own = end["own"] - start["own"]
    return {"seconds": round(wall, 1), "benchmark_cpus": round(own / wall, 2),
            "other_cpus": round(max(0.0, (end["busy"] - start["busy"]) - own) / wall, 2),
            "stolen_cpus": round((end["steal"] - start["steal"]) / wall, 2)}
