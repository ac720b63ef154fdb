"""`clip-triton`: export a checkpoint, serve it locally, encode images, or run the demo."""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from . import contract, encode_command
from .errors import ClipError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clip-triton", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="checkpoint -> Triton model repository (ONNX or TorchScript)")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="OpenAI .pt (TorchScript or state dict), or .safetensors")
    source.add_argument("--random-init", metavar="ARCH", help="seeded random weights of an OpenAI architecture")
    export.add_argument("--repository", type=Path, required=True, help="model repository directory to write")
    _add_repository_options(export)
    export.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    export.add_argument("--configs-only", action="store_true", help="write configs and code, not the model file")
    export.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="bf16: OpenVINO computes the model in bfloat16 (AMX), about 3.5x fp32's speed on CPUs "
                             "with AMX; int8: OpenVINO int8 (VNNI/AMX) model, about 3-4x; both within cosine 0.999 "
                             "of fp32, checked at export, and served by OpenVINO in either target")
    export.add_argument("--calibration-images", type=Path,
                        help="folder of typical images: int8 calibrates on them, bf16 and int8 are checked on "
                             "them (default: examples/images)")
    export.add_argument("--min-cosine", "--int8-min-cosine", dest="min_cosine", type=float, default=0.999,
                        help="bf16 and int8 must keep every calibration image's features within this cosine of "
                             "fp32, or the export falls back to a safer scheme (int8 ViT) or refuses")

    serve = commands.add_parser("serve", help="run Triton on a model repository in the foreground")
    serve.add_argument("--repository", type=Path, required=True)
    _add_server_options(serve)
    serve.add_argument("--admin-key", default=os.environ.get("CLIP_TRITON_ADMIN_KEY"),
                       help="header key guarding the admin protocols (model repository, shared memory, logging, "
                            "trace); default $CLIP_TRITON_ADMIN_KEY; generated when --host is not loopback")
    serve.add_argument("--unhealthy-exit-after", type=float, default=30.0, metavar="SECONDS",
                       help="exit non-zero when the server stays not-ready this long (0 = never)")

    encode = commands.add_parser("encode", help="encode image files through the server into a .npz")
    encode_command.add_arguments(encode)

    demo = commands.add_parser("demo", help="export, serve, encode sample images, print a similarity table")
    demo.add_argument("--checkpoint", type=Path, help="a real OpenAI checkpoint (default: random ViT-B/32)")
    demo.add_argument("--arch", default="ViT-B/32", help="architecture for random weights")
    demo.add_argument("--images", type=Path, nargs="+", required=True)
    demo.add_argument("--repository", type=Path, default=Path("demo_repository"))
    demo.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return {"export": _export, "serve": _serve, "encode": _encode, "demo": _demo}[args.command](args)
    except (ValueError, RuntimeError, OSError, ClipError) as error:
        print(f"clip-triton {args.command}: {error}", file=sys.stderr)
        return 2


def _add_repository_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: runtime inside the Python backend (runs anywhere); gpu: Triton's native backend")
    parser.add_argument("--max-batch-size", type=int, default=contract.MAX_BATCH_SIZE)
    parser.add_argument("--fast-jpeg-decode", action="store_true",
                        help="decode big JPEGs at reduced scale (much faster, not bit-exact; cosine >= 0.999)")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="PEM CA: require client certificates signed by it (mutual TLS)")


def _export(args: argparse.Namespace) -> int:
    from clip_triton_export.pipeline import export_repository

    summary = export_repository(
        repository=args.repository, checkpoint=args.checkpoint, random_init=args.random_init,
        seed=args.seed, fmt=args.fmt, target=args.target, max_batch_size=args.max_batch_size,
        configs_only=args.configs_only, fast_jpeg_decode=args.fast_jpeg_decode,
        precision=args.precision, calibration_images=args.calibration_images,
        min_cosine=args.min_cosine,
    )
    print(summary)
    return 0


def _server_options(args: argparse.Namespace):
    from .server import ServerOptions, is_loopback

    admin_key = getattr(args, "admin_key", None)
    if not admin_key and not is_loopback(args.host):
        admin_key = secrets.token_urlsafe(24)
        print(f"--host {args.host} is reachable from other machines: admin protocols are restricted; "
              f"admin key: {admin_key} (HTTP header clip-triton-admin-key; "
              f"gRPC header triton-grpc-protocol-clip-triton-admin-key)", flush=True)
    return ServerOptions(repository=args.repository.resolve(), host=args.host, grpc_port=args.grpc_port,
                         http_port=args.http_port, metrics_port=args.metrics_port, admin_key=admin_key,
                         tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)


def _serve(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; exit non-zero if Triton dies or stays unready (never hang)."""
    from .server import TritonServer

    server = TritonServer(_server_options(args))
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _: stopping.append(number))
    signal.signal(signal.SIGINT, lambda number, _: stopping.append(number))
    server.start().wait_until_ready()
    stubs = server.backend_stubs()  # the Python-backend stubs to watch (Triton never restarts them)
    print(f"serving {args.repository} - gRPC {server.grpc_url}, HTTP {server.http_url}, "
          f"metrics {args.host}:{args.metrics_port} (pid {server.pid}; Ctrl-C stops)", flush=True)
    unready_since: float | None = None
    while not stopping:
        if server.process.poll() is not None:
            print(f"tritonserver exited with {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
            return 1
        dead = {pid: name for pid, name in stubs.items() if pid not in server.backend_stubs()}
        if dead:
            # Triton 2.51 neither restarts a dead stub nor marks its model unready: it would answer every
            # request with INTERNAL errors for ever. Exit non-zero so a supervisor restarts us.
            names = ", ".join(f"{name} (pid {pid})" for pid, name in sorted(dead.items()))
            print(f"Python backend stub died: {names}; Triton does not restart it, stopping", file=sys.stderr)
            server.stop(drain_s=0)
            return 1
        if server.is_ready():
            unready_since = None
        else:
            unready_since = unready_since or time.monotonic()
            if args.unhealthy_exit_after and time.monotonic() - unready_since > args.unhealthy_exit_after:
                print(f"tritonserver not ready for {args.unhealthy_exit_after:.0f} s, stopping:\n{server.log_tail()}",
                      file=sys.stderr)
                server.stop(drain_s=0)
                return 1
        time.sleep(1.0)
    print("stopping: draining in-flight requests", flush=True)
    code = server.stop()
    print(f"stopped (tritonserver exit code {code})", flush=True)
    return 0


def _encode(args: argparse.Namespace) -> int:
    return encode_command.run(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
