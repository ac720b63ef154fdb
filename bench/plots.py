"""PNG plots for the report: throughput vs concurrency, and latency percentiles vs concurrency.

Small files on purpose (they are committed): modest size and DPI, no embedded fonts.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"small": "tab:blue", "phone": "tab:orange"}
DPI = 90


def _concurrency_axis(axis, levels: list[int]) -> None:
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels)
    axis.set_xticklabels([str(level) for level in levels])
    axis.set_xlabel("concurrent requests (one image each)")
    axis.grid(True, which="major", alpha=0.3)


def throughput_plot(results: dict, path: Path) -> Path:
    """Server images/s per concurrency, one panel per workload, with the in-process baselines as lines."""
    sweeps = results["server"]["sweeps"]
    ceiling = results["in_process"].get("ceiling")
    figure, axes = plt.subplots(1, len(sweeps), figsize=(5.0 * len(sweeps), 4.0), squeeze=False)
    for axis, (name, sweep) in zip(axes[0], sweeps.items()):
        x = [level["concurrency"] for level in sweep]
        axis.plot(x, [level["images_per_s"] for level in sweep], "o-", color=COLORS.get(name), label="server")
        for batch, style in zip(sorted(results["in_process"]["seed"].get(name, {}), key=int), ("--", ":")):
            value = results["in_process"]["seed"][name][batch]["images_per_s"]
            axis.axhline(value, color="tab:red", linestyle=style, linewidth=1.2,
                         label=f"seed's way, batch {batch} ({value:.1f})")
        if ceiling:
            axis.axhline(ceiling["best_images_per_s"], color="black", linestyle="-.", linewidth=1.2,
                         label=f"model alone, no preprocessing ({ceiling['best_images_per_s']:.1f})")
        _concurrency_axis(axis, x)
        axis.set_ylabel("images / s")
        axis.set_ylim(bottom=0)
        axis.set_title(f"Throughput, {name} photos")
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def latency_plot(results: dict, path: Path) -> Path:
    """p50/p90/p99 request latency per concurrency, one panel per workload, log scale."""
    sweeps = results["server"]["sweeps"]
    figure, axes = plt.subplots(1, len(sweeps), figsize=(5.0 * len(sweeps), 4.0), squeeze=False)
    for axis, (name, sweep) in zip(axes[0], sweeps.items()):
        x = [level["concurrency"] for level in sweep]
        for percentile, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            axis.plot(x, [level["latency_ms"][percentile] for level in sweep], style, label=percentile)
        _concurrency_axis(axis, x)
        axis.set_yscale("log")
        axis.set_ylabel("latency, ms")
        axis.set_title(f"Server latency, {name} photos")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
