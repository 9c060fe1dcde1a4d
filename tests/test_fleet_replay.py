"""The fleet replay: power-bill accounting, board models measured on twins, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ecoserve.cli import main
from ecoserve.core.fleet import AllOn, BoardSpec, Consolidation
from ecoserve.replay.fleet import parse_mix, render, replay_fleet, write_outputs
from ecoserve.sim.board_model import LATENCY_EDGES, BoardModel, RunLength, calibrate
from ecoserve.sim.fleet import FleetBoard, Parking, run_fleet
from traces.rates import RateSeries, binned, diurnal
from traces.trace import Trace


def one_bin(latency_s: float) -> np.ndarray:
    hist = np.zeros(len(LATENCY_EDGES) - 1)
    hist[int(np.searchsorted(LATENCY_EDGES, latency_s)) - 1] = 1.0
    return hist


def toy_model() -> BoardModel:
    """A stated toy board: 2 W idle, 10 W at 100 req/s, overloaded past 100 req/s."""
    return BoardModel(
        kind="toy",
        tuner="fixed",
        rates=np.array([0.0, 50.0, 100.0, 120.0]),
        power_w=np.array([2.0, 6.0, 10.0, 11.0]),
        served=np.array([1.0, 1.0, 1.0, 100.0 / 120.0]),
        latency_mean_s=np.array([0.05, 0.05, 0.1, 2.0]),
        histogram=np.vstack([one_bin(0.05), one_bin(0.05), one_bin(0.1), one_bin(2.0)]),
        idle_w=2.0,
        min_clock_idle_w=2.0,
    )


TOY_BOARDS = [FleetBoard("t0", "toy"), FleetBoard("t1", "toy")]
OFF = Parking("off", {"toy": 0.5}, {"toy": 0.0}, {"toy": 2.0})


def specs(wake_s: float = 0.0) -> list[BoardSpec]:
    return [BoardSpec(b.name, "toy", 100.0, 0.1, wake_s) for b in TOY_BOARDS]


def test_all_on_energy_is_every_board_s_draw_over_the_run() -> None:
    series = RateSeries("flat", 1.0, np.full(600, 40.0))
    run = run_fleet(AllOn(specs()), TOY_BOARDS, {"toy": toy_model()}, series, OFF, slo_s=0.25)
    # 20 req/s each: 2 + 4 * 20/50 = 3.6 W, two boards, 600 s
    assert run.energy_j == pytest.approx(2 * 3.6 * 600)
    assert run.served == pytest.approx(40 * 600)
    assert run.rejected == pytest.approx(0.0, abs=1e-6)
    assert run.joules_per_request == pytest.approx(7.2 / 40)
    assert run.latency_quantile_s(50) == pytest.approx(0.05, rel=0.12)  # within its bin
    assert run.slo_violations == pytest.approx(0.0)


def test_consolidation_bills_the_parked_board_at_its_parked_draw() -> None:
    series = RateSeries("flat", 1.0, np.full(600, 40.0))
    policy = Consolidation(specs(), park_after_s=0.0, period_s=5.0)
    run = run_fleet(policy, TOY_BOARDS, {"toy": toy_model()}, series, OFF, slo_s=0.25)
    # with no hold, one board serves 40 req/s from the first period and the other is off
    assert run.energy_j == pytest.approx(600 * ((2 + 4 * 40 / 50) + 0.5))
    assert run.awake[0] == 1 and run.awake[-1] == 1
    assert run.joules_per_request < 7.2 / 40


def test_overload_is_rejected_and_counted_as_slo_violation() -> None:
    series = RateSeries("flat", 1.0, np.full(100, 240.0))  # 120 req/s per board
    run = run_fleet(AllOn(specs()), TOY_BOARDS, {"toy": toy_model()}, series, OFF, slo_s=0.25)
    assert run.served + run.rejected == pytest.approx(run.offered)
    assert run.rejected == pytest.approx(240 * 100 * (1 - 100 / 120))
    assert run.slo_violations == pytest.approx(1.0)
    assert math.isinf(run.latency_quantile_s(99))  # a sixth never answered


def test_board_model_measured_on_a_twin_is_monotone_in_load() -> None:
    length = RunLength(warmup_windows=2, requests=1500, min_span_s=15.0, max_span_s=30.0)
    m = calibrate("xavier-nx", "fixed", fractions=(0.1, 0.5, 2.0), length=length)
    assert m.rates[0] == 0.0 and m.power_w[0] == pytest.approx(m.idle_w)
    assert np.all(np.diff(m.power_w) > 0)  # more traffic, more watts
    assert m.served[1] == pytest.approx(1.0) and m.served[-1] < 0.8  # twice the max rate
    cap = m.capacity(0.25)
    assert m.rates[1] <= cap < m.rates[-1]
    assert m.ongoing(cap) > 0


def test_diurnal_day_peaks_in_the_afternoon_and_is_seeded() -> None:
    a = diurnal(1000.0, 100.0, step_s=10.0, seed=3)
    b = diurnal(1000.0, 100.0, step_s=10.0, seed=3)
    assert np.array_equal(a.counts, b.counts) and a.duration_s == 86_400
    hour = a.rates.reshape(24, -1).mean(axis=1)
    assert hour.argmax() in range(14, 19) and hour.argmin() in range(2, 7)
    with pytest.raises(ValueError, match="trough"):
        diurnal(10.0, 20.0)
    flat = binned(Trace("t", np.array([0.1, 0.2, 1.5, 2.9]), duration_s=3.0), 1.0)
    assert flat.counts.tolist() == [2, 1, 1]


def test_parse_mix_interleaves_kinds_and_names_bad_input() -> None:
    boards = parse_mix("orin:2,nano:1")
    assert [b.name for b in boards] == ["orin-0", "nano-0", "orin-1"]
    for bad, msg in (("toaster:2", "unknown board"), ("orin:two", "KIND:COUNT"), ("", "empty")):
        with pytest.raises(ValueError, match=msg):
            parse_mix(bad)


def test_small_fleet_replay_runs_every_policy_and_writes_its_files(tmp_path: Path) -> None:
    series = diurnal(150.0, 20.0, duration_s=1800.0, step_s=1.0, seed=1)
    result = replay_fleet(
        series,
        parse_mix("xavier-nx:2,nano:2"),
        slo_s=0.5,
        length=RunLength(warmup_windows=2, requests=1500, min_span_s=15.0, max_span_s=30.0),
        fractions=(0.1, 0.4, 0.7, 1.0),
    )
    names = {(r.policy, r.parking) for r in result.runs}
    assert ("all-on-max", "none") in names and ("consolidation", "off") in names
    assert ("ray-autoscale", "min-clocks") in names and ("oracle", "off") in names
    for r in result.runs:
        assert r.energy_j > 0 and r.served + r.rejected == pytest.approx(r.offered, rel=1e-6)
    assert result.ratios()["all-on-max/none"] == pytest.approx(1.0)
    files = write_outputs(tmp_path, result)
    data = json.loads((tmp_path / "fleet.json").read_text())
    assert len(data["runs"]) == len(result.runs) and (tmp_path / "fleet_boards.png") in files
    assert "consolidation" in render(result)


def test_cli_fleet_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--fleet", "--boards", "toaster:3"]) == 2
    assert "unknown board kind" in capsys.readouterr().err
    assert main(["replay", "--fleet", "--parking", "sideways"]) == 2
    assert "--parking" in capsys.readouterr().err


def test_scale_load_multiplies_the_arrivals_over_the_same_clock() -> None:
    from ecoserve.sim.fleet import scale_load

    day = diurnal(100.0, 10.0, duration_s=3_600.0, seed=0)
    heavy = scale_load(day, 3.0)
    assert heavy.duration_s == day.duration_s and heavy.step_s == day.step_s
    assert heavy.total == pytest.approx(3.0 * day.total)
    assert heavy.rates.max() == pytest.approx(3.0 * day.rates.max())
    assert scale_load(day, 1.0) is day
    with pytest.raises(ValueError, match="scale-load"):
        scale_load(day, 0.0)


def test_scale_load_reaches_the_fleet_replay(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", "--fleet", "--boards", "nano:1", "--duration", "1h", "--scale-load", "0"]
    assert main(argv) == 2  # refused before any board is measured
    assert "--scale-load must be > 0" in capsys.readouterr().err
