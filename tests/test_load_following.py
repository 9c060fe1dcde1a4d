"""Following the load: the change-point test, EcoGD's level memory, the load generators, and
scoring over every request."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from ecoserve.cli import main
from ecoserve.core.cost import Baseline
from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from ecoserve.replay.report import slo_violations
from ecoserve.sim.oracle import run_cost
from traces import load_trace
from tuners import make_tuner
from tuners.ecogd import EcoGD
from tuners.load_change import LoadChangeTest


def poisson_windows(rates: list[float], seconds: float = 20.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [rng.poisson(r * seconds) / seconds for r in rates]


# -- the change-point test -------------------------------------------------------------------
def test_a_steady_poisson_load_raises_no_alarm_and_a_step_raises_one_at_once() -> None:
    test = LoadChangeTest(threshold=12.0)
    steady = poisson_windows([20.0] * 300)
    assert not any(test.observe(r, r * 20.0) for r in steady)
    stepped = poisson_windows([60.0] * 5, seed=1)
    alarms = [test.observe(r, r * 20.0) for r in stepped]
    assert alarms[0], "a threefold step is tens of noise units: the first window raises it"
    assert test.alarms == 1
    assert test.level_rate == pytest.approx(60.0, rel=0.05)


def test_bursty_windows_scale_the_noise_so_bursts_are_no_change() -> None:
    """Lognormal window rates (sd 0.3 in log) with no change: a raw 30% threshold would fire
    on about a third of the windows; the test, in the series' own noise units, stays quiet."""
    rng = random.Random(4)
    test = LoadChangeTest(threshold=12.0)
    rates = [12.0 * math.exp(rng.gauss(0.0, 0.3)) for _ in range(400)]
    raw = sum(abs(b / a - 1) > 0.3 for a, b in zip(rates, rates[1:], strict=False))
    assert raw > 100
    assert sum(test.observe(r, 400.0) for r in rates) <= 1
    # a fourfold step still stands out of that noise within a few windows
    after = [48.0 * math.exp(rng.gauss(0.0, 0.3)) for _ in range(6)]
    assert any(test.observe(r, 400.0) for r in after)


def test_change_test_state_round_trips() -> None:
    test = LoadChangeTest()
    for r in poisson_windows([10.0] * 20 + [40.0] * 3):
        test.observe(r, r * 20)
    other = LoadChangeTest()
    other.load_state_dict(test.state_dict())
    assert other.state_dict() == test.state_dict()
    assert other.level_rate == test.level_rate


# -- EcoGD on a load that steps between two levels --------------------------------------------
def two_level_space() -> SearchSpace:
    return SearchSpace.of(*(Knob(n, tuple(range(s))) for n, s in ((CPU, 9), (GPU, 7), (BATCH, 8))))


OPTIMA = {8.0: (2, 3, 1), 24.0: (6, 4, 5)}


def level_cost(config: Config, rate: float) -> float:
    optimum = OPTIMA[rate]
    return 0.6 * (1.0 + 0.04 * sum(abs(c - o) for c, o in zip(config, optimum, strict=True)))


def drive(tuner: EcoGD, rates: list[float]) -> list[tuple[float, Config]]:
    told = []
    for rate in rates:
        config = tuner.ask()
        tuner.tell(config, level_cost(config, rate), {"arrival_rate": rate, "arrivals": 400.0})
        told.append((rate, config))
    return told


def test_a_level_seen_before_is_met_at_once() -> None:
    tuner = EcoGD(two_level_space(), seed=0)
    told = drive(tuner, [8.0] * 120 + [24.0] * 120 + [8.0])
    centre = tuner.centre  # where the return's alarm (on its first window) found it
    told += drive(tuner, [8.0] * 11)
    assert tuner.describe()["load_changes"] == 2
    # first visit: the climber reaches each level's optimum by searching
    assert sum(c == OPTIMA[8.0] for _, c in told[80:120]) >= 20
    assert sum(c == OPTIMA[24.0] for _, c in told[200:240]) >= 20
    # the return: one window mixing both loads, one re-measuring the centre under the new
    # load, then the remembered optimum (after at most a neighbour whose memory expired and
    # a batch-size probe falling due), without searching again
    back = [c for _, c in told[240:]]
    assert back[1] == centre, "the window after the alarm re-measures the centre"
    assert OPTIMA[8.0] in back[2:5]
    assert sum(c == OPTIMA[8.0] for c in back) >= 8


def test_without_level_memory_the_return_is_searched_again() -> None:
    tuner = EcoGD(two_level_space(), seed=0, level_memory=False)
    told = drive(tuner, [8.0] * 120 + [24.0] * 120 + [8.0] * 12)
    assert sum(c == OPTIMA[8.0] for _, c in told[240:]) <= 2


def test_level_memory_survives_a_restart() -> None:
    tuner = EcoGD(two_level_space(), seed=0)
    drive(tuner, [8.0] * 120 + [24.0] * 120)
    resumed = EcoGD(two_level_space(), seed=0)
    resumed.load_state_dict(tuner.state_dict())
    assert resumed.state_dict() == tuner.state_dict()
    back = [c for _, c in drive(resumed, [8.0] * 6)]
    assert OPTIMA[8.0] in back[2:5] and resumed.centre == OPTIMA[8.0]


def test_the_original_climber_has_every_addition_off() -> None:
    space = two_level_space()
    original = make_tuner("ecogd-original", space)
    assert isinstance(original, EcoGD)
    assert (original.opening_scan, original.follow_load, original.probe_every) == (False, False, 0)
    assert original.inherit_margin is None and original.loser_memory == 1.0
    assert not original.capacity_guard and not original.guided_scan
    assert original.ask() == space.maximum()


# -- generators of changing loads -------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [("step:8,24@10m", 8.0, 24.0), ("diurnal:4-24@30m", 4.0, 24.0), ("mmpp:6,30@2m", 6.0, 30.0)],
)
def test_changing_loads_span_their_rates(spec: str, low: float, high: float) -> None:
    trace = load_trace(spec, duration="1h")
    again = load_trace(spec, duration="1h")
    np.testing.assert_array_equal(trace.arrivals, again.arrivals)  # seeded
    per_minute = np.histogram(trace.arrivals, bins=60, range=(0, 3600))[0] / 60.0
    assert low * 0.6 <= per_minute.min() <= low * 1.6
    assert high * 0.7 <= per_minute.max() <= high * 1.4


def test_step_levels_hold_for_their_period() -> None:
    trace = load_trace("step:5,20@1m", duration="4m")
    counts = np.histogram(trace.arrivals, bins=4, range=(0, 240))[0] / 60.0
    assert counts == pytest.approx([5, 20, 5, 20], rel=0.3)


@pytest.mark.parametrize("spec", ["step:8,24", "diurnal:24-4@1m", "mmpp:0@1m", "step:8@0s"])
def test_bad_changing_load_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(ValueError, match="accepted forms"):
        load_trace(spec)


# -- scoring over every request ---------------------------------------------------------------
def test_run_cost_counts_every_request_on_the_baseline_scale() -> None:
    lat = np.array([0.1, 0.1, 0.4])
    base = Baseline(energy_per_request_j=0.5, latency_s=0.2)
    assert run_cost(1.5, lat, base, 0.5) == pytest.approx(1.0)
    # twice the joules, the same latency: the energy half doubles
    assert run_cost(3.0, lat, base, 0.5) == pytest.approx(1.5)
    assert math.isnan(run_cost(1.0, np.empty(0), base, 0.5))


def test_slo_violations_are_the_share_of_windows_over_the_target() -> None:
    assert slo_violations([0.1, 0.3, 0.6, 0.7], 0.5) == pytest.approx(0.5)
    assert math.isnan(slo_violations([0.1], None))


def test_replay_in_slo_mode_reports_violations(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replay", "--trace", "fixed:90ms", "--duration", "2m", "--tuners", "fixed"]
    assert main([*args, "--workers", "1", "--window-requests", "50", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["results"]
    assert all(r["slo_violations"] is None for r in plain)
    slo = [*args, "--workers", "1", "--window-requests", "50", "--slo-latency-s", "0.001", "--json"]
    assert main(slo) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    # no batch finishes within 1 ms on the twin: every window of every row violates it
    assert [r["slo_violations"] for r in rows] == [1.0, 1.0]
