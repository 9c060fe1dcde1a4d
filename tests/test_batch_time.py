"""The batch-time model and EcoGD's capacity guard built on it."""

from __future__ import annotations

import random

import pytest

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners.batch_time import MAX_CLOCKS, BatchTimeModel
from tuners.ecogd import EcoGD

TOP = ("top",)


def test_the_line_at_the_reference_clocks_and_the_stretch_of_others() -> None:
    model = BatchTimeModel()
    model.set_reference(TOP)
    for n in (1.0, 4.0, 16.0):
        model.observe(TOP, n, 0.010 + 0.002 * n)
    assert model.batch_time(TOP, 8) == pytest.approx(0.026)
    assert model.capacity(TOP, 8) == pytest.approx(8 / 0.026)
    slow = ("slow",)
    assert model.batch_time(slow, 8) is None  # never measured: unknown, not guessed
    model.observe(slow, 2.0, 1.5 * (0.010 + 0.002 * 2))
    assert model.batch_time(slow, 8) == pytest.approx(1.5 * 0.026)


def test_an_unmeasured_setting_is_bounded_by_measured_ones_at_least_as_fast() -> None:
    model = BatchTimeModel()
    model.set_reference((4, 4, 0))
    model.observe((4, 4, 0), 4.0, 0.04)
    model.observe((4, 2, 0), 4.0, 0.08)  # half the GPU clock: twice the time
    model.observe((3, 4, 0), 4.0, 0.05)
    clocks = (True, True, False)  # the third knob is not a clock (a split point, say)
    assert model.capacity_bound((4, 2, 0), 4, clocks) == pytest.approx(50.0)  # measured
    # lower on both clocks than (4, 2) and (3, 4): at most the slower of the two
    assert model.capacity_bound((3, 1, 0), 4, clocks) == pytest.approx(50.0)
    assert model.capacity_bound((3, 3, 0), 4, clocks) == pytest.approx(80.0)
    assert model.capacity_bound((4, 5, 0), 4, clocks) is None  # faster than anything known
    assert model.capacity_bound((3, 1, 1), 4, clocks) is None  # another split: no bound


def test_one_batch_size_seen_gives_a_line_through_the_origin() -> None:
    model = BatchTimeModel()
    model.set_reference(TOP)
    model.observe(TOP, 16.0, 0.160)
    assert model.batch_time(TOP, 4) == pytest.approx(0.040)


def test_nonsense_windows_are_ignored_and_memory_is_bounded() -> None:
    model = BatchTimeModel()
    model.set_reference(TOP)
    model.observe(TOP, 0.0, 0.1)
    model.observe(TOP, 4.0, float("nan"))
    assert model.batch_time(TOP, 4) is None
    model.observe(TOP, 4.0, 0.04)
    for i in range(MAX_CLOCKS + 50):
        model.observe(("clock", i), 4.0, 0.08)
    assert model.batch_time(("clock", 0), 4) is None  # the least recent was dropped
    assert model.batch_time(("clock", MAX_CLOCKS + 49), 4) == pytest.approx(0.08)


# -- the guard in EcoGD ----------------------------------------------------------------------
SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(3))), Knob(GPU, tuple(range(6))), Knob(BATCH, tuple(range(8)))
)


def batch_s(config: Config, items: float) -> float:
    """Each GPU step down stretches a batch by a fifth: the lowest clocks serve half as much."""
    return (0.004 + 0.02 * items) * (1.0 + 0.2 * (5 - config[1]))


def drive(tuner: EcoGD, windows: int, seed: int = 1) -> list[tuple[Config, float]]:
    """Bursty load: mostly 6 req/s, one window in four at 36 req/s. Energy favours low GPU
    clocks; a window whose rate exceeds the configuration's capacity queues (cost x 4)."""
    rng = random.Random(seed)
    out = []
    for _ in range(windows):
        config = tuner.ask()
        size = config[2] + 1
        rate = 36.0 if rng.random() < 0.25 else 6.0
        capacity = size / batch_s(config, size)
        cost = 0.5 + 0.05 * config[1] + 0.02 * abs(size - 4)
        if rate > capacity:
            cost *= 4.0
        items = min(size, max(1.0, rate * 0.3))
        served = 300.0
        batches = served / items
        metrics = {
            "arrival_rate": rate,
            "arrivals": served,
            "requests": served,
            "batches": batches,
            "busy_s": batches * batch_s(config, items),
        }
        tuner.tell(config, cost, metrics)
        out.append((config, rate))
    return out


def unsafe_share(told: list[tuple[Config, float]]) -> float:
    """Share of the windows run at a configuration that cannot carry 36 req/s."""
    late = told[len(told) // 2 :]
    return sum((c[2] + 1) / batch_s(c, c[2] + 1) < 36.0 for c, _ in late) / len(late)


def test_the_capacity_guard_keeps_the_climber_off_configurations_that_cannot_carry_bursts() -> None:
    tuner = EcoGD(SPACE, seed=0, follow_load=False)
    guarded = unsafe_share(drive(tuner, 400))
    status = tuner.describe()
    assert status["peak_rate"] == 36.0
    assert status["centre_capacity"] >= 36.0  # where it settled carries the bursts
    unguarded = unsafe_share(
        drive(EcoGD(SPACE, seed=0, follow_load=False, capacity_guard=False), 400)
    )
    assert unguarded > 0.3  # quiet windows lure it to low GPU clocks
    assert guarded < unguarded / 2


def test_the_baseline_window_is_no_peak() -> None:
    """The daemon's synthetic warm-up floods the baseline window: not the load to guard for."""
    tuner = EcoGD(SPACE, seed=0)
    config = tuner.ask()
    tuner.tell(config, 1.0, {"arrival_rate": 1500.0, "baseline": 1.0})
    tuner.tell(tuner.ask(), 0.9, {"arrival_rate": 12.0, "baseline": 0.0})
    assert tuner.describe()["peak_rate"] == 12.0


def test_without_batch_timing_the_guard_stands_aside() -> None:
    tuner = EcoGD(SPACE, seed=0)
    config = tuner.ask()
    tuner.tell(config, 1.0, {"arrival_rate": 100.0})
    assert not tuner._unsafe(SPACE.minimum())
