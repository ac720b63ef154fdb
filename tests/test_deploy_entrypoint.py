"""The container's entrypoint and model builder, run for real here (no Docker needed for either)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from clip_triton_serve import ServerOptions
from clip_triton_serve.options import restricted_protocol_args
from conftest import golden_checkpoint
from deploy_support import ROOT, ADMIN_KEY, BUILDER, HEALTHCHECK, START, flag_name, load_script, tritonserver_flags


def _start_module():
    return load_script(START)


def test_entrypoint_command_is_exactly_what_serve_runs_plus_the_admin_key():
    start = _start_module()
    command = start.triton_command({"CLIP_TRITON_ADMIN_KEY": ADMIN_KEY}, ["--log-info=true"])
    expected = ServerOptions(repository=Path("/models"), host="0.0.0.0", admin_key=ADMIN_KEY,
                             extra_args=["--log-info=true"]).command(
        Path("/opt/tritonserver/bin/tritonserver"), Path("/opt/tritonserver/backends"))
    assert command == expected
    for flag in ["--model-control-mode=none", "--strict-readiness=true", "--exit-timeout-secs=30",
                 "--allow-metrics=true", *restricted_protocol_args(ADMIN_KEY)]:
        assert flag in command
    assert command[-1] == "--log-info=true"  # container arguments come last, so they can override


def test_entrypoint_reads_the_key_from_a_mounted_secret_file(tmp_path: Path):
    (tmp_path / "admin-key").write_text(ADMIN_KEY + "\n")
    command = _start_module().triton_command({"CLIP_TRITON_ADMIN_KEY_FILE": str(tmp_path / "admin-key")}, [])
    assert set(restricted_protocol_args(ADMIN_KEY)) <= set(command)


def test_entrypoint_refuses_to_expose_open_admin_protocols():
    with pytest.raises(SystemExit, match="CLIP_TRITON_ADMIN_KEY"):
        _start_module().triton_command({}, [])
    loopback = _start_module().triton_command({"TRITON_ADDRESS": "127.0.0.1"}, [])
    assert not any("restricted" in arg for arg in loopback)  # same rule as `clip-triton serve`


def test_entrypoint_exits_nonzero_without_a_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_TRITON_ADMIN_KEY")}
    result = subprocess.run([sys.executable, str(START)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "CLIP_TRITON_ADMIN_KEY" in result.stderr


def test_every_entrypoint_flag_is_one_the_pinned_triton_accepts():
    command = _start_module().triton_command({"CLIP_TRITON_ADMIN_KEY": ADMIN_KEY}, [])
    unknown = {flag_name(arg) for arg in command[1:]} - tritonserver_flags()
    assert not unknown, f"tritonserver 2.51 has no such option: {unknown}"


def test_healthcheck_fails_when_nothing_listens():
    from clip_triton_serve import free_port

    env = {**os.environ, "HTTP_PORT": str(free_port())}
    assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30).returncode == 1


def _builder_env(repository: Path, checkpoint: Path, **extra: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "REPOSITORY": str(repository),
            "CHECKPOINT": str(checkpoint), **extra}


def _run_builder(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(BUILDER)], env=env, capture_output=True, text=True, timeout=300)


def test_builder_exports_a_checkpoint_for_the_gpu_and_skips_an_identical_rebuild(tmp_path: Path):
    repository = tmp_path / "models"
    repository.mkdir()
    checkpoint = golden_checkpoint("tiny-vit-b32")
    env = _builder_env(repository, checkpoint)

    first = _run_builder(env)
    assert first.returncode == 0, first.stderr
    visual = text_format.Parse((repository / "clip_visual" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert visual.backend == "python" and visual.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert visual.input[0].data_type == pb.TYPE_FP16 and visual.parameters["weights"].string_value.endswith(":fp16")
    assert (repository / "clip_visual" / "1" / "model.pt").stat().st_size > 0
    for model in ("clip_preprocess", "clip_image_encoder"):
        text_format.Parse((repository / model / "config.pbtxt").read_text(), pb.ModelConfig())
    assert "RANDOM" not in first.stderr

    second = _run_builder(env)
    assert second.returncode == 0 and "nothing to do" in second.stdout


def test_builder_applies_config_overrides(tmp_path: Path):
    repository = tmp_path / "models"
    repository.mkdir()
    overrides = ROOT / "deploy" / "k8s" / "shared-cluster"
    checkpoint = golden_checkpoint("tiny-vit-b32")
    result = _run_builder(_builder_env(repository, checkpoint, CONFIG_OVERRIDES=str(overrides)))
    assert result.returncode == 0, result.stderr
    visual = text_format.Parse((repository / "clip_visual" / "config.pbtxt").read_text(), pb.ModelConfig())
    (group,) = visual.instance_group
    assert group.count == 2 and group.rate_limiter.resources[0].name == "clip_gpu_slot"
    generated = text_format.Parse((ROOT / "model_repository" / "clip_visual" / "config.pbtxt").read_text(),
                                  pb.ModelConfig())
    assert visual.dynamic_batching == generated.dynamic_batching  # fields the override does not set stay


@pytest.mark.parametrize("kind", ["empty-file", "directory"])
def test_builder_refuses_a_checkpoint_path_that_is_not_a_checkpoint(tmp_path: Path, kind: str):
    bad = tmp_path / "ViT-B-32.pt"
    bad.mkdir() if kind == "directory" else bad.write_bytes(b"")
    result = _run_builder(_builder_env(tmp_path / "models", bad))
    assert result.returncode == 2 and "CHECKPOINT" in result.stderr


def test_builder_refuses_a_missing_checkpoint_when_one_is_required(tmp_path: Path):
    result = _run_builder(_builder_env(tmp_path / "models", tmp_path / "missing.pt", REQUIRE_CHECKPOINT="1"))
    assert result.returncode == 2
