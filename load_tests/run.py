"""`make loadtest`: a bounded headless locust run against a local server, then the SLO check.

Without `--url`, it exports a demo repository (seeded random ViT-B/32 for the CPU target, or
`--checkpoint`), or serves `--repository`, on free loopback ports, and stops the server by PID
afterwards. Traffic only ever goes to a loopback address: to load a remote server, run locust on
`load_tests/locustfile.py` yourself. Exit code: 0 SLO met, 1 SLO broken, 2 the run itself failed.
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from clip_triton_serve import ServerOptions, TritonServer, is_loopback

from . import headless, slo
from .headless import LOCUSTFILE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m load_tests.run", description=__doc__.split("\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="gRPC HOST:PORT of a running server on this machine (loopback only)")
    target.add_argument("--repository", type=Path, help="serve this model repository")
    target.add_argument("--checkpoint", type=Path, help="export this checkpoint into the output folder and serve it")
    parser.add_argument("--random-init", default="ViT-B/32", help="architecture of the demo model (no --checkpoint)")
    parser.add_argument("--out", type=Path, default=Path("out/loadtest"), help="folder for CSV, HTML and logs")
    parser.add_argument("--users", type=int, default=4, help="concurrent closed-loop users")
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second (default: all at once)")
    parser.add_argument("--run-time", default="20s", help="locust duration, e.g. 20s, 2m")
    parser.add_argument("--images", type=Path, help="image folder (default: the locustfile's, ../shared/images)")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--max-failures", type=int, default=0, help="SLO: failed requests allowed")
    parser.add_argument("--p99-ms", type=float, default=2000.0, help="SLO: bound on p99 latency, ms")
    return parser.parse_args(argv)


@contextlib.contextmanager
def target_server(args: argparse.Namespace) -> Iterator[str]:
    """The gRPC address to load: the one given, or a server started here and stopped by PID after."""
    if args.url:
        host = args.url.split("://")[-1].rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host):
            raise SystemExit(f"--url {args.url}: make loadtest only sends traffic to 127.0.0.1; "
                             f"run locust -f {LOCUSTFILE} yourself for other hosts")
        yield args.url
        return
    repository = args.repository
    if repository is None:
        from clip_triton_export.pipeline import export_repository

        repository = args.out / "repository"
        print(export_repository(repository, checkpoint=args.checkpoint,
                                random_init=None if args.checkpoint else args.random_init), flush=True)
    server = TritonServer(ServerOptions.on_free_ports(repository.resolve()),
                          log_path=(args.out / "tritonserver.log").resolve())
    try:
        server.start().wait_until_ready(300)
        print(f"server ready on {server.grpc_url} (pid {server.pid})", flush=True)
        yield server.grpc_url
    finally:
        server.stop()


def locust_command(args: argparse.Namespace, url: str, prefix: Path) -> list[str]:
    return headless.locust_command(url, prefix, users=args.users, run_time=args.run_time, spawn_rate=args.spawn_rate,
                                   images=args.images, images_per_request=args.images_per_request, html=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    for stale in args.out.glob("locust*"):
        stale.unlink()
    with target_server(args) as url:
        completed = subprocess.run(locust_command(args, url, prefix), cwd=headless.ROOT)
    if completed.returncode != 0:
        print(f"locust exited with {completed.returncode}", file=sys.stderr)
        return 2
    print(f"reports: {prefix}_stats.csv, {prefix}.html")
    return slo.main([str(prefix), "--max-failures", str(args.max_failures), "--p99-ms", str(args.p99_ms)])


if __name__ == "__main__":
    sys.exit(main())
