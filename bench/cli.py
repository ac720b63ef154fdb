"""`python -m bench`: measure everything in one run and write the report (Markdown, PNG plots, JSON).

Order matters on a small machine: the in-process baselines run first, with no server running; then
the server starts and the concurrency sweeps run; nothing else of ours runs beside a measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from clip_triton import contract
from clip_triton_serve import ServerOptions, TritonServer
from clip_triton.transform import preprocess
from clip_triton_export.repository import artifact_bytes

from measure import loadgen, machine
from measure.images import Workload, phone_photos, small_photos

from . import inprocess, report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "images"
WORKLOADS = ("small", "phone")


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="OpenAI checkpoint (default: seeded random --random-init)")
    source.add_argument("--random-init", default="ViT-B/32", help="architecture for seeded random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repository", type=Path,
                        help="serve this already exported repository (a variant to compare) instead of exporting "
                             "one; the in-process baselines still use --checkpoint/--random-init")
    parser.add_argument("--label", default="", help="names this run in the report, e.g. 'fp32 defaults'")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of small photos")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of: small, phone")
    parser.add_argument("--max-images", type=int, help="use only the first N images of each workload")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement time per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per concurrency level")
    parser.add_argument("--concurrency", type=_integers, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--batch-sizes", type=_integers, default=[1, 2, 4, 8, 16, 32],
                        help="batch sizes for the model-alone ceiling")
    parser.add_argument("--seed-batch-sizes", type=_integers, default=[1, 16], help="batch sizes for the seed's way")
    parser.add_argument("--seed-rounds", type=int, default=3,
                        help="measure the seed's way this many times, batch sizes interleaved, and report the "
                             "median round (on a 2-core VM one 8 s run of batch 16 varied by up to 12 %%)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench_out",
                        help="ignored folder for the exported repository, phone photos and server log")
    parser.add_argument("--report-dir", type=Path, default=ROOT / "bench" / "report",
                        help="where report.md, the PNG plots and results.json go")
    args = parser.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    return args


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_workloads(args: argparse.Namespace) -> dict[str, Workload]:
    chosen = args.workloads.split(",")
    workloads = {}
    if "small" in chosen:
        workloads["small"] = small_photos(args.images, args.max_images)
    if "phone" in chosen:
        workloads["phone"] = phone_photos(args.images, args.work_dir / "phone-photos", args.max_images)
    return workloads


def prepare_repository(args: argparse.Namespace) -> Path:
    if args.repository is not None:
        return args.repository.resolve()
    from clip_triton_export.pipeline import export_repository

    repository = (args.work_dir / "repository").resolve()
    say(export_repository(repository, checkpoint=args.checkpoint,
                          random_init=None if args.checkpoint else args.random_init, seed=args.seed))
    return repository


def run_in_process(args, loaded, workloads: dict[str, Workload], artifact: Path, pixels: np.ndarray) -> dict:
    resolution = loaded.spec.image_resolution
    results: dict = {"preprocess": {}, "seed": {}, "ceiling": None}
    for name, workload in workloads.items():
        results["preprocess"][name] = inprocess.preprocessing_alone(workload, resolution, args.seconds / 2)
        say(f"preprocessing alone, {name}: {results['preprocess'][name]['images_per_s']:.2f} images/s")
        rounds: dict[str, list[dict]] = {str(size): [] for size in args.seed_batch_sizes}
        for round_number in range(1, args.seed_rounds + 1):
            for batch_size in args.seed_batch_sizes:
                measured = inprocess.seed_way(loaded.model, workload, resolution, batch_size, args.seconds)
                rounds[str(batch_size)].append(measured)
                say(f"seed's way, {name}, batch {batch_size}, round {round_number}: "
                    f"{measured['images_per_s']:.2f} images/s")
        results["seed"][name] = {size: median_round(measured) for size, measured in rounds.items()}
    if artifact.is_file():
        ceiling = inprocess.model_alone(artifact, visual_parameters(artifact.parent.parent), pixels,
                                        args.batch_sizes, args.seconds / 2)
        results["ceiling"] = ceiling
        say(f"model alone ({ceiling['runtime'].split(',')[0]}): best {ceiling['best_images_per_s']:.2f} images/s "
            f"at batch {ceiling['best_batch_size']}")
    else:
        say(f"no ONNX or OpenVINO artifact in {artifact.parent}: the ceiling is not measured")
    return results


def visual_parameters(model_dir: Path) -> dict[str, str]:
    """clip_visual's config parameters (its runtime and thread settings), as written by the exporter."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def median_round(rounds: list[dict]) -> dict:
    """The round with the median throughput (the lower middle one for an even count), with every round's figure."""
    chosen = sorted(rounds, key=lambda measured: measured["images_per_s"])[(len(rounds) - 1) // 2]
    return {**chosen, "rounds_images_per_s": [measured["images_per_s"] for measured in rounds]}


def feature_check(url: str, workload: Workload, loaded, pixels: np.ndarray) -> dict:
    """Server features vs eager torch on the same pixels: a benchmark of a wrong server is worthless."""
    served = loadgen.encode_all(url, workload.blobs())
    expected = inprocess.reference_features(loaded.model, pixels)
    cosine = (served * expected).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(expected, axis=1)
    relative = np.linalg.norm(served - expected, axis=1) / np.linalg.norm(expected, axis=1)
    return {"images": len(served), "min_cosine": float(cosine.min()), "max_relative_l2": float(relative.max())}


def run_server(args, repository: Path, workloads: dict[str, Workload], loaded, pixels: np.ndarray) -> dict:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = (args.work_dir / "tritonserver.log").resolve()
    log_path.unlink(missing_ok=True)
    server = TritonServer(ServerOptions.on_free_ports(repository), log_path=log_path)
    try:
        server.start().wait_until_ready(300)
        say(f"server ready on {server.grpc_url} (pid {server.pid}); log {log_path}")
        results = {"configs": _served_configs(server.grpc_url), "triton_version": _triton_version(server.grpc_url)}
        results["check"] = feature_check(server.grpc_url, workloads.get("small") or next(iter(workloads.values())),
                                         loaded, pixels)
        say(f"features vs eager torch: min cosine {results['check']['min_cosine']:.6f}, "
            f"max relative L2 {results['check']['max_relative_l2']:.2e}")
        results["sweeps"] = {}
        for name, workload in workloads.items():
            images = workload.blobs()
            loadgen.encode_all(server.grpc_url, images)  # every image seen once before timing
            say(f"server end to end, {name} ({len(images)} images)")
            results["sweeps"][name] = loadgen.sweep(server.grpc_url, images, args.concurrency, args.warmup,
                                                    args.seconds, progress=say, metrics_url=server.metrics_url)
        return results
    finally:
        server.stop()


def _served_configs(url: str) -> dict:
    """The batching and instance settings actually served: what a variant changes."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    configs = {}
    for model in (contract.PREPROCESS_MODEL, contract.VISUAL_MODEL):
        config = client.get_model_config(model, as_json=True)["config"]
        configs[model] = {
            "backend": config.get("backend", ""), "max_batch_size": config.get("max_batch_size"),
            "instance_group": [{"kind": g.get("kind"), "count": g.get("count")} for g in config.get("instance_group", [])],
            "dynamic_batching": config.get("dynamic_batching", {}),
            "parameters": {k: v.get("string_value") for k, v in config.get("parameters", {}).items()},
        }
    client.close()
    return configs


def _triton_version(url: str) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    version = client.get_server_metadata(as_json=True).get("version", "?")
    client.close()
    return version


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from clip_triton_export.pipeline import load_source

    started = time.monotonic()
    results: dict = {"schema": 1, "label": args.label, "machine": machine.describe(),
                     "load_average_start": machine.load_average()}
    say(f"{results['machine']['cpu_model']}, {results['machine']['usable_cpus']} CPUs, "
        f"load average {results['load_average_start']}")
    workloads = load_workloads(args)
    loaded = load_source(args.checkpoint, None if args.checkpoint else args.random_init, args.seed)
    repository = prepare_repository(args)
    resolution = loaded.spec.image_resolution
    reference = workloads.get("small") or next(iter(workloads.values()))
    pixels = np.stack([preprocess(data, resolution) for _, data in reference.images])
    version_dir = repository / contract.VISUAL_MODEL / "1"
    artifact = next((version_dir / name for name in ("model.onnx", "model.xml") if (version_dir / name).is_file()),
                    version_dir / "model.onnx")
    results["settings"] = {
        "seconds": args.seconds, "warmup_s": args.warmup, "concurrency": args.concurrency,
        "ceiling_batch_sizes": args.batch_sizes, "seed_batch_sizes": args.seed_batch_sizes,
        "seed_rounds": args.seed_rounds,
        "repository": str(repository), "exported_here": args.repository is None,
    }
    results["model"] = {"source": loaded.source, "architecture": str(loaded.spec),
                        "random_weights": loaded.random_weights,
                        "onnx_mb": round(artifact_bytes(artifact) / 1e6, 1) if artifact.is_file() else None}
    results["workloads"] = {name: w.summary() for name, w in workloads.items()}
    account = machine.cpu_account()
    results["in_process"] = run_in_process(args, loaded, workloads, artifact, pixels)
    middle = machine.cpu_account()
    results["server"] = run_server(args, repository, workloads, loaded, pixels)
    end = machine.cpu_account()
    results["cpu_use"] = {"in_process": machine.cpu_share(account, middle), "server": machine.cpu_share(middle, end)}
    say(f"CPUs used by other processes: {results['cpu_use']['in_process']['other_cpus']} during the in-process "
        f"part, {results['cpu_use']['server']['other_cpus']} during the server part")
    results["load_average_end"] = machine.load_average()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["headline"] = report.headline(results)

    args.report_dir.mkdir(parents=True, exist_ok=True)
    (args.report_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    written = report.write_report(results, args.report_dir)
    say(f"done in {results['total_seconds']:.0f} s; wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
