"""The preprocessing stage clock (shipped as clip_stage_clock.py): what clip_preprocess's metrics count."""
from __future__ import annotations

import threading
import time

import pytest

from clip_triton_export.triton_models.stage_clock import CPU_TARGET_PATHS, CPU_TARGET_STAGES, StageClock


def test_a_stage_adds_its_wall_time_even_when_it_raises() -> None:
    clock = StageClock()
    with clock.stage("gpu_decode"):
        time.sleep(0.05)
    with pytest.raises(KeyError), clock.stage("gpu_decode"):
        time.sleep(0.05)
        raise KeyError("a bad batch")
    seconds, _ = clock.take()
    assert 0.1 <= seconds["gpu_decode"] < 1.0
    assert all(value == 0.0 for stage, value in seconds.items() if stage != "gpu_decode")


def test_take_hands_over_the_totals_and_starts_again_from_zero() -> None:
    clock = StageClock(CPU_TARGET_STAGES, CPU_TARGET_PATHS)
    clock.count("cpu", 3)
    clock.count("refused", 1)
    with clock.stage("respond"):
        pass
    seconds, images = clock.take()
    assert images == {"cpu": 3, "refused": 1} and set(seconds) == set(CPU_TARGET_STAGES) and seconds["respond"] > 0
    assert clock.take() == (dict.fromkeys(CPU_TARGET_STAGES, 0.0), {"cpu": 0, "refused": 0})


def test_names_outside_the_clocks_own_are_refused() -> None:
    clock = StageClock(CPU_TARGET_STAGES, CPU_TARGET_PATHS)
    with pytest.raises(ValueError, match="gpu_decode"), clock.stage("gpu_decode"):
        pass
    with pytest.raises(ValueError, match="gpu"):
        clock.count("gpu", 1)


def test_counts_from_many_threads_while_another_takes_lose_nothing() -> None:
    clock, taken, done = StageClock(), [], threading.Event()

    def taker() -> None:
        while not done.is_set():
            taken.append(clock.take()[1]["gpu"])

    def counter() -> None:
        for _ in range(20_000):
            clock.count("gpu", 1)

    reading = threading.Thread(target=taker)
    reading.start()
    workers = [threading.Thread(target=counter) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    reading.join()
    assert sum(taken) + clock.take()[1]["gpu"] == 80_000


def test_totals_put_back_go_out_with_the_next_ones() -> None:
    clock = StageClock(CPU_TARGET_STAGES, CPU_TARGET_PATHS)
    clock.count("cpu", 2)
    clock.add({"respond": 0.25}, {"cpu": 3, "refused": 1})
    seconds, images = clock.take()
    assert seconds["respond"] == 0.25 and images == {"cpu": 5, "refused": 1}


class StandInMetrics:
    """triton_python_backend_utils exists only inside Triton's stub: this stands in for its metric API (what
    the served tests cannot provoke: an increment that fails), recording what reached the counters."""

    def __init__(self, failing: set[str]):
        self.values: dict[str, float] = {}
        self.failing, self.warnings = failing, []
        stand_in = self

        class Metric:
            def __init__(self, labels):
                self.key = labels.get("stage") or labels["path"]

            def increment(self, value):
                if self.key in stand_in.failing:
                    raise RuntimeError(f"{self.key}: the parent process did not answer")
                stand_in.values[self.key] = stand_in.values.get(self.key, 0) + value

        class MetricFamily:
            COUNTER = "counter"

            def __init__(self, name, description, kind):
                pass

            def Metric(self, labels):  # noqa: N802 - pb_utils's name
                return Metric(labels)

        class Logger:
            @staticmethod
            def log_warn(message):
                stand_in.warnings.append(message)

        self.MetricFamily, self.Logger = MetricFamily, Logger


def test_a_failed_publish_keeps_what_it_could_not_add_and_warns_once(monkeypatch) -> None:
    import importlib
    import sys

    stand_in = StandInMetrics(failing={"cpu_path"})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in)
    monkeypatch.setitem(sys.modules, "clip_stage_clock", sys.modules[StageClock.__module__])
    from clip_triton_export.triton_models import preprocess_metrics
    importlib.reload(preprocess_metrics)

    clock = StageClock(CPU_TARGET_STAGES, CPU_TARGET_PATHS)
    metrics = preprocess_metrics.PreprocessMetrics({"model_name": "clip_preprocess", "model_instance_name": "i0"},
                                                   clock, interval_s=3600)
    for _ in range(2):
        with clock.stage("read_inputs"), clock.stage("cpu_path"):
            time.sleep(0.01)
        clock.count("cpu", 4)
        metrics._publish_or_warn()
    assert len(stand_in.warnings) == 1, stand_in.warnings
    assert stand_in.values["read_inputs"] >= 0.02 and "cpu_path" not in stand_in.values
    stand_in.failing.clear()
    metrics.close()
    assert stand_in.values["cpu_path"] >= 0.02 and stand_in.values["cpu"] == 8, "nothing lost"
    assert clock.take() == (dict.fromkeys(CPU_TARGET_STAGES, 0.0), {"cpu": 0, "refused": 0})
