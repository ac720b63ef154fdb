"""clip_triton_serve: a real Triton server's lifecycle, without Docker — options, process, probes, supervisor.

`clip-triton serve` and the container entrypoint both run `supervisor.supervise`, so the two cannot drift
apart; tests, the demo and the benchmarks start throw-away servers with `local_server`.
"""
from .options import ServerOptions, free_port, free_ports, is_loopback
from .process import ServerError, TritonServer, local_server

__all__ = ["ServerError", "ServerOptions", "TritonServer", "free_port", "free_ports", "is_loopback", "local_server"]
