"""``--scale-load K``: K times a trace's arrivals over the same clock, bursts kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecoserve.cli import main
from ecoserve.replay.runner import ReplayPlan
from ecoserve.replay.suite import Workload
from traces import Trace, load_trace, scale_load

TRACES = ("fixed:50ms", "bursty:10@500ms", "poisson:20", "mmpp:6,30@2m", "diurnal:4-24@5m")


@pytest.mark.parametrize("spec", TRACES)
@pytest.mark.parametrize("k", [0.25, 0.5, 0.7, 1.5, 2.0, 3.3])
def test_count_is_k_times_and_the_clock_is_kept(spec: str, k: float) -> None:
    trace = load_trace(spec, duration="5m")
    scaled = scale_load(trace, k, seed=3)
    assert abs(len(scaled) - k * len(trace)) <= 1
    assert scaled.duration == trace.duration
    assert scaled.arrivals.min() >= 0 and scaled.arrivals.max() <= trace.duration
    assert np.all(np.diff(scaled.arrivals) >= 0)


def test_one_is_the_trace_itself_and_more_keeps_every_original_arrival() -> None:
    trace = load_trace("poisson:20", duration="60s")
    assert scale_load(trace, 1.0) is trace
    doubled = scale_load(trace, 2.0)
    assert np.all(np.isin(trace.arrivals, doubled.arrivals))
    assert "x2" in doubled.name and "same clock" in doubled.source


def test_same_seed_same_arrivals_other_seed_others() -> None:
    trace = load_trace("mmpp:6,30@2m", duration="5m")
    a, b = scale_load(trace, 2.5, seed=7), scale_load(trace, 2.5, seed=7)
    c = scale_load(trace, 2.5, seed=8)
    assert np.array_equal(a.arrivals, b.arrivals)
    assert len(a) != len(c) or not np.array_equal(a.arrivals, c.arrivals)


def test_thinning_is_even_not_by_chance() -> None:
    """fixed:50ms at 0.5 is fixed:100ms; a burst of 10 at 0.5 is a burst of exactly 5."""
    fixed = scale_load(load_trace("fixed:50ms", duration="10s"), 0.5)
    assert np.allclose(np.diff(fixed.arrivals), 0.1)
    bursty = scale_load(load_trace("bursty:10@500ms", duration="60s"), 0.5, seed=1)
    times, counts = np.unique(bursty.arrivals, return_counts=True)
    assert np.all(np.isclose(times / 0.5, np.round(times / 0.5)))
    assert set(counts.tolist()) == {5}


def test_bursts_stay_bursts() -> None:
    """A burst of 10 at K=3 is about 30 at its instant, not spread over the gap."""
    trace = load_trace("bursty:10@500ms", duration="60s")
    scaled = scale_load(trace, 3.0, seed=2)
    on_burst = np.isclose(scaled.arrivals / 0.5, np.round(scaled.arrivals / 0.5), atol=1e-9)
    # each burst's first and last request own half a gap each: 4 of its 30 spill out
    assert on_burst.mean() > 0.85
    _, counts = np.unique(scaled.arrivals[on_burst], return_counts=True)
    assert np.median(counts) == 26


def test_the_load_shape_is_kept_per_window() -> None:
    """Per 10 s window, the scaled counts follow K times the trace's; a Poisson at the same
    mean rate would not (the MMPP's swings are the trace's own)."""
    trace = load_trace("mmpp:6,30@1m", duration="20m", seed=4)
    k = 2.5
    scaled = scale_load(trace, k, seed=5)
    edges = np.arange(0.0, trace.duration + 10.0, 10.0)
    before = np.histogram(trace.arrivals, edges)[0]
    after = np.histogram(scaled.arrivals, edges)[0]
    assert np.corrcoef(before, after)[0, 1] > 0.99
    assert np.max(np.abs(after - k * before)) <= 0.1 * k * before.max()
    # the burstiness (per-window spread over mean) is the trace's, not a smoothed one
    assert after.std() / after.mean() == pytest.approx(before.std() / before.mean(), rel=0.05)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_k_is_refused_with_the_reason(bad: float) -> None:
    trace = Trace("t", np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="load scale must be a finite number > 0"):
        scale_load(trace, bad)


def test_empty_trace_stays_empty() -> None:
    trace = Trace("empty", np.array([]), duration_s=10.0)
    assert len(scale_load(trace, 3.0)) == 0


@pytest.mark.parametrize("bad", ["0", "-2", "nan"])
def test_cli_refuses_bad_k_with_exit_2(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--trace", "fixed:50ms", "--scale-load", bad]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--scale-load must be > 0" in err and "doubles it" in err


def test_cli_refuses_k_with_shared_board(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--shared-board", "--scale-load", "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not apply to --shared-board" in err


def test_plan_replays_the_scaled_arrivals() -> None:
    workload = Workload("p", "poisson:10", duration="60s")
    base = workload.load(seed=0)
    plan = ReplayPlan(workloads=(workload,), tuners=("dvfs",), seeds=(0,), scale_load=2.0)
    assert abs(len(plan.trace(workload)) - 2 * len(base)) <= 1
    assert plan.trace(workload).duration == base.duration
    assert np.array_equal(plan.trace(workload).arrivals, plan.trace(workload).arrivals)


def test_cli_sim_replay_counts_k_times_the_requests(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replay", "--trace", "bursty:10@500ms", "--duration", "30s", "--tuners", "dvfs"]
    assert main([*args, "--workers", "1", "--json", "--scale-load", "2"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["meta"]["scale_load"] == 2.0
    rows = payload["results"]
    assert {r["workload"] for r in rows} == {"bursty:10@500ms x2"}
    assert {r["requests"] for r in rows} == {1200}
