"""`make bench-gpu`'s parts that run anywhere: it refuses plainly without a GPU, reads its level syntax, and
its report judges the targets from the figures (measured figures come from a GPU host only)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench import gpu, gpu_report
from conftest import ROOT
from measure.loadgen import Level

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make bench-gpu measures")
def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path) -> None:
    completed = subprocess.run([sys.executable, "-m", "bench.gpu", "--report-dir", str(tmp_path / "report")],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "no CUDA GPU here" in completed.stdout
    assert not (tmp_path / "report").exists()


def test_levels_read_concurrency_images_per_request_and_processes() -> None:
    assert gpu.parse_levels("1x1, 16x64:4,8") == [Level(1, 1, 1), Level(16, 64, 4), Level(8, 1, 1)]


def level(concurrency: int, per_request: int, images_per_s: float, p50: float, errors: int = 0) -> dict:
    return {"concurrency": concurrency, "images_per_request": per_request, "processes": 1,
            "images_per_s": images_per_s, "requests_per_s": images_per_s / per_request, "errors": errors,
            "latency_ms": {"p50": p50, "p99": p50 * 2}, "server_stats": {}}


def test_the_headline_judges_each_target_from_the_figures() -> None:
    results = {
        "openai_way": {"small_b1": {"images_per_s": 37.0}, "small_b64": {"images_per_s": 61.0},
                       "phone_b1": {"images_per_s": 4.0}, "phone_b64": {"images_per_s": 4.2}},
        "decoding_alone": {"nvjpeg_small": {"images_per_s": 30000.0}, "nvjpeg_phone": {"images_per_s": 1000.0}},
        "server": {"sweeps": {"small": [level(1, 1, 120.0, 8.3), level(32, 64, 12000.0, 170.0)],
                              "phone": [level(1, 1, 30.0, 33.0), level(16, 16, 900.0, 280.0, errors=1)]}},
        "model_alone": {"by_batch": {"256": {"images_per_s": 20000.0}}},
    }
    head = gpu_report.headline(results)
    assert head["small"]["server_images_per_s"] == 12000.0 and head["small"]["p50_ms_at_concurrency_1"] == 8.3
    assert round(head["small"]["server_over_openai_b64"]) == 197
    assert head["phone"]["server_over_nvjpeg_alone"] == 0.9
    verdicts = list(head["targets"].values())
    assert verdicts == ["met", "met", "not met", "not met", "met", "met", "not met"]  # small: 12k of nvJPEG's 30k
    page = gpu_report.markdown({**results, "headline": head})
    assert "| small JPEGs >= 10000 images/s | met |" in page and "12,000" in page


def test_variants_are_checked_before_any_gpu_time_and_reported_with_their_latency(capsys) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(["--variants", "preprocess-3,visual-2"])
    assert "unknown --variants 'visual-2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu.parse_args(["--variants", "preprocess-4,preprocess-4"])
    assert "names a setting twice" in capsys.readouterr().err
    assert gpu.parse_args(["--variants", "no-cuda-graphs, preprocess-4"]).variants == ["no-cuda-graphs", "preprocess-4"]
    results = {"variants": {"no-cuda-graphs": {"options": {"cuda_graph_batch_sizes": []}, "sweeps": {
        "small": [level(1, 1, 80.0, 12.3), level(64, 1, 1500.0, 41.0)], "phone": [level(1, 1, 40.0, 21.5)]}}}}
    page = gpu_report.markdown(results)
    assert "| no-cuda-graphs (cuda_graph_batch_sizes=[]) | small: 1x1, 64x1; phone: 1x1 | 1,500 | 40 | 12.3 / 21.5 | 0 |" in page
