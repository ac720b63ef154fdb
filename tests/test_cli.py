"""The `clip-triton` command: serve (foreground, loopback only, clean exit on signals), encode, export, demo."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clip_triton_serve import free_ports
from clip_triton_serve.probes import is_ready
from conftest import GOLDEN, IMAGE_NAMES, IMAGES, assert_features_match, golden_features

pytestmark = pytest.mark.server
CLI = [str(Path(sys.executable).parent / "clip-triton")]
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 and IPv4-mapped IPv6


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def wait_ready(http_port: int, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if is_ready(f"http://127.0.0.1:{http_port}"):
            return
        time.sleep(0.3)
    raise AssertionError("server never became ready")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_binds_loopback_and_exits_cleanly_on_signal(vit_repository: Path, stop_signal: int) -> None:
    ports = free_ports(3)
    process = subprocess.Popen(
        CLI + ["serve", "--repository", str(vit_repository), "--grpc-port", str(ports[0]),
               "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(ports[1], process)
        for port in ports:
            addresses = listening_addresses(port)
            assert addresses and addresses <= LOOPBACK, f"port {port} must listen on 127.0.0.1 only: {addresses}"
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "stopped after" in output
    assert all(not listening_addresses(port) for port in ports), "tritonserver outlived `serve`"


def test_serve_exits_nonzero_on_a_broken_repository(tmp_path: Path) -> None:
    (tmp_path / "clip_visual").mkdir()
    (tmp_path / "clip_visual" / "config.pbtxt").write_text('name: "clip_visual"\nbackend: "python"\nthis is not pbtxt\n')
    grpc_port, http_port, metrics_port = free_ports(3)
    result = subprocess.run(
        CLI + ["serve", "--repository", str(tmp_path), "--grpc-port", str(grpc_port),
               "--http-port", str(http_port), "--metrics-port", str(metrics_port)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "tritonserver exited during start-up" in result.stderr


def test_encode_writes_features_for_a_folder(vit_server, tmp_path: Path) -> None:
    output = tmp_path / "features.npz"
    result = subprocess.run(CLI + ["encode", "--url", vit_server.grpc_url, "--output", str(output), str(IMAGES)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = np.load(output)
    names = [Path(p).name for p in saved["paths"]]
    assert sorted(names) == sorted(IMAGE_NAMES)
    expected = golden_features("tiny-vit-b32")
    assert_features_match(saved["features"], np.stack([expected[n] for n in names]))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--checkpoint", "missing.pt"], "missing.pt: checkpoint file not found"),
     (["--random-init", "ViT-X/99"], "unknown architecture 'ViT-X/99'")],
)
def test_export_errors_are_clear(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = subprocess.run(CLI + ["export", *arguments, "--repository", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_export_cli_writes_a_complete_repository(tmp_path: Path) -> None:
    result = subprocess.run(CLI + ["export", "--checkpoint", str(GOLDEN / "tiny-rn.pt"), "--repository",
                                   str(tmp_path), "--format", "torchscript"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "clip_visual/1/model.pt" in files and "clip_preprocess/1/model.py" in files
    assert "ResNetSpec" in result.stdout and "RANDOM" not in result.stdout


def test_demo_says_plainly_that_weights_are_random(tmp_path: Path) -> None:
    result = subprocess.run(CLI + ["demo", "--images", str(IMAGES), "--repository", str(tmp_path / "repo")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "weights: random-init:ViT-B/32:seed=0" in result.stdout
    assert "seeded random numbers, not a trained CLIP" in result.stdout
    assert "cosine similarity" in result.stdout
    for name in IMAGE_NAMES:
        assert re.search(rf"^{re.escape(name)}\s+\(512,\)\s+\d+\.\d+$", result.stdout, re.M), name


def test_tritonserver_dies_with_a_killed_serve(vit_repository: Path) -> None:
    """Even SIGKILL of `serve` (no chance to clean up) leaves no orphaned tritonserver behind."""
    ports = free_ports(3)
    process = subprocess.Popen(
        CLI + ["serve", "--repository", str(vit_repository), "--grpc-port", str(ports[0]),
               "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(ports[1], process)
        assert listening_addresses(ports[0])
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 60
    while listening_addresses(ports[0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not listening_addresses(ports[0]), "tritonserver outlived a SIGKILLed serve"
