"""Lending parked boards to background work: the operator's price, and the fleet's accounts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from test_engine import LineTwin

from ecoserve.core.fleet_lending import LendingPlan, LendingPolicy, LendingPrice, LendingProfile
from ecoserve.sim.background import TwinStepCost
from ecoserve.sim.fleet import FleetBoard, FleetRun, Parking
from ecoserve.sim.fleet_lending import (
    lend_over_run,
    lending_parking,
    lending_profile,
    steps_of_parked,
    tuned_background,
)

# two kinds: a step of "big" costs (10.5 - 0.5) W * 0.05 s = 0.5 J over off, "small" 0.2 J
PROFILES = {
    "big": LendingProfile("big", lent_w=10.5, off_w=0.5, step_s=0.05, items_per_step=32),
    "small": LendingProfile("small", lent_w=4.5, off_w=0.5, step_s=0.05, items_per_step=16),
}
PARKED = [("b0", "big"), ("s0", "small"), ("s1", "small")]


def test_a_profile_says_what_a_step_costs_over_powering_off() -> None:
    big = PROFILES["big"]
    assert big.steps_per_s == pytest.approx(20.0)
    assert big.joules_per_step == pytest.approx(0.525)
    assert big.extra_joules_per_step == pytest.approx(0.5)
    with pytest.raises(ValueError, match="step_s > 0"):
        LendingProfile("x", lent_w=5.0, off_w=0.5, step_s=0.0, items_per_step=1)
    with pytest.raises(ValueError, match="items_per_step"):
        LendingProfile("x", lent_w=float("nan"), off_w=0.5, step_s=0.1, items_per_step=1)


def test_a_price_is_a_value_or_a_budget_never_both_nor_neither() -> None:
    for bad in ({}, {"value_per_step_j": 1.0, "budget_j": 5.0}, {"value_per_step_j": -1.0}):
        with pytest.raises(ValueError, match="exactly one"):
            LendingPrice(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="span_s"):
        LendingPrice(budget_j=1.0, span_s=0.0)
    assert "0.3 J/step" in LendingPrice(value_per_step_j=0.3).describe()


def test_a_value_per_step_lends_the_kinds_whose_step_is_worth_its_joules() -> None:
    def plan(value: float) -> LendingPlan:
        return LendingPolicy(PROFILES, LendingPrice(value_per_step_j=value)).decide(PARKED, 5.0)

    assert plan(0.1) == LendingPlan((), ("b0", "s0", "s1"))
    assert plan(0.2) == LendingPlan(("s0", "s1"), ("b0",))  # worth exactly its joules: lent
    assert plan(0.6) == LendingPlan(("b0", "s0", "s1"), ())
    policy = LendingPolicy(PROFILES, LendingPrice(value_per_step_j=0.3))
    policy.decide(PARKED, 5.0)
    assert policy.spent_j == pytest.approx(2 * 4.0 * 5.0)  # two small boards, 4 W over off
    with pytest.raises(ValueError, match="no lending profile for board kind 'huge'"):
        policy.decide([("h0", "huge")], 5.0)
    with pytest.raises(ValueError, match="period_s"):
        policy.decide(PARKED, 0.0)


def test_a_budget_accrues_over_its_span_and_buys_the_cheapest_steps_first() -> None:
    # 100 s span, 400 J: 4 J a second accrue, one small board's extra draw
    policy = LendingPolicy(PROFILES, LendingPrice(budget_j=400.0, span_s=100.0))
    first = policy.decide(PARKED, 10.0)  # 40 J accrued: one small board for 10 s
    assert first.lend == ("s0",) and set(first.off) == {"b0", "s1"}
    lent = [len(policy.decide(PARKED, 10.0).lend) for _ in range(9)]
    assert sum(lent) == 9 and policy.spent_j <= 400.0 + 1e-9
    assert policy.decide(PARKED, 10.0).lend == ()  # past the span, the budget is spent
    # unspent allowance carries over: nothing parked for 10 s, then 80 J for the next 10 s:
    # both small boards (40 J each), not the big one (100 J)
    saver = LendingPolicy(PROFILES, LendingPrice(budget_j=400.0, span_s=100.0))
    assert saver.decide([], 10.0) == LendingPlan((), ())
    assert saver.decide(PARKED, 10.0).lend == ("s0", "s1")
    for _ in range(4):  # 200 J unspent by the next decision: all three boards (180 J)
        saver.decide([], 10.0)
    assert saver.decide(PARKED, 10.0).lend == ("b0", "s0", "s1")
    with pytest.raises(ValueError, match="needs a value"):
        saver.worth_lending("big")


BOARDS = [FleetBoard("b0", "big"), FleetBoard("s0", "small"), FleetBoard("s1", "small")]
PARK = Parking(
    "off",
    {"big": 0.5, "small": 0.5},
    {"big": 45.0, "small": 45.0},
    {"big": 6.0, "small": 3.0},
)


def fleet_run(states: list[list[int]], energy_j: float = 1000.0) -> FleetRun:
    st = np.array(states, dtype=np.int8)
    return FleetRun(
        policy="consolidation",
        tuner="ecogd",
        parking="off",
        energy_j=energy_j,
        offered=100.0,
        served=100.0,
        rejected=0.0,
        histogram=np.zeros(3),
        slo_s=0.25,
        period_s=5.0,
        awake=(st <= 1).sum(axis=1),
        serving=(st == 0).sum(axis=1),
        wall_s=0.0,
        states=st,
    )


def test_lending_over_a_run_adds_the_lent_draw_and_counts_the_steps() -> None:
    # period 0: b0 serves, both small parked; period 1: b0 parked too; period 2: all serve
    run = fleet_run([[0, 2, 2], [2, 2, 2], [0, 0, 0]])
    lent = lend_over_run(run, BOARDS, LendingPolicy(PROFILES, LendingPrice(0.3)), PARK)
    # four small board-periods lent (4 W over off each, 5 s), b0's period left off
    assert lent.energy_j == pytest.approx(1000.0 + 4 * 4.0 * 5.0)
    assert lent.steps == pytest.approx(4 * 5.0 * 20.0)
    assert lent.items == pytest.approx(lent.steps * 16)
    assert lent.lent_board_s == 20.0 and lent.off_board_s == 5.0
    assert lent.per_kind_steps == {"small": pytest.approx(400.0)}
    d = lent.as_dict()
    assert d["extra_j_per_step"] == pytest.approx(80.0 / 400.0)  # the small kind's 0.2 J
    assert not d["wake_modelled"]
    nothing = lend_over_run(run, BOARDS, LendingPolicy(PROFILES, LendingPrice(0.0)), PARK)
    assert nothing.energy_j == 1000.0 and nothing.steps == 0.0
    bare = fleet_run([[0, 0, 0]])
    bare.states = None
    with pytest.raises(ValueError, match="per-period board states"):
        lend_over_run(bare, BOARDS, LendingPolicy(PROFILES, LendingPrice(0.3)), PARK)


def test_a_lent_kind_parks_at_its_lent_draw_and_wakes_in_one_step() -> None:
    lent = lending_parking(PARK, PROFILES, ["small"])
    assert lent.parked_w == {"big": 0.5, "small": 4.5}
    assert lent.wake_s == {"big": 45.0, "small": 0.05}
    assert lent.waking_w["small"] == 4.5 and lent.waking_w["big"] == 6.0
    assert "woken after one step" in lent.basis
    with pytest.raises(ValueError, match="huge"):
        lending_parking(PARK, PROFILES, ["huge"])
    # a run replayed with it: every parked board of a lent kind works its whole period
    run = fleet_run([[2, 2, 0], [2, 2, 2]], energy_j=1200.0)
    steps = steps_of_parked(run, BOARDS, PROFILES, ["small"], "value", fleet_run([[0, 0, 0]]))
    assert steps.steps == pytest.approx(3 * 5.0 * 20.0)
    assert steps.off_board_s == 10.0 and steps.wake_modelled
    assert steps.energy_j - steps.parked_energy_j == pytest.approx(200.0)


class Twin(LineTwin):
    """LineTwin with a draw that punishes the top clocks, so the cheapest is not the fastest."""

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return 1.0 + busy * (freqs["cpu_freq_hz"] / 1e9) ** 3 + freqs["gpu_freq_hz"] / 1e9


def test_a_boards_lent_profile_is_its_cheapest_clocks_at_the_jobs_largest_step() -> None:
    twin = Twin()
    cost = TwinStepCost(twin, 0.004, 0.001, max_micro_batch=16)
    clocks, mb = tuned_background(twin, cost)
    assert mb == 16
    top = twin.max_freqs()

    def joules(f: Mapping[str, float]) -> float:
        return twin.power(f, 1.0) * cost(16, f) / 16

    assert joules(clocks) < joules(top)
    assert clocks["cpu_freq_hz"] == 1e9  # the cubic draw makes the low CPU clock cheaper
    prof = lending_profile("line", twin, cost, off_w=0.5)
    assert prof.step_s == pytest.approx(cost(16, clocks))
    assert prof.lent_w == pytest.approx(twin.power(clocks, 1.0))
    assert prof.items_per_step == 16
