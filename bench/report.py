"""Turn the benchmark's results (results.json) into report.md and its plots.

    python -m bench.report bench/report/results.json   # re-render without measuring again

The report is a measurement, not a verdict: it states the machine, the load on it, how each number
was taken, and the ratios a reader compares (server / in-process).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import plots
from .preprocess_table import preprocess_stages_table

STAGES = ("clip_preprocess", "clip_visual")


def _best_level(sweep: list[dict]) -> dict:
    return max(sweep, key=lambda level: level["images_per_s"])


def _level(sweep: list[dict], concurrency: int) -> dict | None:
    return next((level for level in sweep if level["concurrency"] == concurrency), None)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def headline(results: dict) -> dict:
    """The figures people quote, per workload, and the server / in-process ratios."""
    ceiling = results["in_process"].get("ceiling") or {}
    figures: dict = {"model_alone_images_per_s": ceiling.get("best_images_per_s"),
                     "model_alone_best_batch": ceiling.get("best_batch_size"),
                     "model_alone_batch1_p50_ms": (ceiling.get("batch1_latency_ms") or {}).get("p50")}
    for name, sweep in results["server"]["sweeps"].items():
        best = _best_level(sweep)
        single = _level(sweep, 1)
        entry = {"server_images_per_s": best["images_per_s"], "server_best_concurrency": best["concurrency"],
                 "server_p50_ms_at_concurrency_1": single["latency_ms"]["p50"] if single else None,
                 "server_errors": sum(level["errors"] for level in sweep)}
        for batch, seed in results["in_process"]["seed"].get(name, {}).items():
            entry[f"seed_batch{batch}_images_per_s"] = seed["images_per_s"]
            entry[f"server_over_seed_batch{batch}"] = _ratio(best["images_per_s"], seed["images_per_s"])
        entry["server_over_model_alone"] = _ratio(best["images_per_s"], figures["model_alone_images_per_s"])
        entry["p50_at_concurrency_1_over_model_alone_batch1"] = _ratio(entry["server_p50_ms_at_concurrency_1"],
                                                                       figures["model_alone_batch1_p50_ms"])
        figures[name] = entry
    return figures


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _machine_section(results: dict) -> list[str]:
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    return [
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']} (family/model/stepping {m['cpu_family_model_stepping']}), "
        f"{m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB RAM, {m['os']}",
        f"- Notable CPU flags (/proc/cpuinfo): {', '.join(m['notable_flags']) or 'none found'} "
        f"(all {len(m['all_flags'])} flags in results.json)",
        f"- Load average (1/5/15 min) at start: {results['load_average_start']}, at end: {results['load_average_end']}"
        " (includes this benchmark's own work)",
        *[f"- CPU use during the {part.replace('_', '-')} part ({use['seconds']:.0f} s): this benchmark "
          f"{use['benchmark_cpus']:.2f} CPUs, other processes {use['other_cpus']:.2f}, stolen by the hypervisor "
          f"{use['stolen_cpus']:.2f} (from /proc/stat)" for part, use in results.get("cpu_use", {}).items()],
        *[f"- GPU: {device['name']}, {device['memory_mib']} MiB, driver {device['driver'] or '?'}; CUDA "
          f"{m['gpu']['cuda'] or '?'}, torch {m['gpu']['torch'] or '?'}" for device in (m.get("gpu") or {}).get("devices", [])],
        f"- Triton {results['server'].get('triton_version', '?')} (nvidia-pytriton wheel, no Docker); "
        f"Python {m['python']}; {packages}",
        "",
    ]


def _rounds_note(rounds: int) -> str:
    if rounds <= 1:
        return ""
    return (f"; measured in {rounds} rounds, batch sizes interleaved, and the median round is used everywhere "
            "(one run of it varies by several per cent on a small VM; every round is listed under In process)")


def _method_section(results: dict) -> list[str]:
    s, model = results["settings"], results["model"]
    weights = ("seeded **random** weights (no checkpoint can be downloaded here; speed does not depend on the "
               "values)" if model["random_weights"] else "a real checkpoint")
    return [
        "## What was measured",
        "",
        f"One run, one machine, one model: `{model['source']}` — {model['architecture']}, {weights}; "
        f"model artifact {_number(model['onnx_mb'])} MB. Each point runs {s['seconds']:g} s "
        f"(preprocessing alone and the model-alone sweep {s['seconds'] / 2:g} s each) after a warm-up.",
        "",
        "1. **The seed's way, in process**: OpenAI's `clip.load` + `model.encode_image` in PyTorch eager fp32. "
        "OpenAI's `clip` package cannot be imported here (its torchvision is a CUDA build), so it is reproduced "
        "honestly: `clip_triton.transform` (the same Pillow calls as OpenAI's transform, bit-identical on the "
        "golden pixels) on each encoded image, `torch.stack`, and this project's visual module (OpenAI's "
        "architecture and numerics, verified against OpenAI's features) in eager fp32 under `torch.no_grad()`, "
        f"batches of {', '.join(str(b) for b in s['seed_batch_sizes'])}; torch's default thread count"
        f"{_rounds_note(s.get('seed_rounds', 1))}.",
        "2. **The model alone**: the exported model in the runtime the server uses for it ("
        f"{((results['in_process'].get('ceiling') or {}).get('runtime') or 'not measured')}), "
        f"in process, pixels precomputed, batch sizes {', '.join(str(b) for b in s['ceiling_batch_sizes'])}; "
        "the best is the ceiling for anything that runs this model.",
        "3. **The server end to end**: a real Triton server on 127.0.0.1, encoded image files in over gRPC, "
        "features out, at each concurrency (closed loop: C clients, each with one single-image request in flight, "
        f"like perf_analyzer's `--concurrency-range`), after a {s['warmup_s']:g} s warm-up in which every client "
        "got a reply. The load generator (one asyncio loop, `tritonclient.grpc.aio`) runs on the same 2 cores, as "
        "perf_analyzer would. Throughput is concurrency / mean latency (Little's law, exact for a closed loop); "
        "*counted* (replies inside the window / window) is shown beside it and agrees at low concurrency, but is "
        "quantized at high concurrency, where replies arrive in bursts as large as the batches.",
        "4. **The server's own breakdown**: Triton's statistics API read at both ends of each window (what "
        "perf_analyzer reports): per request, the time queued and in compute input / infer / output in each "
        "composing model, and the average batch size its dynamic batcher formed (inference count / execution count).",
        "5. **Two workloads**: " + "; ".join(
            f"*{name}*: {w['description']}, {len(w['images'])} images, mean {w['mean_megapixels']} MP, "
            f"{w['mean_bytes'] / 1e3:.0f} kB" for name, w in results["workloads"].items()) + ".",
        "",
    ]


def _headline_section(results: dict, figures: dict) -> list[str]:
    lines = ["## Headline", "",
             "| workload | seed's way b1 | seed's way b16 | model alone | server best | "
             "server / seed b16 | server / seed b1 | server / model alone | p50 at c=1 vs model alone b1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in results["server"]["sweeps"]:
        f = figures[name]
        lines.append(
            f"| {name} | {_number(f.get('seed_batch1_images_per_s'))} | {_number(f.get('seed_batch16_images_per_s'))} "
            f"| {_number(figures['model_alone_images_per_s'])} (b{figures['model_alone_best_batch']}) "
            f"| {_number(f['server_images_per_s'])} (c={f['server_best_concurrency']}) "
            f"| {_times(f.get('server_over_seed_batch16'))} | {_times(f.get('server_over_seed_batch1'))} "
            f"| {_times(f['server_over_model_alone'])} "
            f"| {_number(f['server_p50_ms_at_concurrency_1'])} ms vs {_number(figures['model_alone_batch1_p50_ms'])} ms |")
    check = results["server"].get("check", {})
    lines += ["", "Throughput in images/s. The model alone has no preprocessing, so it is the same for both workloads.",
              f"Correctness of what was measured: the server's features for {check.get('images', 0)} images vs eager "
              f"torch on the same pixels: min cosine {check.get('min_cosine', float('nan')):.6f}, max relative L2 "
              f"error {check.get('max_relative_l2', float('nan')):.1e}.", "",
              "![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    return lines


def _server_section(results: dict) -> list[str]:
    lines = ["## Server end to end, per concurrency", "",
             "Per composing model: the average batch its dynamic batcher formed, and the time per request queued "
             "and in compute infer (ms), from Triton's statistics.", ""]
    for name, sweep in results["server"]["sweeps"].items():
        lines += [f"### {name} photos", "",
                  "| concurrency | images/s | counted | p50 ms | p90 ms | p99 ms | requests | errors | "
                  + " | ".join(f"{stage}: batch, queue / infer ms" for stage in STAGES) + " |",
                  "|---|---|---|---|---|---|---|---|" + "---|" * len(STAGES)]
        for level in sweep:
            stages = []
            for stage in STAGES:
                s = level["server_stats"].get(stage)
                stages.append("–" if not s else f"{s['avg_batch_size']:.1f}, {s['queue_ms']:.1f} / {s['compute_infer_ms']:.1f}")
            lat = level["latency_ms"]
            lines.append(f"| {level['concurrency']} | {level['images_per_s']:.2f} "
                         f"| {level.get('images_per_s_counted', level['images_per_s']):.2f} | {lat['p50']:.1f} | {lat['p90']:.1f} "
                         f"| {lat['p99']:.1f} | {level['requests']} | {level['errors']} | " + " | ".join(stages) + " |")
        errors = [level["first_error"] for level in sweep if level["first_error"]]
        if errors:
            lines += ["", f"First error: `{errors[0]}`"]
        lines.append("")
    return lines


def _breakdown_section(results: dict) -> list[str]:
    lines = ["## Triton's breakdown per composing model", "",
             "Per request, averaged over each window, in ms: queue, compute input, compute infer, compute output; "
             "*request* is the whole time in that model. Each request of a dynamic batch is charged the whole "
             "batch's compute time. The ensemble's request time is the server-side latency end to end.", ""]
    for name, sweep in results["server"]["sweeps"].items():
        lines += [f"### {name} photos", "",
                  "| c | model | requests | avg batch | queue | input | infer | output | request |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for level in sweep:
            for model, s in sorted(level["server_stats"].items()):
                lines.append(f"| {level['concurrency']} | {model} | {s['requests']} | {s['avg_batch_size']:.2f} "
                             f"| {s['queue_ms']:.1f} | {s['compute_input_ms']:.1f} | {s['compute_infer_ms']:.1f} "
                             f"| {s['compute_output_ms']:.1f} | {s['request_ms']:.1f} |")
        lines += preprocess_stages_table(sweep, lambda level: f"c={level['concurrency']}")
        lines.append("")
    return lines


def _in_process_section(results: dict) -> list[str]:
    data = results["in_process"]
    lines = ["## In process", "", "| measurement | workload | batch | images/s | p50 ms per step | steps |",
             "|---|---|---|---|---|---|"]
    for name, measured in data["preprocess"].items():
        lines.append(f"| preprocessing alone (decode + OpenAI transform) | {name} | 1 | {measured['images_per_s']:.2f} "
                     f"| {measured['step_latency_ms']['p50']:.1f} | {measured['steps']} |")
    for name, by_batch in data["seed"].items():
        for batch, measured in by_batch.items():
            rounds = measured.get("rounds_images_per_s", [])
            spread = f" (rounds: {', '.join(f'{value:.2f}' for value in rounds)})" if len(rounds) > 1 else ""
            lines.append(f"| seed's way (preprocess + eager fp32) | {name} | {batch} | {measured['images_per_s']:.2f}"
                         f"{spread} | {measured['step_latency_ms']['p50']:.1f} | {measured['steps']} |")
    ceiling = data.get("ceiling")
    if ceiling:
        for batch, measured in ceiling["by_batch"].items():
            lines.append(f"| model alone, {ceiling['runtime'].split(',')[0]} | pixels | {batch} "
                         f"| {measured['images_per_s']:.2f} | {measured['step_latency_ms']['p50']:.1f} | {measured['steps']} |")
    lines.append("")
    return lines


def _configuration_section(results: dict) -> list[str]:
    lines = ["## Served configuration", ""]
    for model, config in results["server"].get("configs", {}).items():
        groups = ", ".join(f"{g['count']}× {g['kind']}" for g in config["instance_group"])
        batching = config["dynamic_batching"]
        lines.append(f"- `{model}`: backend {config['backend']}, instances {groups}, max batch "
                     f"{config['max_batch_size']}, preferred batch sizes {batching.get('preferred_batch_size', [])}, "
                     f"max queue delay {batching.get('max_queue_delay_microseconds', 0)} µs, parameters "
                     f"{config['parameters']}")
    lines += ["", "## Reproduce", "",
              "    make bench                                   # this report (random-init ViT-B/32)",
              "    make bench CHECKPOINT=ViT-B-32.pt            # a real checkpoint",
              "    make bench BENCH_SECONDS=30 BENCH_ARGS='--repository other_repo --label variant' "
              "BENCH_REPORT=bench_out/variant",
              "", f"Total run time: {results['total_seconds']:.0f} s. Raw results: `results.json`.", ""]
    return lines


def render(results: dict) -> str:
    figures = results.get("headline") or headline(results)
    title = "# clip-triton benchmark" + (f": {results['label']}" if results.get("label") else "")
    lines = [title, "", f"{results['machine']['date_utc']} · {results['machine']['cpu_model']}, "
             f"{results['machine']['usable_cpus']} CPUs · load average at start {results['load_average_start'][0]}", ""]
    others = max((use["other_cpus"] for use in results.get("cpu_use", {}).values()), default=0.0)
    if others > 0.1 * results["machine"]["usable_cpus"]:
        lines += [f"> **The machine was busy**: other processes used on average up to {others:.2f} of its "
                  f"{results['machine']['usable_cpus']} CPUs during this run (see Machine). Every figure below lost "
                  "CPU time to them, unevenly, so absolute figures are low and ratios are noisy. Re-run `make bench` "
                  "on a quiet machine for reference figures.", ""]
    for section in (_headline_section(results, figures), _machine_section(results), _method_section(results),
                    _server_section(results), _breakdown_section(results), _in_process_section(results),
                    _configuration_section(results)):
        lines += section
    return "\n".join(lines)


def write_report(results: dict, directory: Path) -> list[Path]:
    """report.md, throughput.png, latency.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [plots.throughput_plot(results, directory / "throughput.png"),
               plots.latency_plot(results, directory / "latency.png")]
    report = directory / "report.md"
    report.write_text(render(results))
    return [report, *written]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.report path/to/results.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    for written in write_report(json.loads(path.read_text()), path.parent):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
