"""The batching timer: fixed, or twice the batch's fill time at the measured arrival rate."""

from __future__ import annotations

import pytest

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.batch_timer import BatchTimer
from ecoserve.core.controller import WindowReport
from ecoserve.server.settings import ServeSettings
from ecoserve.sim.driver import Simulator
from traces import load_trace
from twins.fitted import load_twin


def test_a_fixed_timer_is_its_ceiling_whatever_the_load() -> None:
    timer = BatchTimer("fixed", 0.05)
    timer.observe(100.0)
    assert timer.timer_s(16) == timer.timer_s(1) == 0.05


def test_the_fill_timer_is_twice_the_fill_time_capped_at_the_ceiling() -> None:
    timer = BatchTimer("fill", 2.0)
    assert timer.timer_s(8) == 2.0  # no rate seen yet: the ceiling
    timer.observe(20.0)
    assert timer.timer_s(8) == pytest.approx(2 * 7 / 20.0)
    assert timer.timer_s(1) == 0.0  # a batch of one never waits
    timer.observe(2.0)
    assert timer.timer_s(8) == 2.0  # 7 s to fill: capped
    timer.observe(float("nan"))
    timer.observe(0.0)
    assert timer.rate == 2.0  # no rate is not a rate


def test_bad_timer_settings_name_the_fix() -> None:
    with pytest.raises(ValueError, match="fixed, fill"):
        BatchTimer("adaptive")
    with pytest.raises(ValueError, match="ceiling"):
        BatchTimer("fill", -1.0)
    with pytest.raises(ValueError, match="batch_timer must be one of fixed, fill"):
        ServeSettings(batch_timer="auto")


def test_the_engine_applies_the_timer_of_the_batch_size_after_each_window() -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("poisson:20", duration="3m", seed=1)
    settings = EngineSettings(
        batch_timer="fill", max_wait_s=2.0, window_requests=100, warmup_requests=10
    )
    engine = build_engine(twin.knobs(), settings)
    assert engine.batch_timers()["default"]["timer_s"] == 2.0  # before any window: the ceiling
    in_force: list[tuple[float, int, float]] = []

    def seen(report: WindowReport) -> None:
        timer_s = engine.batch_timers()["default"]["timer_s"]
        in_force.append((report.arrival_rate, engine.batch_size(), timer_s))

    Simulator(twin, engine).run(trace.arrivals, on_window=seen)
    assert len(in_force) >= 5
    assert len({size for _, size, _ in in_force}) >= 3  # the tuner moved the batch size
    for rate, size, max_wait in in_force:
        assert max_wait == pytest.approx(min(2.0, 2.0 * (size - 1) / rate))
