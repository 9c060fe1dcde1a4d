"""The simulator: same decisions as the asyncio runtime, event semantics, speed, governors."""

from __future__ import annotations

import asyncio
import selectors
import time
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.controller import WindowReport
from ecoserve.runtime.driver import Runtime, RuntimeObserver
from ecoserve.sim.driver import simulate
from traces import load_trace
from twins.fitted import load_twin
from twins.governors import schedutil
from twins.virtual_device import VirtualDevice


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait for ``timeout`` seconds moves the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout > 0:
            self.now += timeout
        return super().select(0)


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: idle waits take no real time, so the run is exact."""

    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(selector=self._vsel)

    def time(self) -> float:
        return self._vsel.now


class _InlineExecutor(Executor):
    """Runs submitted work at once on the loop's thread: no thread timing in the test."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


class _TwinTimedDevice(VirtualDevice):
    """The batch function itself takes the twin's time, so no stretching is needed."""

    def end_batch(self, batch_size: int, measured_s: float) -> float:
        return 0.0


class _Collect(RuntimeObserver):
    def __init__(self) -> None:
        self.reports: list[WindowReport] = []

    def on_window(self, report: WindowReport) -> None:
        self.reports.append(report)


def _runtime_reports(arrivals: np.ndarray, settings: EngineSettings, twin: Any) -> list[Any]:
    """Drive the real ``Runtime`` over ``arrivals`` on a virtual-time event loop."""
    loop = _VirtualTimeLoop()

    async def main() -> list[WindowReport]:
        device = _TwinTimedDevice(twin, clock=loop.time)
        engine = build_engine(device.actuator.knobs(), settings)
        observer = _Collect()

        async def fn(batch: list[int]) -> list[int]:
            await asyncio.sleep(twin.batch_time(len(batch), device.actuator.current()))
            return batch

        rt = Runtime(
            fn,
            device,
            engine,
            observer=observer,
            clock=loop.time,
            cpu_clock=None,
        )
        rt._executor = _InlineExecutor()  # type: ignore[assignment]
        await rt.start()
        futures = []
        for a in arrivals.tolist():
            delay = a - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            futures.append(rt.submit_nowait(0))
        await asyncio.gather(*futures)
        await rt.stop()
        return observer.reports

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize(("batch_timer", "max_wait_s"), [("fixed", 0.05), ("fill", 2.0)])
def test_simulator_and_runtime_make_the_same_decisions(batch_timer: str, max_wait_s: float) -> None:
    """Same trace, tuner seed and noise-free twin: the same windows, configurations, costs."""
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("poisson:40", duration="45s", seed=3)
    settings = EngineSettings(
        tuner="ecogd",
        seed=1,
        window_requests=40,
        warmup_requests=8,
        window_seconds=30.0,
        batch_timer=batch_timer,
        max_wait_s=max_wait_s,
    )
    runtime = _runtime_reports(trace.arrivals, settings, twin)
    sim = simulate(trace.arrivals, twin, settings).reports
    assert len(runtime) >= 20
    assert [r.config for r in sim] == [r.config for r in runtime]
    assert len({r.config for r in sim}) >= 5  # the tuner really moved
    assert [r.requests for r in sim] == [r.requests for r in runtime]
    np.testing.assert_allclose([r.cost for r in sim], [r.cost for r in runtime], rtol=1e-6)
    np.testing.assert_allclose([r.energy_j for r in sim], [r.energy_j for r in runtime], rtol=1e-6)


def test_total_accounting_matches_the_runtime_meter() -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("bursty:6@400ms", duration="20s")
    settings = EngineSettings(
        tuner="random", seed=2, window_requests=30, warmup_requests=5, accounting="total"
    )
    runtime = _runtime_reports(trace.arrivals, settings, twin)
    sim = simulate(trace.arrivals, twin, settings).reports
    assert [r.config for r in sim] == [r.config for r in runtime]
    np.testing.assert_allclose([r.energy_j for r in sim], [r.energy_j for r in runtime], rtol=1e-6)


def test_latencies_and_energy_are_consistent() -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("fixed:100ms", duration="60s")
    res = simulate(trace.arrivals, twin, tuner="fixed", window_seconds=None)
    assert res.served == len(trace) and res.rejected == 0
    lat = res.latencies
    # all knobs at max, batch 16, one request every 100 ms: each waits max_wait then runs
    t1 = twin.batch_time(1, twin.max_freqs())
    assert np.all(lat >= 0.05 + t1 - 1e-9) and np.all(lat <= 0.05 + t1 + 1e-6)
    idle = twin.power(twin.max_freqs(), 0.0)
    assert res.total_energy_j == pytest.approx(
        res.active_energy_j + idle * (res.end_s - res.batches * t1), rel=1e-6
    )


def test_bounded_queue_rejects_instead_of_growing() -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("bursty:200@2s", duration="10s")
    res = simulate(trace.arrivals, twin, tuner="fixed", max_queue=50)
    assert res.rejected > 0
    assert res.served + res.rejected == len(trace)


def test_seeded_runs_repeat_and_seeds_differ() -> None:
    twin = load_twin("xavier-nx")
    trace = load_trace("poisson:20", duration="5m")
    a = simulate(trace.arrivals, twin, tuner="ecogd", seed=4)
    b = simulate(trace.arrivals, twin, tuner="ecogd", seed=4)
    c = simulate(trace.arrivals, twin, tuner="ecogd", seed=5)
    assert [r.cost for r in a.reports] == [r.cost for r in b.reports]
    assert [r.cost for r in a.reports] != [r.cost for r in c.reports]


def test_replay_never_sleeps_and_is_fast() -> None:
    twin = load_twin("xavier-nx")
    trace = load_trace("fixed:50ms", duration="30m")
    start = time.perf_counter()
    res = simulate(trace.arrivals, twin, tuner="ecogd")
    wall = time.perf_counter() - start
    assert res.served == len(trace)
    assert res.end_s / wall > 300  # the target (>= 1000x) is measured by the benchmark


def test_dvfs_runs_under_the_governor_models() -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    trace = load_trace("fixed:50ms", duration="2m")
    res = simulate(trace.arrivals, twin, tuner="dvfs")
    assert res.served == len(trace)
    # light load: the governors clock down, so batches run slower than at the maximum
    fixed = simulate(trace.arrivals, twin, tuner="fixed")
    assert np.median(res.latencies) > np.median(fixed.latencies)


def test_schedutil_model_climbs_under_load_and_falls_when_idle() -> None:
    table = [100.0, 200.0, 400.0, 800.0, 1600.0]
    gov = schedutil(table)
    gov.advance(0.0, 0.0)
    for k in range(1, 50):
        gov.advance(k * 0.01, 0.0)
    assert gov.freq == 100.0
    for k in range(50, 200):
        gov.advance(k * 0.01, 1.0)
    assert gov.freq == 1600.0
