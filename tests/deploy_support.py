"""Helpers for the deployment tests: read the deployment files, and run the container's own entrypoint
(deploy/docker/triton/start.py) against the local tritonserver from the nvidia-pytriton wheel."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import promql_parser
import yaml

from clip_triton_serve import ServerOptions, free_ports
from clip_triton_serve.installation import local_environment, local_installation, triton_home
from clip_triton_serve.probes import is_ready

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
START = DEPLOY / "docker" / "triton" / "start.py"
HEALTHCHECK = DEPLOY / "docker" / "triton" / "healthcheck.py"
BUILDER = DEPLOY / "docker" / "builder" / "build-repository.sh"
APPLY_OVERRIDES = DEPLOY / "docker" / "builder" / "apply_overrides.py"
ADMIN_KEY = "test-admin-key-7f3a"


def load_script(path: Path):
    """Import a deployment script (not on sys.path in the repository) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")


@functools.lru_cache(maxsize=1)
def tritonserver_flags() -> frozenset[str]:
    """Every option the local tritonserver (the same 2.51 as the pinned image) says it accepts."""
    home = triton_home()
    result = subprocess.run([str(home / "bin" / "tritonserver"), "--help"], env=local_environment(home),
                            capture_output=True, text=True, timeout=60)
    text = result.stdout + result.stderr
    return frozenset(line.split()[0] for line in text.splitlines() if line.startswith("  --"))


def flag_name(argument: str) -> str:
    return argument.split("=", 1)[0]


# Grafana's variables are not PromQL: give them values Prometheus would see.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model": ".*", "$instance": ".*"}


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every series selector of a PromQL expression (parsing fails loudly on invalid PromQL)."""
    found: list[promql_parser.VectorSelector] = []
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def label_names(expr: str) -> set[str]:
    """Labels an expression filters or groups by."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            names.update(node.modifier.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str]]]:
    """Prometheus text exposition -> (series name, labels) per sample, names exactly as Prometheus stores
    them (prometheus_client's parser would append _total to counters, which Prometheus does not)."""
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            samples.append((match.group(1), dict(_LABEL.findall(match.group(2) or ""))))
    return samples


def http(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class EntrypointServer:
    """tritonserver started by the container's entrypoint, on free loopback ports (its URLs are the ones
    ServerOptions gives for those ports)."""

    def __init__(self, process: subprocess.Popen, repository: Path, ports: dict[str, int], log: Path):
        self.process, self.ports, self.log = process, ports, log
        self.options = ServerOptions(repository, grpc_port=ports["GRPC_PORT"], http_port=ports["HTTP_PORT"],
                                     metrics_port=ports["METRICS_PORT"])
        self.grpc_url, self.http_url, self.metrics_url = (self.options.grpc_url, self.options.http_url,
                                                          self.options.metrics_url)


def entrypoint_environment(repository: Path, workdir: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    installation = local_installation(workdir)
    return {**installation.environment, **{k: str(v) for k, v in ports.items()},
            "TRITONSERVER": str(installation.binary), "BACKEND_DIRECTORY": str(installation.backends),
            "MODEL_REPOSITORY": str(repository), "TRITON_ADDRESS": "127.0.0.1", **extra}


@contextlib.contextmanager
def entrypoint_server(repository: Path, args: list[str] = (), **extra_env: str) -> Iterator[EntrypointServer]:
    """Run start.py exactly as the image's ENTRYPOINT does; always stopped by PID (SIGTERM, then SIGKILL)."""
    workdir = Path(tempfile.mkdtemp(prefix="clip-triton-entrypoint-"))
    ports = dict(zip(("HTTP_PORT", "GRPC_PORT", "METRICS_PORT"), free_ports(3)))
    env = entrypoint_environment(repository, workdir, ports, **extra_env)
    log = workdir / "tritonserver.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen([sys.executable, str(START), *args], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = EntrypointServer(process, repository, ports, log)
    try:
        deadline = time.monotonic() + 180
        while not is_ready(server.http_url):
            if process.poll() is not None:
                raise RuntimeError(f"entrypoint exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


