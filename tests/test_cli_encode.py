"""`clip-triton encode`: folders, failures recorded with reasons, summary, exit codes, --resume (also after
an interrupted run), --normalize, and a clear error when the server is unreachable."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_triton import ClipClient
from clip_triton_serve import free_port
from client_support import distinct_images, golden_rows
from conftest import IMAGE_NAMES, IMAGES, assert_features_match

pytestmark = pytest.mark.server
CLI = [str(Path(sys.executable).parent / "clip-triton")]


def encode_cli(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["encode", *arguments], capture_output=True, text=True, timeout=300, cwd=cwd)


def saved(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture()
def photo_tree(tmp_path: Path) -> Path:
    """The 7 photos spread over nested folders, plus files that must be ignored or refused."""
    root = tmp_path / "photos"
    for i, name in enumerate(IMAGE_NAMES):
        folder = root / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGES / name, folder / name)
    (root / "README.txt").write_text("not an image, and not an image suffix: ignored")
    return root


def test_encode_a_folder_tree(vit_server, photo_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "features.npz"
    result = encode_cli("--url", vit_server.grpc_url, "--output", str(output), "--batch-size", "3",
                        "--concurrency", "2", str(photo_tree))
    assert result.returncode == 0, result.stderr
    data = saved(output)
    names = [Path(p).name for p in data["paths"]]
    assert sorted(names) == sorted(IMAGE_NAMES) and all(Path(p).is_absolute() for p in data["paths"])
    assert_features_match(data["features"], golden_rows(names))
    assert len(data["failed_paths"]) == 0 and not data["normalized"]
    assert "encoded 7 image(s), failed 0, skipped 0" in result.stdout
    assert "7/7" in result.stderr  # the progress bar


def test_encode_through_a_dns_target_with_round_robin(vit_server, photo_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "features.npz"
    port = vit_server.grpc_url.rsplit(":", 1)[1]
    result = encode_cli("--url", f"dns:///127.0.0.1:{port}", "--load-balancing", "round_robin",
                        "--output", str(output), "--quiet", str(photo_tree))
    assert result.returncode == 0, result.stderr
    data = saved(output)
    assert_features_match(data["features"], golden_rows([Path(p).name for p in data["paths"]]))


def test_failures_are_recorded_with_reasons_and_exit_nonzero(vit_server, photo_tree: Path, tmp_path: Path) -> None:
    (photo_tree / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    (photo_tree / "b" / "empty.png").write_bytes(b"")
    missing = tmp_path / "missing.png"
    output = tmp_path / "features.npz"
    result = encode_cli("--url", vit_server.grpc_url, "--output", str(output), str(photo_tree), str(missing))
    assert result.returncode == 1, result.stderr
    data = saved(output)
    failed = dict(zip(map(str, data["failed_paths"]), map(str, data["failed_reasons"])))
    assert set(failed) == {str(photo_tree / "a" / "broken.jpg"), str(photo_tree / "b" / "empty.png"), str(missing)}
    assert "empty input" in failed[str(photo_tree / "b" / "empty.png")]
    assert "cannot read file" in failed[str(missing)]
    assert "cannot decode JPEG data" in failed[str(photo_tree / "a" / "broken.jpg")]
    for path, reason in failed.items():
        assert f"failed: {path}: {reason}" in result.stderr
    assert "encoded 7 image(s), failed 3" in result.stdout
    assert_features_match(data["features"], golden_rows([Path(p).name for p in data["paths"]]))


def test_resume_skips_what_is_already_encoded(vit_server, photo_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "features.npz"
    first = encode_cli("--url", vit_server.grpc_url, "--output", str(output), str(photo_tree / "a"))
    assert first.returncode == 0, first.stderr
    already = len(saved(output)["paths"])
    assert 0 < already < len(IMAGE_NAMES)
    # Relative paths from another working directory still match the stored absolute paths.
    second = encode_cli("--url", vit_server.grpc_url, "--output", str(output), "--resume", "photos",
                        cwd=photo_tree.parent)
    assert second.returncode == 0, second.stderr
    assert f"encoded {len(IMAGE_NAMES) - already} image(s), failed 0, skipped {already}" in second.stdout
    data = saved(output)
    assert len(set(map(str, data["paths"]))) == len(data["paths"]) == len(IMAGE_NAMES)
    assert_features_match(data["features"], golden_rows([Path(p).name for p in data["paths"]]))


def test_resume_after_an_interrupted_run_completes_every_row_once(vit_server, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    images = distinct_images(240, side=64, seed=21)
    paths = [folder / f"{i:04d}.png" for i in range(len(images))]
    for path, data in zip(paths, images):
        path.write_bytes(data)
    output = tmp_path / "features.npz"
    arguments = ["--url", vit_server.grpc_url, "--output", str(output), "--batch-size", "2", "--concurrency", "1",
                 "--save-interval", "0", "--quiet", str(folder)]
    run = subprocess.Popen(CLI + ["encode", *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not output.exists() and run.poll() is None:  # the first incremental save has happened
            run_wait(run, 0.05)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode in (0, 130), stderr  # 0 only if it finished before the signal arrived
    interrupted = saved(output)  # never a torn file
    kept = len(interrupted["paths"])
    assert kept > 0
    resumed = encode_cli(*arguments, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {kept} already in" in resumed.stdout
    data = saved(output)
    order = {str(path): i for i, path in enumerate(paths)}
    assert sorted(order[str(p)] for p in data["paths"]) == list(range(len(paths)))  # each once
    with ClipClient(vit_server.grpc_url) as client:
        expected = client.encode(images)
    rows = np.array([order[str(p)] for p in data["paths"]])
    np.testing.assert_allclose(data["features"], expected[rows], rtol=1e-4, atol=1e-5)


def run_wait(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        pass


def test_normalize_is_stored_and_resume_refuses_to_mix(vit_server, photo_tree: Path, tmp_path: Path) -> None:
    output = tmp_path / "unit.npz"
    result = encode_cli("--url", vit_server.grpc_url, "--output", str(output), "--normalize", str(photo_tree / "a"))
    assert result.returncode == 0, result.stderr
    data = saved(output)
    assert bool(data["normalized"])
    np.testing.assert_allclose(np.linalg.norm(data["features"], axis=1), 1.0, atol=1e-6)
    mixed = encode_cli("--url", vit_server.grpc_url, "--output", str(output), "--resume", str(photo_tree))
    assert mixed.returncode == 2 and "holds normalized features; resume with --normalize" in mixed.stderr


def test_an_unreachable_server_exits_2_with_a_clear_message(photo_tree: Path, tmp_path: Path) -> None:
    url = f"127.0.0.1:{free_port()}"
    result = encode_cli("--url", url, "--retry-deadline", "1", "--output", str(tmp_path / "f.npz"), str(photo_tree))
    assert result.returncode == 2
    assert url in result.stderr and "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = encode_cli("--output", str(tmp_path / "f.npz"), str(tmp_path / "empty"))
    assert result.returncode == 2 and "no image files" in result.stderr
    assert not os.path.exists(tmp_path / "f.npz")
