"""The benchmark's code path, end to end on the tiny golden checkpoint with tiny durations.

A smoke run, not a measurement: nothing here asserts a speed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import compare, report
from bench.cli import median_round
from conftest import GOLDEN, ROOT
from measure.images import PHONE_SIZE


@pytest.mark.server
def test_bench_smoke_run_writes_a_complete_report(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--checkpoint", str(GOLDEN / "tiny-vit-b32.pt"), "--seconds", "0.3",
         "--warmup", "0", "--concurrency", "1,3", "--batch-sizes", "1,2", "--seed-batch-sizes", "1,2",
         "--seed-rounds", "2",
         "--max-images", "2", "--work-dir", str(tmp_path / "work"), "--report-dir", str(report_dir),
         "--label", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((report_dir / "results.json").read_text())

    assert results["server"]["check"]["min_cosine"] >= 0.99999  # the server measured is a correct one
    assert set(results["server"]["sweeps"]) == {"small", "phone"}
    for name, sweep in results["server"]["sweeps"].items():
        assert [level["concurrency"] for level in sweep] == [1, 3]
        for level in sweep:
            assert level["requests"] > 0 and level["errors"] == 0, (name, level)
            assert level["images_per_s"] > 0
            assert (level["images_per_request"], level["processes"]) == (1, 1)  # today's levels: one image, one loop
            assert level["requests_per_s"] == pytest.approx(level["images_per_s"], abs=1e-3)
            assert set(level["preprocess_stages"]) == {"images", "ms_per_image"}  # read at both ends of the window
            for stage in ("clip_preprocess", "clip_visual"):
                stats = level["server_stats"][stage]
                assert stats["executions"] > 0 and stats["avg_batch_size"] >= 1.0, (name, stage, stats)
        assert set(results["in_process"]["seed"][name]) == {"1", "2"}
        for measured in results["in_process"]["seed"][name].values():
            assert measured["images_per_s"] == min(measured["rounds_images_per_s"])  # lower middle of two
    assert results["workloads"]["phone"]["images"][0]["width"] == PHONE_SIZE[0]
    assert set(results["in_process"]["ceiling"]["by_batch"]) == {"1", "2"}
    assert results["headline"]["small"]["server_over_seed_batch1"] > 0

    text = (report_dir / "report.md").read_text()
    for heading in ("## Headline", "## Machine", "## Server end to end", "## Triton's breakdown", "## In process"):
        assert heading in text
    assert results["machine"]["cpu_model"] in text
    assert "gpu" in results["machine"]  # None on a machine without one
    for plot in ("throughput.png", "latency.png"):
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The report can be re-rendered from the JSON alone, identically.
    (report_dir / "report.md").unlink()
    subprocess.run([sys.executable, "-m", "bench.report", str(report_dir / "results.json")], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    assert (report_dir / "report.md").read_text() == text

    table = compare.comparison({"base": results, "variant": results})
    assert "| small: server images/s |" in table and "| phone: errors | 0 | 0 |" in table


def test_headline_ratios_compare_server_with_in_process() -> None:
    level = {"concurrency": 1, "images_per_s": 30.0, "errors": 0, "latency_ms": {"p50": 40.0}}
    results = {
        "in_process": {"seed": {"small": {"1": {"images_per_s": 15.0}, "16": {"images_per_s": 20.0}}},
                       "ceiling": {"best_images_per_s": 32.0, "best_batch_size": 8, "batch1_latency_ms": {"p50": 35.0}}},
        "server": {"sweeps": {"small": [level, {**level, "concurrency": 8, "images_per_s": 24.0}]}},
    }
    figures = report.headline(results)["small"]
    assert figures["server_images_per_s"] == 30.0 and figures["server_best_concurrency"] == 1
    assert figures["server_over_seed_batch16"] == 1.5
    assert figures["server_over_seed_batch1"] == 2.0
    assert figures["p50_at_concurrency_1_over_model_alone_batch1"] == pytest.approx(40 / 35, abs=1e-3)


def test_median_round_is_reported_with_every_round_in_measuring_order() -> None:
    rounds = [{"images_per_s": value, "steps": steps} for value, steps in ((20.4, 11), (23.2, 12), (20.9, 12))]
    chosen = median_round(rounds)
    assert chosen["images_per_s"] == 20.9 and chosen["steps"] == 12
    assert chosen["rounds_images_per_s"] == [20.4, 23.2, 20.9]


@pytest.mark.server
def test_client_overhead_reports_client_and_server_time_per_image(vit_server, tmp_path: Path) -> None:
    """`python -m bench.client_overhead` against a running server: its report, with Triton's per-execution compute."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.client_overhead", "--url", vit_server.grpc_url, "--images", "96",
         "--batch-size", "32", "--report", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode in (0, 1), completed.stdout + completed.stderr  # 1: over the 5 % budget
    result = json.loads((tmp_path / "client_overhead.json").read_text())
    assert result["images"] == 96 and result["batch_size"] == 32
    assert result["client_cpu_ms_per_image"] > 0 and result["server_compute_ms_per_image"] > 0
    assert set(result["server_compute_ms_per_image_by_model"]) == {"clip_preprocess", "clip_visual"}
    assert result["server_cpu_ms_per_image"] is None  # an external server: no process group to read
    assert "logical CPUs" in result["machine"]
    assert "**client CPU per image:" in (tmp_path / "client_overhead.md").read_text()


def test_the_cpu_report_shows_the_preprocessing_stages_under_each_workloads_breakdown() -> None:
    from bench import report

    stats = {"requests": 10, "avg_batch_size": 1.0, "queue_ms": 0.1, "compute_input_ms": 0.1,
             "compute_infer_ms": 5.0, "compute_output_ms": 0.1, "request_ms": 5.3}
    level = {"concurrency": 4, "server_stats": {"clip_preprocess": stats},
             "preprocess_stages": {"images": {"cpu": 40, "refused": 0},
                                   "ms_per_image": {"read_inputs": 0.01, "cpu_path": 6.5, "respond": 0.05}}}
    lines = report._breakdown_section({"server": {"sweeps": {"small": [level]}}})
    assert "| level | read_inputs | cpu_path | respond | images cpu / refused |" in lines
    assert "| c=4 | 0.010 | 6.500 | 0.050 | 40 / 0 |" in lines
