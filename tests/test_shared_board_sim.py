"""Several models on one board in virtual time: the shared-board loop, its scenarios, oracles."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from ecoserve.core.assembly import EngineSettings, build_engine, build_space
from ecoserve.core.controller import DEFAULT_QUEUE
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import QueueSpec
from ecoserve.core.knobs import CPU, GPU, Knob
from ecoserve.replay.shared_board import (
    SCENARIOS,
    BoardModel,
    SharedBoardPlan,
    markdown,
    run_shared_board,
    summary_rows,
)
from ecoserve.replay.suite import Workload
from ecoserve.sim.driver import Simulator
from ecoserve.sim.joint_oracle import compute_joint_oracles
from ecoserve.sim.oracle import config_table
from ecoserve.sim.shared_board import (
    SharedBoard,
    Tenant,
    daemon_tenants,
    joint_tenants,
    model_runs,
)
from traces import load_trace
from twins.base import DeviceTwin
from twins.fitted import load_twin
from twins.scaled import ScaledTwin


class Board(DeviceTwin):
    """A noise-free board: batch time affine in the batch, slower at lower clocks; it notes
    the clocks every batch ran at."""

    name = "board"

    def __init__(self) -> None:
        self.ran_at: list[dict[str, float]] = []

    def knobs(self) -> list[Knob]:
        return [Knob(CPU, (1e9, 2e9)), Knob(GPU, (1e8, 2e8, 4e8))]

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return (0.002 + 0.001 * batch) * (2e9 / freqs[CPU]) ** 0.5 * (4e8 / freqs[GPU]) ** 0.5

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return 1.0 + busy * (freqs[CPU] / 1e9 + freqs[GPU] / 1e8)

    def sample_batch_time(self, batch: int, freqs: Mapping[str, float], rng: Any) -> float:
        self.ran_at.append(dict(freqs))
        return self.batch_time(batch, freqs)


def poisson(rate: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds)))


SETTINGS = EngineSettings(
    max_batch=4, max_wait_s=0.05, window_requests=40, warmup_requests=10, window_seconds=5.0
)


# -- the loop -------------------------------------------------------------------------------------


def test_one_engine_with_one_queue_replays_exactly_as_the_simulator() -> None:
    twin = load_twin("xavier-nx")  # with its fitted noise: the draws must come in one order
    arrivals = load_trace("azure-code", rate=12.0).cut(300).arrivals
    settings = EngineSettings(max_wait_s=2.0, window_seconds=30.0)
    alone = Simulator(twin, build_engine(twin.knobs(), settings), noise_seed=4).run(arrivals)
    tenant = Tenant(build_engine(twin.knobs(), settings), {DEFAULT_QUEUE: "m"})
    shared = SharedBoard(twin, {"m": twin}, [tenant], noise_seed=4).run({"m": arrivals})
    assert len(alone.reports) > 5 and alone.reports == shared.reports[0]
    assert np.array_equal(alone.completions, shared.completions["m"], equal_nan=True)
    assert alone.total_energy_j == shared.total_energy_j
    assert alone.active_energy_j == shared.active_energy_j["m"]
    assert alone.rejected == shared.rejected["m"] and alone.batches == shared.batches["m"]


def test_a_joint_engine_runs_each_models_batches_at_that_models_cost() -> None:
    board = Board()
    twins = {"light": ScaledTwin(board, 1.0), "heavy": ScaledTwin(board, 3.0)}
    queues = [QueueSpec.for_model("light"), QueueSpec.for_model("heavy", max_batch=2)]
    traces = {"light": poisson(30.0, 20.0, 1), "heavy": poisson(10.0, 20.0, 2)}
    result = SharedBoard(board, twins, joint_tenants(board, queues, SETTINGS)).run(traces)
    assert result.served == sum(len(t) for t in traces.values()) and not any(
        result.rejected.values()
    )
    for m, arrivals in traces.items():
        assert len(result.latencies(m)) == len(arrivals) and (result.latencies(m) > 0).all()
    tuning = [r for r in result.reports[0] if r.phase == "tuning"]
    assert tuning and all(set(r.per_model) <= {"light", "heavy"} for r in tuning)
    assert all(r.values["batch_size:heavy"] <= 2 for r in tuning)
    runs = model_runs(result)
    # the heavy model's batches take three times as long: more joules per request
    assert runs["heavy"].energy_per_request_j > 2 * runs["light"].energy_per_request_j
    assert sum(r.energy_j for r in runs.values()) == pytest.approx(
        sum(result.active_energy_j.values())
    )
    total = model_runs(result, "total")
    assert sum(r.energy_j for r in total.values()) == pytest.approx(result.total_energy_j)


def test_daemons_share_the_clocks_the_last_writer_wins_and_the_meter_counts_the_wait() -> None:
    board = Board()
    twins: dict[str, DeviceTwin] = {"a": board, "b": board}  # one model's cost, noted
    settings = replace(SETTINGS, max_batch=1, max_wait_s=0.0, window_requests=1)
    settings = replace(settings, warmup_requests=0, tuner="fixed")
    low = {"config": [0, 0, 0]}  # every clock at its lowest, batch 1
    daemons = [
        Tenant(
            build_engine(board.knobs(), settings, Baseline(1.0, 1.0)),
            {DEFAULT_QUEUE: "a"},
        ),
        Tenant(
            build_engine(board.knobs(), replace(settings, tuner_params=low), Baseline(1.0, 1.0)),
            {DEFAULT_QUEUE: "b"},
        ),
    ]
    traces = {"a": np.array([0.0, 1.0]), "b": np.array([0.0, 1.0])}
    result = SharedBoard(board, twins, daemons).run(traces)
    low_clocks, top = {CPU: 1e9, GPU: 1e8}, {CPU: 2e9, GPU: 4e8}
    # both wrote at start, b last: a's first batch ran at b's clocks; a's window then closed
    # and a wrote its own again, before b's batch started: b's ran at a's
    assert board.ran_at[:2] == [low_clocks, top] and len(board.ran_at) == 4
    assert result.clock_changes >= 3

    def joules(clocks: dict[str, float]) -> float:
        return board.power(clocks, 1.0) * board.batch_time(1, clocks)

    a_first, b_first = result.reports[0][0], result.reports[1][0]
    assert a_first.energy_j == pytest.approx(joules(low_clocks))  # ran at once: its own
    # b dispatched at 0 too and waited for a's batch: its meter reading counts both
    assert b_first.energy_j == pytest.approx(joules(low_clocks) + joules(top))
    assert b_first.latency_mean_s == pytest.approx(
        board.batch_time(1, low_clocks) + board.batch_time(1, top)
    )


def test_what_a_shared_board_cannot_replay_is_refused_with_the_reason() -> None:
    board = Board()
    twins = {"a": ScaledTwin(board, 1.0)}
    queues = [QueueSpec.for_model("a")]
    with pytest.raises(ValueError, match="governors"):
        dvfs = daemon_tenants(board, queues, replace(SETTINGS, tuner="dvfs"), [0])
        SharedBoard(board, twins, dvfs).run({"a": poisson(5.0, 5.0, 0)})
    tenants = joint_tenants(board, queues, SETTINGS)
    with pytest.raises(ValueError, match=r"missing \['a'\], not served \['b'\]"):
        SharedBoard(board, twins, tenants).run({"b": np.array([1.0])})
    with pytest.raises(ValueError, match="no twin for model 'a'"):
        SharedBoard(board, {}, tenants)
    with pytest.raises(ValueError, match="name a model for every queue"):
        SharedBoard(board, twins, [Tenant(tenants[0].engine, {"x": "a"})])
    with pytest.raises(ValueError, match="one seed per model"):
        daemon_tenants(board, queues, SETTINGS, [0, 1])


# -- another model on the board ------------------------------------------------------------------


def test_a_scaled_twin_takes_factor_times_as_long_at_the_same_power() -> None:
    board = load_twin("xavier-nx")
    heavy = ScaledTwin(board, 2.5)
    freqs = {CPU: board.knobs()[0].values[3], GPU: board.knobs()[1].values[2]}
    assert heavy.batch_time(4, freqs) == pytest.approx(2.5 * board.batch_time(4, freqs))
    assert heavy.power(freqs, 1.0, batch=4) == board.power(freqs, 1.0, batch=4)
    assert heavy.noise == board.noise and heavy.knobs() == board.knobs()
    space = build_space(board.knobs(), EngineSettings(max_batch=4))
    base, scaled = config_table(board, space), config_table(heavy, space)
    assert np.allclose(scaled.time_s, 2.5 * base.time_s)
    assert np.allclose(scaled.energy_j, 2.5 * base.energy_j)
    rng = random.Random(0)
    assert heavy.sample_batch(2, freqs, rng, 0.0).seconds > 0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="cost factor"):
            ScaledTwin(board, bad)


# -- the oracles and the replay --------------------------------------------------------------------


def test_the_joint_oracles_bound_what_a_fixed_configuration_can_do() -> None:
    board = Board()
    twins = {"a": ScaledTwin(board, 1.0), "b": ScaledTwin(board, 2.0)}
    queues = [QueueSpec.for_model("a"), QueueSpec.for_model("b", max_batch=3)]
    traces = {"a": poisson(40.0, 30.0, 3), "b": poisson(15.0, 30.0, 4)}
    oracles = compute_joint_oracles(board, twins, queues, traces, SETTINGS, validate=3)
    assert set(oracles.baselines) == {"a", "b"}
    assert oracles.maximum_cost == pytest.approx(1.0)  # scored on its own figures
    assert len(oracles.candidates) == 3
    assert oracles.static_cost == min(c["simulated"] for c in oracles.candidates) < 1.0
    assert oracles.dynamic_cost <= oracles.static_cost
    space = build_space(board.knobs(), SETTINGS, queues)
    assert space.contains(oracles.static_config)
    assert oracles.static_values["batch_size:b"] <= 3


def test_a_served_model_starts_where_it_is_told_in_its_looped_trace() -> None:
    model = BoardModel("m", 1.0, Workload("p", "fixed:1s", duration="10s"), start="4s")
    arrivals = model.arrivals("20s")
    assert len(arrivals) == 20 and arrivals[0] == pytest.approx(0.0)
    assert arrivals.max() < 20.0 and np.all(np.diff(arrivals) > 0)


def test_the_replay_scores_every_way_of_serving_the_models_on_one_scale() -> None:
    models = (
        BoardModel("a", 1.0, Workload("a", "poisson:20", duration="2m")),
        BoardModel("b", 0.5, Workload("b", "poisson:10", duration="2m"), start="30s"),
    )
    settings = EngineSettings(max_wait_s=0.05, window_requests=100, warmup_requests=20)
    plan = SharedBoardPlan(
        models=models, settings=settings, duration="2m", seeds=(0,), oracles=False
    )
    report = run_shared_board(plan)
    assert [r.scenario for r in report.records] == list(SCENARIOS)
    by = {r.scenario: r for r in report.records}
    assert by["max"].cost == pytest.approx(1.0, abs=0.05)  # the reference's own figures
    assert by["daemons"].clock_changes > by["max"].clock_changes == 1
    assert len(by["daemons"].final_values) == 2 and len(by["joint"].final_values) == 1
    rows = {r["scenario"]: r for r in summary_rows(report)}
    assert rows["daemons"]["active_x_daemons"] == 1.0
    assert rows["joint"]["active_x_daemons"] == pytest.approx(
        by["joint"].active_energy_j / by["daemons"].active_energy_j
    )
    text = markdown(report)
    assert "| joint |" in text and "seed 0: joint/daemons energy" in text
    with pytest.raises(ValueError, match="distinct names"):
        SharedBoardPlan(models=(models[0], models[0]))


def test_the_replay_command_runs_the_shared_board() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "replay", "--shared-board", "--duration", "1m"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| joint |" in proc.stdout and "| daemons |" in proc.stdout and "Oracles" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ecoserve", "replay", "--shared-board", "--device", "virtual:nope"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "no twin 'nope'" in bad.stderr and "Traceback" not in bad.stderr
