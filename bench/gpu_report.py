"""`make bench-gpu`'s report: the headline against the GPU targets, every measured figure, and one plot.

    python -m bench.gpu_report bench/report/gpu/results.json   # re-render from the JSON alone
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .preprocess_table import in_pipeline_order, preprocess_stages_table

# Issue 15's targets for one H200, one run.
TARGET_SMALL_IMAGES_PER_S = 10_000
TARGET_SMALL_OVER_OPENAI_B64 = 150
TARGET_PHONE_IMAGES_PER_S = 1_500
TARGET_P50_MS_AT_CONCURRENCY_1 = 10.0
TARGET_SHARE_OF_A_CAPPING_UNIT = 0.85
WORKLOADS = ("small", "phone")  # the headline's columns
VARIED = "varied"  # small JPEGs of many sizes: where the GPU resize's two ways differ
ALL_WORKLOADS = (*WORKLOADS, VARIED)
REHEARSAL_VERDICT = "not judged: a rehearsal on the CPU"


def _ips(measured: dict | None) -> float | None:
    return None if not measured else measured.get("images_per_s")


def _level_name(level: dict) -> str:
    return f"{level['concurrency']} × {level['images_per_request']} image(s), {level['processes']} process(es)"


def _nvjpeg_cap(decoding: dict, name: str) -> float | None:
    """nvJPEG's best measured rate for a workload: in one process, or several decoding at once."""
    rates = [measured["images_per_s"] for key, measured in decoding.items()
             if key == f"nvjpeg_{name}" or (key.startswith(f"nvjpeg_{name}_") and key.endswith("_processes"))]
    return max(rates, default=None)


def headline(results: dict) -> dict:
    """The quoted figures, and each target's verdict where its inputs were measured."""
    openai = results.get("openai_way") or {}
    decoding = results.get("decoding_alone") or {}
    sweeps = (results.get("server") or {}).get("sweeps", {})
    figures: dict = {}
    for name in ALL_WORKLOADS:
        levels = sweeps.get(name, [])
        best = max(levels, key=lambda level: level["images_per_s"], default=None)
        single = next((level for level in levels if level["concurrency"] == 1 and level["images_per_request"] == 1),
                      None)
        b1, b64 = _ips(openai.get(f"{name}_b1")), _ips(openai.get(f"{name}_b64"))
        figures[name] = {
            "server_images_per_s": best and best["images_per_s"], "server_best_level": best and _level_name(best),
            "server_errors": sum(level["errors"] for level in levels),
            "p50_ms_at_concurrency_1": single and single["latency_ms"]["p50"],
            "openai_b1_images_per_s": b1, "openai_b64_images_per_s": b64,
            "server_over_openai_b64": best and b64 and best["images_per_s"] / b64,
            "server_over_openai_b1": best and b1 and best["images_per_s"] / b1,
            "nvjpeg_alone_images_per_s": _nvjpeg_cap(decoding, name),
            "libjpeg_alone_images_per_s": _ips(decoding.get(f"libjpeg_{name}")),
            "gpu_transform_alone_images_per_s": _ips(decoding.get(f"transform_{name}")),
            "gpu_transform_alone_per_size_images_per_s": _ips(decoding.get(f"transform_{name}_per_size")),
        }
        decode = figures[name]["nvjpeg_alone_images_per_s"]
        figures[name]["server_over_nvjpeg_alone"] = best and decode and best["images_per_s"] / decode
    alone = (results.get("model_alone") or {}).get("by_batch", {})
    figures["model_alone_images_per_s"] = {batch: measured["images_per_s"] for batch, measured in alone.items()}
    figures["targets"] = _verdicts(figures)
    if results.get("rehearsal"):  # CPU figures say nothing about the GPU targets
        figures["targets"] = {name: REHEARSAL_VERDICT for name in figures["targets"]}
    return figures


def _verdicts(figures: dict) -> dict:
    small, phone = figures["small"], figures["phone"]
    errors = sum(figures[name]["server_errors"] for name in ALL_WORKLOADS if name in figures)

    def verdict(value, bound, at_least=True):
        if value is None:
            return "not measured"
        return "met" if (value >= bound if at_least else value <= bound) else "not met"

    return {
        f"small JPEGs >= {TARGET_SMALL_IMAGES_PER_S} images/s": verdict(small["server_images_per_s"],
                                                                       TARGET_SMALL_IMAGES_PER_S),
        f"small JPEGs >= {TARGET_SMALL_OVER_OPENAI_B64}x OpenAI batch 64": verdict(small["server_over_openai_b64"],
                                                                                 TARGET_SMALL_OVER_OPENAI_B64),
        f"small JPEGs >= {TARGET_SHARE_OF_A_CAPPING_UNIT:.0%} of nvJPEG's cap": verdict(
            small["server_over_nvjpeg_alone"], TARGET_SHARE_OF_A_CAPPING_UNIT),
        f"12 MP JPEGs >= {TARGET_PHONE_IMAGES_PER_S} images/s": verdict(phone["server_images_per_s"],
                                                                       TARGET_PHONE_IMAGES_PER_S),
        f"12 MP JPEGs >= {TARGET_SHARE_OF_A_CAPPING_UNIT:.0%} of nvJPEG's cap": verdict(
            phone["server_over_nvjpeg_alone"], TARGET_SHARE_OF_A_CAPPING_UNIT),
        f"p50 at concurrency 1 <= {TARGET_P50_MS_AT_CONCURRENCY_1:.0f} ms (small JPEG)": verdict(
            small["p50_ms_at_concurrency_1"], TARGET_P50_MS_AT_CONCURRENCY_1, at_least=False),
        "zero errors": "met" if errors == 0 else "not met",
    }


def _number(value, form: str = "{:,.0f}") -> str:
    return "–" if value is None else form.format(value)


def markdown(results: dict) -> str:
    head = results.get("headline") or headline(results)
    rehearsal = bool(results.get("rehearsal"))  # CPU figures from `--rehearse-on-cpu`, said so throughout
    machine = results.get("machine", {})
    gpu = machine.get("gpu") or {}
    device = (gpu.get("devices") or [{}])[0]
    on_gpu = (f"on {gpu.get('count', '?')} × {device.get('name', '?')} ({device.get('memory_mib', '?')} MiB, driver "
              f"{device.get('driver', '?')}, torch {gpu.get('torch', '?')}, CUDA {gpu.get('cuda', '?')}) with")
    lines = ["# GPU benchmark (`make bench-gpu`)", "",
             f"{'Rehearsed' if rehearsal else 'Measured'} {machine.get('date_utc', '?')} "
             f"{'on the CPU only:' if rehearsal else on_gpu} {machine.get('usable_cpus', '?')} CPUs "
             f"({machine.get('cpu_model', '?')}); model: {results.get('model', {}).get('architecture', '?')} "
             f"({results.get('model', {}).get('source', '?')}), fp16, GPU target defaults.", "",
             "## Headline", "", "| target | verdict |", "|---|---|"]
    if rehearsal:
        lines[1:1] = ["", "**A rehearsal on the CPU** (`--rehearse-on-cpu`): every stage ran the benchmark's own code "
                      "with torch on the CPU, KIND_CPU instances and small batches, to find its mistakes before GPU time "
                      "is spent. These figures are not GPU figures; quote none of them."]
    lines += [f"| {name} | {verdict} |" for name, verdict in head["targets"].items()]
    lines += ["", "| images/s | small JPEGs | 12 MP JPEGs |", "|---|---|---|"]
    rows = [("OpenAI's way, batch 1", "openai_b1_images_per_s"), ("OpenAI's way, batch 64", "openai_b64_images_per_s"),
            ("nvJPEG decoding alone (best measured)", "nvjpeg_alone_images_per_s"),
            ("libjpeg decoding alone, every CPU thread", "libjpeg_alone_images_per_s"),
            ("the whole GPU transform alone", "gpu_transform_alone_images_per_s"),
            ("**the server end to end** (best level)", "server_images_per_s")]
    for label, key in rows:
        lines.append(f"| {label} | {_number(head['small'][key])} | {_number(head['phone'][key])} |")
    lines.append(f"| server / OpenAI batch 64 | {_number(head['small']['server_over_openai_b64'], '{:.0f}×')} | "
                 f"{_number(head['phone']['server_over_openai_b64'], '{:.0f}×')} |")
    lines.append(f"| server p50 at concurrency 1 | {_number(head['small']['p50_ms_at_concurrency_1'], '{:.1f} ms')} | "
                 f"{_number(head['phone']['p50_ms_at_concurrency_1'], '{:.1f} ms')} |")
    alone = head["model_alone_images_per_s"]
    lines += ["", "The fp16 model alone (pixels on the GPU): " +
              ", ".join(f"batch {batch}: {_number(value)} images/s" for batch, value in alone.items()) + "."]
    decoding = results.get("decoding_alone") or {}
    if decoding:
        lines += ["", "## Decoding alone", "", "| measured | small JPEGs | 12 MP JPEGs |", "|---|---|---|"]
        counts = sorted({int(key.split("_")[-2]) for key in decoding if key.endswith("_processes")})
        labels = {"nvjpeg": "nvJPEG, one process",
                  **{f"nvjpeg_{count}_processes": f"nvJPEG, {count} processes at once (sum)" for count in counts},
                  "transform": "the whole GPU transform", "libjpeg": "libjpeg (Pillow), every CPU thread"}
        for key, label in labels.items():
            cells = [_number(_ips(decoding.get(f"{key.split('_')[0]}_{name}{key[len(key.split('_')[0]):]}")))
                     for name in WORKLOADS]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
        lines += _transform_stages(decoding)
    variants = results.get("variants") or {}
    lines += _mixed_sizes(head, variants, results.get("workloads", {}).get(VARIED, {}))
    if variants:
        lines += ["", "## Settings compared with the defaults", "",
                  "| settings | levels | small JPEGs images/s (best) | 12 MP JPEGs images/s (best) | p50 ms at "
                  "concurrency 1, small / 12 MP | errors |", "|---|---|---|---|---|---|"]
        for name, measured in variants.items():
            sweeps = measured.get("sweeps", {})
            best = {w: max((level["images_per_s"] for level in sweeps.get(w, [])), default=None) for w in WORKLOADS}
            p50 = {w: next((level["latency_ms"]["p50"] for level in sweeps.get(w, [])
                            if level["concurrency"] == 1 and level.get("images_per_request", 1) == 1), None)
                   for w in WORKLOADS}
            errors = sum(level["errors"] for w in ALL_WORKLOADS for level in sweeps.get(w, []))
            levels = "; ".join(f"{w}: " + ", ".join(f"{level['concurrency']}x{level.get('images_per_request', 1)}"
                                                    for level in sweeps[w]) for w in ALL_WORKLOADS if sweeps.get(w))
            options = ", ".join(f"{key}={value}" for key, value in measured.get("options", {}).items())
            lines.append(f"| {name} ({options}) | {levels} | {_number(best['small'])} | {_number(best['phone'])} | "
                         f"{_number(p50['small'], '{:.1f}')} / {_number(p50['phone'], '{:.1f}')} | {errors} |")
    if results.get("errors"):
        lines += ["", "## Stages that failed", ""] + [f"- {name}: `{error}`" for name, error in results["errors"].items()]
    server = results.get("server") or {}
    if server.get("check"):
        lines += ["", "## Correctness", "", "Served features against eager fp32 PyTorch on the exact transform's pixels "
                  "(the fp16 model and the GPU decoding together): " +
                  ", ".join(f"{name}: min cosine {value:.6f}" for name, value in server["check"].items()) + "."]
    if results.get("fidelity"):
        lines += ["", "From `make test-gpu` (CLIP_TRITON_GPU_FIDELITY):", "", "```",
                  json.dumps(results["fidelity"], indent=1), "```"]
    for name in ALL_WORKLOADS:
        levels = server.get("sweeps", {}).get(name, [])
        if not levels:
            continue
        description = results.get("workloads", {}).get(name, {}).get("description", name)
        lines += ["", f"## Server end to end: {description}", "",
                  "| level | images/s | requests/s | p50 ms | p99 ms | errors | preprocess batch / queue ms / compute ms "
                  "| visual batch / queue ms / compute ms |", "|---|---|---|---|---|---|---|---|"]
        for level in levels:
            stats = level.get("server_stats", {})
            cells = []
            for model in ("clip_preprocess", "clip_visual"):
                s = stats.get(model, {})
                cells.append(f"{s.get('avg_batch_size', 0):.0f} / {s.get('queue_ms', 0):.1f} / "
                             f"{s.get('compute_infer_ms', 0):.1f}")
            lines.append(f"| {_level_name(level)} | {level['images_per_s']:,.0f} | {level.get('requests_per_s', 0):,.1f} "
                         f"| {level['latency_ms']['p50']:.1f} | {level['latency_ms']['p99']:.1f} | {level['errors']} | "
                         f"{cells[0]} | {cells[1]} |")
            if level.get("first_error"):
                lines.append(f"|  | first error: `{level['first_error'][:150]}` | | | | | | |")
        lines += preprocess_stages_table(levels, _level_name)
    if server.get("gpu_memory_mib"):
        held = server["gpu_memory_mib"]
        lines += ["", "## GPU memory held after the sweeps", "",
                  "Per process, as nvidia-smi reports it (CUDA context and every allocator's reserve included): " +
                  ", ".join(f"{name} {value:,} MiB" for name, value in held.items()) +
                  f"; {sum(held.values()):,} MiB in all."]
    if server.get("command"):
        lines += ["", "Server command line: `" + " ".join(server["command"]) + "`"]
    lines += ["", "Reproduce: " + ("`make bench-gpu-rehearsal` on any machine" if rehearsal else
                                   "`make bench-gpu` on a GPU host") + " (`python -m bench.gpu --help`); "
              "`python -m bench.gpu_report <its results.json>` re-renders this page."]
    return "\n".join(lines) + "\n"


def _transform_stages(decoding: dict) -> list[str]:
    """The in-process GPU transform's stage clock: milliseconds per image in each stage, per measurement."""
    measured = {key: value for key, value in decoding.items() if key.startswith("transform_") and value.get("ms_per_image")}
    if not measured:
        return []
    stages = [stage for stage in in_pipeline_order(s for value in measured.values() for s in value["ms_per_image"])
              if stage not in ("read_inputs", "respond")]  # the model's own, not run in process
    lines = ["", "The whole GPU transform alone, by stage (milliseconds per image; one process, batches one after "
             "another):", "", "| measured | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for key, value in measured.items():
        lines.append(f"| {key} | " + " | ".join(f"{value['ms_per_image'].get(stage, 0):.3f}" for stage in stages) + " |")
    return lines


def _mixed_sizes(head: dict, variants: dict, workload: dict) -> list[str]:
    """The GPU resize's two ways (mixed sizes together, the default; every size on its own) on the photos'
    7 sizes and on 1,024 sizes: in-process, and through the server (the per-size-resize variant)."""
    per_size = (variants.get("per-size-resize") or {}).get("sweeps", {})
    rows = []
    for name, label in (("small", "small JPEGs (the shared photos' sizes)"), (VARIED, "small JPEGs of many sizes")):
        figures = head.get(name) or {}
        best = max((level["images_per_s"] for level in per_size.get(name, [])), default=None)
        rows += [f"| the whole GPU transform alone, {label} | {_number(figures.get('gpu_transform_alone_images_per_s'))} "
                 f"| {_number(figures.get('gpu_transform_alone_per_size_images_per_s'))} |",
                 f"| the server end to end (best level), {label} | {_number(figures.get('server_images_per_s'))} | "
                 f"{_number(best)} |"]
    varied = head.get(VARIED) or {}
    measured_both_ways = [(head.get("small") or {}).get("gpu_transform_alone_per_size_images_per_s"),
                          varied.get("gpu_transform_alone_images_per_s"), varied.get("server_images_per_s"), per_size]
    if not any(measured_both_ways):  # a run from before the mixed-size resize: its figures are the per-size one's
        return []
    sizes = f"{workload.get('distinct_sizes', '?')} sizes" if workload else "many sizes"
    return ["", "## The GPU resize: sizes together or one by one", "",
            f"Small JPEGs of many sizes: {workload.get('description', sizes)}.", "",
            "| images/s | mixed sizes together (default) | every size on its own (mixed_resize_max_pixels 0) |",
            "|---|---|---|", *rows]


def plot(results: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = results.get("headline") or headline(results)
    labels = ["OpenAI b1", "OpenAI b64", "libjpeg alone", "nvJPEG alone", "GPU transform alone", "server"]
    keys = ["openai_b1_images_per_s", "openai_b64_images_per_s", "libjpeg_alone_images_per_s",
            "nvjpeg_alone_images_per_s", "gpu_transform_alone_images_per_s", "server_images_per_s"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, name in zip(axes, WORKLOADS):
        values = [head[name][key] or 0 for key in keys]
        axis.bar(labels, values, color=["#999", "#777", "#aab", "#6a9", "#4a8", "#c44"])
        axis.set_yscale("log")
        axis.set_title({"small": "small JPEG photos", "phone": "12 MP phone JPEGs"}[name])
        axis.set_ylabel("images/s (log)")
        axis.tick_params(axis="x", rotation=30)
        for index, value in enumerate(values):
            if value:
                axis.text(index, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(results: dict, report_dir: Path) -> list[Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    page = report_dir / "report.md"
    page.write_text(markdown(results))
    written = [page]
    try:
        written.append(plot(results, report_dir / "throughput.png"))
    except Exception as error:  # noqa: BLE001 - the page matters more than the picture
        print(f"plot not written: {error}")
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    data["headline"] = headline(data)
    source.write_text(json.dumps(data, indent=1, default=str) + "\n")  # with the headline of this code
    print("\n".join(str(p) for p in write_report(data, source.parent)))
