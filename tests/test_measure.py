"""The measurement toolkit (measure/) and the locust pieces the reliability tools run on.

The load generator is checked against the real server (one shared tiny ViT): a level with several
images per request spread over two processes must succeed throughout and carry N images per request
by Triton's own count. The rest are unit tests: workloads, Triton's statistics window, the machine
description, locust's output, the phase plan of the overload shape and its request names.
"""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import IMAGES
from load_tests.phases import Phase, PhaseClock, format_phases, parse_phases, phase_at
from load_tests.request_names import accepted, outcome, rejected
from measure import loadgen, locust_output, machine, triton_stats
from measure.images import PHONE_SIZE, load_folder, phone_photo, small_jpegs

ENSEMBLE = "clip_image_encoder"


@pytest.mark.server
@pytest.mark.parametrize(("images_per_request", "processes"), [(3, 2), (2, 1)])
def test_a_level_carries_n_images_per_request(vit_server, images_per_request: int, processes: int) -> None:
    images = [data for _, data in load_folder(IMAGES)]
    level = loadgen.run_level(vit_server.grpc_url, images, concurrency=4, warmup_s=0.2, seconds=1.0,
                              images_per_request=images_per_request, processes=processes,
                              metrics_url=vit_server.metrics_url)
    print(loadgen.progress_line(level))
    assert (level["images_per_request"], level["processes"]) == (images_per_request, processes)
    assert level["requests"] > 0 and level["errors"] == 0, level["first_error"]
    assert level["images_per_s"] > 0 and level["images_per_s_counted"] > 0
    assert level["images_per_s"] == pytest.approx(images_per_request * level["requests_per_s"], rel=1e-3)
    assert level["latency_ms"]["p50"] > 0
    ensemble = level["server_stats"][ENSEMBLE]  # Triton's count over the window: N images in every request
    assert ensemble["requests"] > 0 and ensemble["inferences"] == images_per_request * ensemble["requests"]
    # clip_preprocess's own metrics, read at both ends of the window (they lag by up to 0.5 s, so not exactly
    # the window's images, but all on the exact CPU path, and each stage timed)
    stages = level["preprocess_stages"]
    assert stages["images"]["cpu"] > 0 and stages["images"]["refused"] == 0
    assert set(stages["ms_per_image"]) == {"read_inputs", "cpu_path", "respond"}
    assert stages["ms_per_image"]["cpu_path"] > 0


@pytest.mark.server
def test_encode_all_returns_one_row_per_image_in_order(vit_server) -> None:
    images = [data for _, data in load_folder(IMAGES, limit=3)]
    features = loadgen.encode_all(vit_server.grpc_url, images)
    assert features.shape[0] == 3
    assert loadgen.encode_all(vit_server.grpc_url, images[1:2]) == pytest.approx(features[1:2], rel=1e-5, abs=1e-6)


def test_requests_cycle_through_every_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Request k carries images k*N .. k*N+N-1 (cyclically); built with contract.image_input."""
    monkeypatch.setattr(loadgen.contract, "image_input", lambda blobs: list(blobs))
    assert loadgen.requests_for([b"a", b"b", b"c"], images_per_request=2) == [[b"a", b"b"], [b"c", b"a"], [b"b", b"c"]]
    assert loadgen.requests_for([b"a", b"b"]) == [[b"a"], [b"b"]]


def test_small_jpegs_are_jpegs_of_each_photos_own_size(tmp_path: Path) -> None:
    workload = small_jpegs(IMAGES, tmp_path / "cache")
    originals = load_folder(IMAGES)
    assert len(workload.images) == len(originals)
    for (name, data), (original_name, original) in zip(workload.images, originals):
        with Image.open(io.BytesIO(data)) as jpeg, Image.open(io.BytesIO(original)) as source:
            assert (jpeg.format, jpeg.size, jpeg.mode) == ("JPEG", source.size, "RGB"), name
            if source.format == "JPEG":
                assert data == original  # JPEG originals are sent as they are
    converted = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert converted == sorted(f"{Path(n).stem}-q90.jpg" for n, d in originals if not d.startswith(b"\xff\xd8"))
    assert small_jpegs(IMAGES, tmp_path / "cache").images == workload.images  # reused, not regenerated


def test_phone_photo_is_a_12_megapixel_jpeg() -> None:
    data = phone_photo(IMAGES / "chelsea.png")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", PHONE_SIZE, "RGB")


def test_statistics_window_gives_per_request_averages_and_batch_size() -> None:
    def statistics(inferences: int, executions: int, requests: int, queue_ns: int, infer_ns: int) -> dict:
        timed = {"count": str(requests)}
        return {"model_stats": [{
            "name": "clip_visual", "inference_count": str(inferences), "execution_count": str(executions),
            "inference_stats": {"success": {**timed, "ns": str(queue_ns + infer_ns)}, "queue": {**timed, "ns": str(queue_ns)},
                                "compute_infer": {**timed, "ns": str(infer_ns)}, "fail": {}},
            "batch_stats": [{"batch_size": "4", "compute_infer": {"count": str(executions), "ns": str(infer_ns // 4)}}],
        }]}

    before = triton_stats.snapshot(statistics(10, 10, 10, 1_000_000, 5_000_000))
    after = triton_stats.snapshot(statistics(50, 20, 50, 9_000_000, 85_000_000))
    window = triton_stats.window(before, after)["clip_visual"]
    assert window["requests"] == 40 and window["executions"] == 10
    assert window["avg_batch_size"] == 4.0
    assert window["queue_ms"] == pytest.approx(0.2)  # 8 ms of queueing over 40 requests
    assert window["compute_infer_ms"] == pytest.approx(2.0)
    assert window["compute_input_ms"] == 0.0
    # What the server spent, each execution once (batch_stats), for the client-overhead ratio.
    assert triton_stats.deltas(before, after)["clip_visual"]["batch_compute_ns"] == 20_000_000


def test_gpu_description_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(machine.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="NVIDIA H200, 143771, 560.35.03\n", stderr=""))
    monkeypatch.setattr(machine, "_torch_cuda", lambda: ({"torch": "2.13.0", "cuda": "12.8"}, []))
    gpu = machine.gpu()
    assert gpu == {"devices": [{"name": "NVIDIA H200", "memory_mib": 143771, "driver": "560.35.03"}], "count": 1,
                   "cuda": "12.8", "torch": "2.13.0"}
    assert machine.one_line({**machine.describe(with_gpu=False), "gpu": gpu}).endswith(", NVIDIA H200 (143771 MiB)")


def test_no_gpu_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    monkeypatch.setattr(machine, "_torch_cuda", lambda: ({"torch": "2.13.0", "cuda": None}, []))
    assert machine.gpu() is None


def test_phases_parse_and_reject_nonsense() -> None:
    phases = parse_phases("baseline:1:10, overload:64:20,eased:1:2.5")
    assert phases == [Phase("baseline", 1, 10.0), Phase("overload", 64, 20.0), Phase("eased", 1, 2.5)]
    assert format_phases(phases) == "baseline:1:10,overload:64:20,eased:1:2.5"
    assert [phase_at(phases, t) for t in (0, 9.99, 10, 29.9, 32.4)] == [phases[0], phases[0], phases[1], phases[1],
                                                                          phases[2]]
    assert phase_at(phases, 32.5) is None
    for wrong in ("", "overload:64", "overload:x:2", "overload:0:2", "overload:1:0", "a:1:1,a:2:1"):
        with pytest.raises(ValueError):
            parse_phases(wrong)


def test_the_shape_switches_users_and_phase_names_at_the_right_times() -> None:
    """The shape's tick with a fake clock: users per phase, None at the end, and the phase requests are
    attributed to moves on once locust reports the users changed (or at once when their number stays)."""
    clock = PhaseClock(parse_phases("baseline:1:2,overload:8:3,steady:8:1,eased:1:2"))
    assert clock.current is None
    assert clock.tick(0.0) == 1 and clock.current == "baseline"
    assert clock.tick(1.9) == 1 and clock.current == "baseline"
    assert clock.tick(2.0) == 8 and clock.current == "baseline"  # users still starting
    clock.users_changed()
    assert clock.current == "overload"
    assert clock.tick(5.0) == 8 and clock.current == "steady"  # same users: nothing to wait for
    assert clock.tick(6.1) == 1 and clock.current == "steady"  # 7 users finishing their requests
    clock.users_changed()
    assert clock.current == "eased"
    assert clock.tick(8.0) is None


def test_request_names_say_phase_and_outcome() -> None:
    assert outcome(accepted("overload")) == ("overload", "OK")
    assert outcome(rejected("overload", "UNAVAILABLE")) == ("overload", "UNAVAILABLE")
    assert outcome(accepted("clip_image_encoder [4 image(s)]")) == ("clip_image_encoder [4 image(s)]", "OK")
    assert outcome("clip_image_encoder [4 image(s)]") is None


def test_locust_output_percentiles_and_error_text(tmp_path: Path) -> None:
    entries = [{"response_times": {"10": 98, "20.0": 1}}, {"response_times": {"500.0": 1}}]
    assert locust_output.percentile(entries, 0.99) == 20.0 and locust_output.percentile(entries, 1.0) == 500.0
    assert locust_output.percentile([], 0.5) is None
    assert locust_output.error_text("RequestFailed('[StatusCode.UNAVAILABLE] Exceeds maximum queue size')") == \
        "Exceeds maximum queue size"
    assert locust_output.error_text('RequestFailed("it\'s [1] odd")') == "it's [1] odd"
    assert locust_output.failures(tmp_path / "missing") == []


def test_preprocess_stages_sum_instances_and_give_milliseconds_per_image() -> None:
    from measure import preprocess_stages

    def page(decode: float, resize: float, gpu: int, cpu: int) -> str:
        return "\n".join([
            "# HELP clip_triton_preprocess_seconds_total Seconds ...",
            "# TYPE clip_triton_preprocess_seconds_total counter",
            f'clip_triton_preprocess_seconds_total{{model_instance="clip_preprocess_0_0",model="clip_preprocess",stage="gpu_decode"}} {decode}',
            f'clip_triton_preprocess_seconds_total{{model_instance="clip_preprocess_0_1",model="clip_preprocess",stage="gpu_decode"}} {decode}',
            f'clip_triton_preprocess_seconds_total{{model_instance="clip_preprocess_0_0",model="clip_preprocess",stage="gpu_resize"}} {resize}',
            f'clip_triton_preprocess_images_total{{model_instance="clip_preprocess_0_0",model="clip_preprocess",path="gpu"}} {gpu}',
            f'clip_triton_preprocess_images_total{{model_instance="clip_preprocess_0_1",model="clip_preprocess",path="cpu"}} {cpu}',
            'nv_inference_count{model="clip_preprocess",version="1"} 123',
            'clip_triton_executing_requests{model_instance="clip_preprocess_0_0",model="clip_preprocess"} 1',
        ])

    before, after = preprocess_stages.parse(page(1.0, 0.5, 100, 10)), preprocess_stages.parse(page(2.0, 0.7, 290, 20))
    assert before == {"seconds": {"gpu_decode": 2.0, "gpu_resize": 0.5}, "images": {"gpu": 100.0, "cpu": 10.0}}
    seen = preprocess_stages.window(before, after)
    assert seen["images"] == {"gpu": 190, "cpu": 10}
    assert seen["ms_per_image"] == pytest.approx({"gpu_decode": 10.0, "gpu_resize": 1.0})
    assert preprocess_stages.window(after, after) == {"images": {"gpu": 0, "cpu": 0}, "ms_per_image": {}}
