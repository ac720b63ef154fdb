"""`clip-triton serve`: run Triton on a model repository in the foreground, supervised (see supervisor.py)."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from clip_triton_serve import ServerOptions, TritonServer, is_loopback
from clip_triton_serve.supervisor import supervise

READY_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="PEM CA: require client certificates signed by it (mutual TLS)")
    parser.add_argument("--admin-key", default=os.environ.get("CLIP_TRITON_ADMIN_KEY"),
                        help="header key guarding the admin protocols (model repository, shared memory, logging, "
                             "trace); default $CLIP_TRITON_ADMIN_KEY; generated when --host is not loopback")
    parser.add_argument("--unhealthy-exit-after", type=float, default=30.0, metavar="SECONDS",
                        help="exit non-zero when the server stays not-ready this long (0 = never)")


def server_options(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from the command line; a non-loopback --host without a key gets a generated one."""
    admin_key = getattr(args, "admin_key", None)
    if not admin_key and not is_loopback(args.host):
        admin_key = secrets.token_urlsafe(24)
        print(f"--host {args.host} is reachable from other machines: admin protocols are restricted; "
              f"admin key: {admin_key} (HTTP header clip-triton-admin-key; "
              f"gRPC header triton-grpc-protocol-clip-triton-admin-key)", flush=True)
    return ServerOptions(repository=args.repository.resolve(), host=args.host, grpc_port=args.grpc_port,
                         http_port=args.http_port, metrics_port=args.metrics_port, admin_key=admin_key,
                         tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)


def run(args: argparse.Namespace) -> int:
    """Until SIGINT/SIGTERM (drain, then stop: 0); 1 if Triton dies, loses a stub or stays unready."""
    server = TritonServer(server_options(args))
    return supervise(server, lambda message: print(message, flush=True),
                     lambda message: print(message, file=sys.stderr, flush=True), ready_timeout_s=READY_TIMEOUT_S,
                     unhealthy_exit_after_s=args.unhealthy_exit_after, description=str(args.repository))
