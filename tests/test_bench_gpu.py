"""`make bench-gpu`'s parts that run anywhere: it refuses plainly without a GPU, reads its level syntax, and
its report judges the targets from the figures (measured figures come from a GPU host only)."""
from __future__ import annotations

import json
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


def test_the_resizes_two_ways_are_reported_side_by_side_and_every_workloads_errors_count() -> None:
    results = {
        "workloads": {"varied": {"description": "1024 small JPEGs of 1024 different sizes", "distinct_sizes": 1024}},
        "decoding_alone": {"transform_small": {"images_per_s": 6000.0}, "transform_small_per_size": {"images_per_s": 5000.0},
                           "transform_varied": {"images_per_s": 5500.0},
                           "transform_varied_per_size": {"images_per_s": 1500.0}},
        "server": {"sweeps": {"small": [level(32, 64, 5400.0, 300.0)], "phone": [level(16, 16, 700.0, 280.0)],
                              "varied": [level(32, 64, 5100.0, 320.0, errors=2)]}},
        "variants": {"per-size-resize": {"options": {"mixed_resize_max_pixels": 0}, "sweeps": {
            "small": [level(32, 64, 5300.0, 310.0)], "varied": [level(32, 64, 1400.0, 900.0)]}}},
    }
    head = gpu_report.headline(results)
    assert head["varied"]["server_images_per_s"] == 5100.0
    assert head["targets"]["zero errors"] == "not met", "the 2 errors with many sizes count"
    page = gpu_report.markdown({**results, "headline": head})
    assert "| the whole GPU transform alone, small JPEGs of many sizes | 5,500 | 1,500 |" in page
    assert "| the server end to end (best level), small JPEGs of many sizes | 5,100 | 1,400 |" in page
    assert "| the whole GPU transform alone, small JPEGs (the shared photos' sizes) | 6,000 | 5,000 |" in page
    assert "| per-size-resize (mixed_resize_max_pixels=0) | small: 32x64; varied: 32x64 | 5,300 | – | – / – | 0 |" in page
    assert "## The GPU resize" not in gpu_report.markdown({}), "nothing measured, no section"


def test_a_run_records_each_stages_time_and_a_later_run_adds_to_it(tmp_path) -> None:
    """--variants-only adds the variants to an earlier run's results.json (the defaults one device session,
    the variants the next); without one it says so."""
    with pytest.raises(SystemExit, match="no .*results.json from an earlier run"):
        gpu.Run.resumed(tmp_path)
    first = gpu.Run(tmp_path)
    first.stage("server", lambda: {"sweeps": {}})
    first.stage("broken", lambda: 1 / 0)
    assert set(first.results["stage_seconds"]) == {"server", "broken"}
    assert first.results["errors"]["broken"].startswith("ZeroDivisionError")
    later = gpu.Run.resumed(tmp_path)
    later.stage("variants", lambda: {"preprocess-4": {}})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["server"] == {"sweeps": {}} and saved["variants"] == {"preprocess-4": {}}
    assert set(saved["stage_seconds"]) == {"server", "broken", "variants"}
    again = gpu.Run.resumed(tmp_path)
    again.stage("broken", lambda: {"fixed": True})
    again.stage("variants", lambda: 1 / 0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["broken"] == {"fixed": True} and "broken" not in saved["errors"], "a stage that now works"
    assert "variants" not in saved and "variants" in saved["errors"], "no earlier figures beside a new failure"
    assert gpu.parse_args(["--nvjpeg-processes", "4,8", "--no-libjpeg"]).nvjpeg_processes == [4, 8]
    page = gpu_report.markdown({"decoding_alone": {"nvjpeg_small": {"images_per_s": 5800.0},
                                                   "nvjpeg_small_8_processes": {"images_per_s": 9100.0}}})
    assert "| nvJPEG, 8 processes at once (sum) | 9,100 | – |" in page and "2 processes" not in page


def test_gpu_memory_is_read_per_process_and_reported_with_its_total() -> None:
    from measure import machine

    text = "4242, 1500\n4243, 900\nbad line\n4242, 20\n[N/A], [N/A]\n"
    assert machine.parse_compute_apps(text) == {4242: 1520, 4243: 900}, "two GPUs' worth summed, junk skipped"
    page = gpu_report.markdown({"server": {"gpu_memory_mib": {"tritonserver": 2300, "clip_preprocess_0_0": 1500,
                                                              "clip_visual_0_0": 900}}})
    assert "tritonserver 2,300 MiB, clip_preprocess_0_0 1,500 MiB, clip_visual_0_0 900 MiB; 4,700 MiB in all" in page
    assert "GPU memory" not in gpu_report.markdown({"server": {"gpu_memory_mib": {}}}), "not visible: no section"


def test_each_levels_preprocessing_stages_are_reported_under_its_table() -> None:
    stages = {"images": {"gpu": 4096, "cpu": 0, "refused": 0},
              "ms_per_image": {"read_inputs": 0.01, "inspect": 0.004, "gpu_decode": 0.21, "gpu_resize": 0.05,
                               "cpu_path": 0.0, "assemble": 0.02, "gpu_wait": 0.03, "respond": 0.002}}
    measured = level(32, 64, 5400.0, 300.0)
    with_stages = {**measured, "preprocess_stages": stages}
    page = gpu_report.markdown({"server": {"sweeps": {"small": [level(1, 1, 90.0, 11.0), with_stages]}}})
    assert ("| 32 × 64 image(s), 1 process(es) | 0.010 | 0.004 | 0.210 | 0.050 | 0.000 | 0.020 | 0.030 | 0.002 | "
            "4,096 / 0 / 0 |") in page
    assert "| level | read_inputs | inspect | gpu_decode | gpu_resize | cpu_path | assemble | gpu_wait | respond |" in page
    assert "| 1 × 1 image(s)" in page.split("Where clip_preprocess's time goes")[0], "a level without metrics: no row"
    assert page.count("| 1 × 1 image(s)") == 1
    assert "Where clip_preprocess's time goes" not in gpu_report.markdown(
        {"server": {"sweeps": {"small": [measured]}}}), "a run from before the metrics: no table"


def test_the_transform_alones_stages_are_reported_without_the_models_own() -> None:
    ms = {"read_inputs": 0.0, "inspect": 0.004, "gpu_decode": 0.17, "gpu_resize": 0.05, "cpu_path": 0.0,
          "assemble": 0.01, "gpu_wait": 0.04, "respond": 0.0}
    page = gpu_report.markdown({"decoding_alone": {"transform_small": {"images_per_s": 4000.0, "ms_per_image": ms},
                                                   "nvjpeg_small": {"images_per_s": 5800.0}}})
    assert "| measured | inspect | gpu_decode | gpu_resize | cpu_path | assemble | gpu_wait |" in page
    assert "| transform_small | 0.004 | 0.170 | 0.050 | 0.000 | 0.010 | 0.040 |" in page
    assert "by stage" not in gpu_report.markdown({"decoding_alone": {"transform_small": {"images_per_s": 1.0}}})


def test_the_transform_alone_runs_the_shipped_batch_code_and_reads_its_clock(tmp_path) -> None:
    """The in-process measurement on this CPU (Pillow standing in for nvJPEG): the figures bench-gpu reports."""
    from bench import gpu_inprocess
    from gpu_support import jpeg_photos, shipped_gpu_transform

    photos = list(jpeg_photos().values())
    preprocessor = shipped_gpu_transform(tmp_path).BatchPreprocessor(224, torch.device("cpu"), torch.float32)
    measured = gpu_inprocess.gpu_transform_alone(preprocessor, photos, batch_size=4, seconds=0.2)
    preprocessor.close()
    assert measured["images"] == 4 * measured["steps"] and measured["paths"]["gpu"] == measured["images"]
    assert measured["paths"]["cpu"] == measured["paths"]["refused"] == 0
    assert all(measured["ms_per_image"][stage] > 0 for stage in ("inspect", "gpu_decode", "gpu_resize", "assemble"))
    assert measured["ms_per_image"]["gpu_wait"] == 0.0, "no GPU work on a CPU"


def test_stage_tables_follow_the_batchs_order_whatever_order_the_metrics_came_in() -> None:
    from bench.preprocess_table import in_pipeline_order

    assert in_pipeline_order(["respond", "gpu_wait", "later_stage", "read_inputs", "gpu_decode", "respond"]) == [
        "read_inputs", "gpu_decode", "gpu_wait", "respond", "later_stage"]
    shuffled = {"images": {"refused": 0, "cpu": 1, "gpu": 63},
                "ms_per_image": {"respond": 0.002, "gpu_decode": 0.21, "read_inputs": 0.01}}
    page = gpu_report.markdown({"server": {"sweeps": {"small": [{**level(32, 64, 5400.0, 300.0),
                                                                "preprocess_stages": shuffled}]}}})
    assert "| level | read_inputs | gpu_decode | respond | images gpu / cpu / refused |" in page
    assert "| 0.010 | 0.210 | 0.002 | 63 / 1 / 0 |" in page


def test_a_rehearsal_takes_its_own_folders_and_small_defaults_unless_told_otherwise(tmp_path) -> None:
    measured = gpu.parse_args([])
    assert (measured.work_dir, measured.report_dir) == (ROOT / "bench_out" / "gpu", ROOT / "bench" / "report" / "gpu")
    rehearsed = gpu.parse_args(["--rehearse-on-cpu"])
    assert rehearsed.report_dir == ROOT / "bench_out" / "gpu-rehearsal" / "report", "never over the GPU report"
    assert rehearsed.work_dir == ROOT / "bench_out" / "gpu-rehearsal" / "work"
    assert (rehearsed.seconds, rehearsed.nvjpeg_processes) == (1.5, [2]) and measured.nvjpeg_processes == [2, 4, 8]
    told = gpu.parse_args(["--rehearse-on-cpu", "--report-dir", str(tmp_path), "--seconds", "3"])
    assert (told.report_dir, told.seconds, told.work_dir) == (tmp_path, 3.0, rehearsed.work_dir)
