"""Client overhead: the client's CPU time per image, next to the server's compute time per image.

Encodes N small images (distinct seeded-noise PNG files, so reading files is included) through a real
server and measures:
- client CPU per image: `time.process_time()` of this process (every thread: gRPC, the worker pool,
  file reads, request building, result assembly) divided by N;
- server compute per image: from Triton's statistics API, the per-execution compute time
  (input + infer + output) of `clip_preprocess` and `clip_visual` summed over the batches they ran
  (`batch_stats`, so a batch shared by several requests is counted once), divided by N;
- server CPU per image, when this script started the server: CPU time of its process group from /proc.

Usage (starts a local server on free loopback ports unless --url is given):
    .venv/bin/python -m bench.client_overhead --random-init ViT-B/32 --report bench/report/client-overhead/vit-b32
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from clip_triton import ClipClient, contract
from clip_triton_serve.procfs import process_group_cpu_s
from measure import machine, triton_stats
from measure.images import noise_pngs

COMPOSING = (contract.PREPROCESS_MODEL, contract.VISUAL_MODEL)


def write_images(directory: Path, count: int, side: int, seed: int = 0) -> list[Path]:
    paths = []
    for i, data in enumerate(noise_pngs(count, side, seed)):
        path = directory / f"{i:05d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths


def server_counters(url: str) -> dict[str, tuple[int, int]]:
    """model -> (images run, compute ns summed over executions) from Triton's statistics API."""
    counters = triton_stats.read(url)
    return {model: (counters[model]["inference_count"], counters[model]["batch_compute_ns"]) for model in COMPOSING}


def measure(url: str, paths: list[Path], batch_size: int | None, concurrency: int | None,
            server_pid: int | None) -> dict:
    with ClipClient(url) as client:
        client.encode(paths[:64], batch_size=batch_size, concurrency=concurrency)  # warm-up: connect, load, JIT
        before, server_cpu_before = server_counters(url), server_pid and process_group_cpu_s(server_pid)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        features = client.encode(paths, batch_size=batch_size, concurrency=concurrency)
        client_cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        after = server_counters(url)
        server_cpu = (process_group_cpu_s(server_pid) - server_cpu_before) if server_pid else None
        info = client.model_info()
        weights = client.model_parameters().get("weights", "unknown weights")
    count = len(paths)
    assert features.shape == (count, info.embedding_dim)
    images_run = {m: after[m][0] - before[m][0] for m in COMPOSING}
    assert all(n == count for n in images_run.values()), f"other traffic on the server? {images_run}"
    server_compute = sum(after[m][1] - before[m][1] for m in COMPOSING) / 1e9
    result = {
        "images": count, "weights": weights, "embedding_dim": info.embedding_dim, "input_resolution": info.input_resolution,
        "batch_size": batch_size or info.max_batch_size, "concurrency": concurrency or 4,
        "wall_s": wall, "images_per_s": count / wall,
        "client_cpu_ms_per_image": 1e3 * client_cpu / count,
        "server_compute_ms_per_image": 1e3 * server_compute / count,
        "server_compute_ms_per_image_by_model": {m: 1e3 * (after[m][1] - before[m][1]) / 1e9 / count
                                                 for m in COMPOSING},
        "server_cpu_ms_per_image": None if server_cpu is None else 1e3 * server_cpu / count,
    }
    result["client_share_of_server_compute"] = result["client_cpu_ms_per_image"] / result["server_compute_ms_per_image"]
    result["client_share_of_server_cpu"] = (None if server_cpu is None else
                                            result["client_cpu_ms_per_image"] / result["server_cpu_ms_per_image"])
    return result


def report_markdown(result: dict, model: str, when: str, where: str) -> str:
    by_model = ", ".join(f"{m} {v:.3f} ms" for m, v in result["server_compute_ms_per_image_by_model"].items())
    server_cpu = result["server_cpu_ms_per_image"]
    return "\n".join([
        f"# Client overhead ({when})",
        "",
        f"- machine: {where}; client and server share it",
        f"- model: {model} (D={result['embedding_dim']}, {result['input_resolution']} px), CPU target",
        f"- {result['images']} distinct {result['side']}x{result['side']} PNG files, batch {result['batch_size']}, "
        f"concurrency {result['concurrency']}: {result['wall_s']:.1f} s, {result['images_per_s']:.1f} images/s",
        f"- **client CPU per image: {result['client_cpu_ms_per_image']:.3f} ms**",
        f"- server compute per image (Triton statistics, per execution): "
        f"{result['server_compute_ms_per_image']:.3f} ms ({by_model})",
        "- server CPU per image (process group, /proc): "
        + ("n/a (external server)" if server_cpu is None else f"{server_cpu:.3f} ms"),
        f"- **client CPU / server compute: {100 * result['client_share_of_server_compute']:.2f} %** (limit 5 %)",
        "- **client CPU / server CPU: "
        + ("n/a" if server_cpu is None else f"{100 * result['client_share_of_server_cpu']:.2f} %") + "** (limit 5 %)",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (else one is started here)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--repository", type=Path, help="existing model repository to serve")
    source.add_argument("--checkpoint", type=Path, help="OpenAI checkpoint to export and serve")
    source.add_argument("--random-init", default="ViT-B/32", help="architecture with random weights (default)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=64, help="image side in pixels (small images)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--report", type=Path, help="folder for client_overhead.{json,md}")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="clip-overhead-") as scratch:
        scratch = Path(scratch)
        paths = write_images(scratch, args.images, args.side)
        if args.url:
            result = measure(args.url, paths, args.batch_size, args.concurrency, None)
        else:
            from clip_triton_serve import ServerOptions, TritonServer

            repository = args.repository
            if repository is None:
                from clip_triton_export.pipeline import export_repository

                repository = scratch / "repository"
                print(export_repository(repository, checkpoint=args.checkpoint,
                                        random_init=None if args.checkpoint else args.random_init, target="cpu"))
            options = ServerOptions.on_free_ports(repository.resolve())
            with TritonServer(options) as server:
                result = measure(server.grpc_url, paths, args.batch_size, args.concurrency, server.pid)
    result["side"] = args.side
    when = datetime.date.today().isoformat()
    where = machine.one_line(machine.describe())
    model = result["weights"]
    text = report_markdown(result, model, when, where)
    print(text)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "client_overhead.json").write_text(
            json.dumps({"date": when, "machine": where, "model": model, **result}, indent=2) + "\n")
        (args.report / "client_overhead.md").write_text(text)
    shares = [result["client_share_of_server_compute"], result["client_share_of_server_cpu"] or 0.0]
    return 0 if max(shares) < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
