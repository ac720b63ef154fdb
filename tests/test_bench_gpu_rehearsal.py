"""`make bench-gpu` rehearsed on the CPU (`--rehearse-on-cpu`): every stage of the GPU benchmark's own code runs
here, small, through the real Triton, so a mistake in it fails CI instead of a GPU host's short session. The
figures are CPU figures; what is checked is that every stage ran and reported what a GPU run's report needs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT, golden_checkpoint

pytest.importorskip("torchvision", reason="the rehearsal decodes with torchvision's decode_jpeg, as nvJPEG does")
pytestmark = pytest.mark.server

def bench_gpu(work: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The rehearsal's own defaults (small levels and batches: about three minutes on a 2-core machine)."""
    command = [sys.executable, "-m", "bench.gpu", "--rehearse-on-cpu", "--checkpoint",
               str(golden_checkpoint("tiny-vit-b32")), "--images", str(IMAGES), "--work-dir", str(work / "work"),
               "--report-dir", str(work / "report"), *arguments]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bench-gpu-rehearsal")
    bench_gpu(work, "--variants", "per-size-resize")
    return work


def results(work: Path) -> dict:
    return json.loads((work / "report" / "results.json").read_text())


def test_every_stage_runs_and_reports_what_a_gpu_run_reports(rehearsed: Path) -> None:
    measured = results(rehearsed)
    assert measured["rehearsal"] is True and measured["errors"] == {}
    assert set(measured["stage_seconds"]) == {"openai_way", "repository", "model_alone", "decoding_alone",
                                              "server", "variants"}
    assert set(measured["openai_way"]) == {"small_b1", "small_b64", "phone_b1", "phone_b64"}
    decoding = measured["decoding_alone"]
    for name in ("small", "phone", "varied"):
        assert decoding[f"nvjpeg_{name}"]["images_per_s"] > 0
        stages = decoding[f"transform_{name}"]["ms_per_image"]
        assert stages["gpu_decode"] > 0 and stages["gpu_resize"] > 0, f"{name}: every JPEG took the GPU path's code"
    assert decoding["nvjpeg_small_2_processes"]["processes"] == 2
    server = measured["server"]
    assert min(server["check"].values()) >= 0.999, server["check"]
    for name, levels in server["sweeps"].items():
        for level in levels:
            assert level["errors"] == 0 and level["images_per_s"] > 0, (name, level)
            images = level["preprocess_stages"]["images"]
            assert images["cpu"] == images["refused"] == 0, (name, images)
        # each end of a window lags the work by up to the 0.5 s publishing interval: counted per workload
        assert sum(level["preprocess_stages"]["images"]["gpu"] for level in levels) > 0, name
    variant = measured["variants"]["per-size-resize"]
    assert set(variant["sweeps"]) == {"small", "varied"} and variant["options"] == {"mixed_resize_max_pixels": 0}


def test_its_report_says_it_is_a_rehearsal_and_judges_no_target(rehearsed: Path) -> None:
    page = (rehearsed / "report" / "report.md").read_text()
    assert "**A rehearsal on the CPU**" in page and "Rehearsed " in page and "Measured " not in page
    verdicts = results(rehearsed)["headline"]["targets"].values()
    assert set(verdicts) == {"not judged: a rehearsal on the CPU"}
    assert "| read_inputs | inspect | gpu_decode | gpu_resize |" in page, "stages in the order a batch meets them"
    assert "## Settings compared with the defaults" in page and "per-size-resize" in page


def test_a_later_variants_call_adds_to_the_earlier_ones_and_one_that_fails_loses_no_other(rehearsed: Path) -> None:
    blocked = rehearsed / "work" / "variants" / "queue-delay-500"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the variant's repository would go: its export fails")
    try:
        bench_gpu(rehearsed, "--variants-only", "--variants", "queue-delay-500,no-cuda-graphs")
    finally:
        blocked.unlink()
    measured = results(rehearsed)
    assert set(measured["variants"]) == {"per-size-resize", "no-cuda-graphs"}
    assert set(measured["errors"]) == {"variant queue-delay-500"}
    assert measured["server"]["sweeps"], "the defaults' figures are kept"


def test_a_rehearsal_never_adds_to_a_gpu_runs_results(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    gpu_results = ROOT / "bench" / "report" / "gpu" / "results.json"
    shutil.copy(gpu_results, tmp_path / "report" / "results.json")
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--rehearse-on-cpu", "--variants-only", "--variants", "no-cuda-graphs",
         "--work-dir", str(tmp_path / "work"), "--report-dir", str(tmp_path / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0 and "holds a GPU run's figures" in completed.stderr
    assert (tmp_path / "report" / "results.json").read_bytes() == gpu_results.read_bytes()
