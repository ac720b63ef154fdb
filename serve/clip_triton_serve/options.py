"""What a tritonserver is started with: addresses, ports, drain time, admin key, TLS, GPU memory pool.

`ServerOptions.command()` is the one place tritonserver's command line is written, for `clip-triton
serve`, the container entrypoint, the tests and the benchmarks alike.
"""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .gpus import repository_gpus

ADMIN_HEADER = "clip-triton-admin-key"
ADMIN_PROTOCOLS = "model-repository,shared-memory,logging,trace"
# Python-backend models on KIND_GPU hand GPU tensors to each other through Triton's CUDA memory pool. Its
# 64 MB default failed 64-image fp16 batches on an H200 ("failed to copy data: invalid argument"); one
# 256-image fp16 pixel batch alone is 77 MB, and several are in flight between the two models.
GPU_MEMORY_POOL_BYTES = 2 * 1024**3
# The Python backend hands each request's inputs to its stub through a shared-memory region that grows in
# steps of 1 MB by default: a request of sixteen 12 MP JPEGs (40 MB) would take forty steps. GPU
# repositories, which take such batches, grow it 64 MB at a time.
GPU_SHM_GROWTH_BYTES = 64 * 1024**2


@dataclass
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    exit_timeout_s: int = 30  # graceful drain: in-flight requests finish before exit
    log_verbose: int = 0
    # Admin protocols need this header key (`clip-triton-admin-key: <key>`); None leaves them open,
    # which `serve` only allows on loopback.
    admin_key: str | None = None
    # gRPC over TLS: the server's PEM certificate and key; with a client CA, clients must present a
    # certificate signed by it (mutual TLS). HTTP and metrics stay plain (bind them to loopback).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # CUDA memory pool per GPU ({device id: bytes}); None: GPU_MEMORY_POOL_BYTES on every visible GPU when the
    # repository has GPU models, nothing otherwise.
    cuda_memory_pool_bytes: dict[int, int] | None = None
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("a client CA (--tls-client-ca) only makes sense with --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name.replace('_', '-')}: no such file {path}")

    @classmethod
    def on_free_ports(cls, repository: Path, **options) -> "ServerOptions":
        """Options with three distinct free loopback ports (tests, demo, benchmarks)."""
        grpc_port, http_port, metrics_port = free_ports(3)
        return cls(repository=repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                   **options)

    @property
    def local_host(self) -> str:
        """Where this machine reaches the server (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.local_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.local_host}:{self.metrics_port}/metrics"

    def memory_pools(self) -> dict[int, int]:
        if self.cuda_memory_pool_bytes is not None:
            return dict(self.cuda_memory_pool_bytes)
        return {device: GPU_MEMORY_POOL_BYTES for device in repository_gpus(self.repository)}

    def gpu_args(self) -> list[str]:
        """The CUDA memory pool on each GPU, and larger shared-memory steps, for repositories with GPU models."""
        pools = self.memory_pools()
        if not pools:
            return []
        return [*[f"--cuda-memory-pool-byte-size={device}:{size}" for device, size in sorted(pools.items())],
                f"--backend-config=python,shm-growth-byte-size={GPU_SHM_GROWTH_BYTES}"]

    def command(self, binary: Path, backends: Path, behind_front_port: int | None = None) -> list[str]:
        """tritonserver's command line. `behind_front_port`: Triton's own HTTP endpoint goes to that loopback
        port, behind the HTTP front that owns the public one (see http_front); None: on the public port."""
        http_host, http_port = ("127.0.0.1", behind_front_port) if behind_front_port else (self.host, self.http_port)
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={http_host}", f"--http-port={http_port}",
            "--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            *self.gpu_args(),
            *restricted_protocol_args(self.admin_key),
            *tls_args(self.tls_cert, self.tls_key, self.tls_client_ca),
            *self.extra_args,
        ]


def model_control_mode(command: list[str]) -> str:
    """The effective --model-control-mode (the last one given wins, as in tritonserver)."""
    modes = [arg.split("=", 1)[1] for arg in command if arg.startswith("--model-control-mode=")]
    return modes[-1] if modes else "none"


def restricted_protocol_args(admin_key: str | None) -> list[str]:
    """tritonserver flags that put the admin protocols behind the `clip-triton-admin-key` header."""
    if not admin_key:
        return []
    rule = f"{ADMIN_PROTOCOLS}:{ADMIN_HEADER}={admin_key}"
    return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


def tls_args(cert: Path | None, key: Path | None, client_ca: Path | None) -> list[str]:
    """tritonserver flags for gRPC over TLS (mutual TLS when a client CA is given)."""
    if cert is None or key is None:
        return []
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}",
            f"--grpc-server-key={Path(key).resolve()}"]
    if client_ca is not None:
        args += [f"--grpc-root-cert={Path(client_ca).resolve()}", "--grpc-use-ssl-mutual=true"]
    return args


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` right now.

    All probe sockets stay open until every port is chosen: probing one port at a time can return the
    same port twice (Triton then refuses to start: "cannot listen ... at the same address and port").
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (for several at once, use `free_ports`)."""
    return free_ports(1, host)[0]
