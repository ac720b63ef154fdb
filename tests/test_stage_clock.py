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
