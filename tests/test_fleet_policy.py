"""The sans-IO fleet policies: consolidation, wake-ahead, hysteresis, Ray's rule, oracle."""

from __future__ import annotations

import math

import pytest

from ecoserve.core.fleet import (
    AllOn,
    BoardSpec,
    BoardState,
    Consolidation,
    FleetObservation,
    FleetParams,
    FleetPolicy,
    Oracle,
    RayServeRule,
    batch_time_line,
    capacity_rps,
    cheapest_first,
    fewest_covering,
)


def boards(n: int = 6, cap: float = 100.0, wake_s: float = 30.0) -> list[BoardSpec]:
    return [BoardSpec(f"b{i}", "orin", cap, 0.1 + 0.01 * i, wake_s) for i in range(n)]


def drive(policy, rates, period=1.0, ongoing=None):  # noqa: ANN001, ANN201
    """Decide once per period; returns the plans and the serving capacity after each."""
    plans, caps = [], []
    for k, r in enumerate(rates):
        obs = FleetObservation(now=k * period, rate_rps=r, ongoing=ongoing or {})
        plan = policy.decide(obs)
        plans.append(plan)
        caps.append(sum(policy.boards[n].capacity_rps for n in plan.serving))
    return plans, caps


def test_spec_rejects_bad_figures_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BoardSpec("x", "nano", 0.0, 0.1)
    with pytest.raises(ValueError, match="wake delay"):
        BoardSpec("x", "nano", 1.0, 0.1, wake_s=-1)
    with pytest.raises(ValueError, match="unique"):
        AllOn([BoardSpec("x", "nano", 1.0, 0.1), BoardSpec("x", "nano", 1.0, 0.1)])


def test_all_on_shares_traffic_by_capacity() -> None:
    policy = AllOn([BoardSpec("big", "orin", 300.0, 0.1), BoardSpec("small", "nano", 100.0, 0.2)])
    plan = policy.decide(FleetObservation(0.0, 50.0))
    assert plan.weights == pytest.approx({"big": 0.75, "small": 0.25})
    assert not plan.wake and not plan.park


def test_mixed_fleet_is_filled_cheapest_energy_per_request_first() -> None:
    specs = [
        BoardSpec("nano", "nano", 20.0, 0.18),
        BoardSpec("orin", "orin", 220.0, 0.09),
        BoardSpec("nx", "xavier-nx", 190.0, 0.10),
    ]
    assert [b.name for b in cheapest_first(specs)] == ["orin", "nx", "nano"]
    assert fewest_covering(cheapest_first(specs), 200.0) == ["orin"]
    assert fewest_covering(cheapest_first(specs), 300.0) == ["orin", "nx"]
    assert fewest_covering(cheapest_first(specs), 0.0) == ["orin"]  # one always stays up
    policy = Consolidation(specs, headroom=0.15, park_after_s=0.0)
    plans, _ = drive(policy, [150.0] * 3)
    assert plans[-1].serving == ("orin",)
    assert policy.state["nano"] is BoardState.PARKED


def test_consolidation_parks_idle_boards_only_after_the_hold() -> None:
    policy = Consolidation(boards(6), park_after_s=60.0, headroom=0.1, hysteresis=0.1)
    plans, _ = drive(policy, [150.0] * 200)
    parked_at = [k for k, p in enumerate(plans) if p.park]
    assert parked_at and parked_at[0] >= 60  # nothing parked before the hold passed
    assert len(policy.awake()) == 2  # 150 req/s * 1.2 needs two boards of 100
    assert sorted(plans[-1].serving) == ["b0", "b1"]  # the cheapest two


def test_consolidation_wakes_ahead_of_a_rising_rate() -> None:
    policy = Consolidation(boards(8, wake_s=30.0), park_after_s=10.0, trend_s=30.0)
    low = [80.0] * 120
    ramp = [80.0 + 4.0 * k for k in range(150)]  # +4 req/s every second, to 676 req/s
    plans, caps = drive(policy, low + ramp)
    assert len(policy.awake()) >= 7
    assert any(p.wake for p in plans[120:])
    # once the rise has been seen for a trend window, the boards already serving carry it
    # all the way up: each wake was started one wake delay early enough
    for k in range(120 + 30 + 30, len(low + ramp)):
        assert caps[k] >= (low + ramp)[k], f"short of capacity at t={k}s"


def test_consolidation_without_trend_would_fall_short() -> None:
    """The same ramp with a zero wake lead is what the forecast protects against."""
    policy = Consolidation(boards(8, wake_s=30.0), park_after_s=10.0, headroom=0.0)
    policy.forecast = lambda obs: obs.rate_rps  # type: ignore[method-assign]
    rates = [80.0] * 120 + [80.0 + 4.0 * k for k in range(150)]
    _, caps = drive(policy, rates)
    assert any(caps[k] < rates[k] for k in range(180, len(rates)))


def test_hysteresis_stops_flapping_around_a_threshold() -> None:
    policy = Consolidation(boards(6, wake_s=5.0), park_after_s=30.0, headroom=0.1, hysteresis=0.2)
    rates = [175.0 + (15.0 if (k // 7) % 2 else -15.0) for k in range(600)]  # 160..190 req/s
    plans, _ = drive(policy, rates)
    switches = sum(len(p.park) + len(p.wake) for p in plans[60:])
    assert switches <= 2


def test_a_dead_board_loses_its_traffic_and_a_spare_is_woken() -> None:
    policy = Consolidation(boards(4, wake_s=0.0), park_after_s=0.0)
    drive(policy, [150.0] * 5)
    serving = policy.awake()
    victim = serving[0]
    plan = policy.decide(FleetObservation(10.0, 150.0, dead=frozenset({victim})))
    assert victim not in plan.weights
    assert policy.state[victim] is BoardState.DEAD
    assert sum(policy.boards[n].capacity_rps for n in plan.serving) >= 150.0
    assert math.isclose(sum(plan.weights.values()), 1.0)


def test_ray_rule_scales_on_ongoing_requests_after_its_delays() -> None:
    specs = boards(10, wake_s=0.0)
    policy = RayServeRule(
        specs,
        target_ongoing_requests=2.0,
        upscale_delay_s=30.0,
        downscale_delay_s=600.0,
        look_back_period_s=1.0,
        start_awake=False,
    )
    assert policy.replicas == 1
    # 8 ongoing on the one replica: desired 4, carried out only after 30 s
    for k in range(40):
        awake = policy.awake() or ["b0"]
        policy.decide(FleetObservation(float(k), 10.0, ongoing={awake[0]: 8.0}))
        if k < 30:
            assert len(policy.awake()) == 1, k
    assert len(policy.awake()) == 4
    assert policy.awake() == ["b0", "b1", "b2", "b3"]  # fleet order, not energy order
    # load gone: scaled down only after 600 s
    for k in range(40, 700):
        policy.decide(FleetObservation(float(k), 0.0, ongoing={}))
        if k < 40 + 600:
            assert len(policy.awake()) == 4, k
    assert len(policy.awake()) == 1


def test_ray_rule_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        RayServeRule(boards(2), min_replicas=3)
    with pytest.raises(ValueError, match="target_ongoing"):
        RayServeRule(boards(2), target_ongoing_requests=0)


def test_oracle_wakes_one_wake_delay_ahead_and_parks_at_once() -> None:
    rates = [50.0] * 100 + [350.0] * 100

    def peak(t0: float, t1: float) -> float:
        return max(rates[int(t0) : int(t1) + 1] or [0.0])

    policy = Oracle(boards(6, wake_s=20.0), peak, period_s=1.0)
    plans, caps = drive(policy, rates)
    assert len(plans[0].park) == 5  # parks the surplus at once
    assert caps[100] >= 350.0  # serving when the step comes
    first_wake = min(k for k, p in enumerate(plans) if p.wake)
    assert 100 - 21 <= first_wake < 100 - 19 + 1


def test_weighted_round_robin_follows_weights_and_skips_excluded() -> None:
    from ecoserve.core.fleet import WeightedRoundRobin

    rr = WeightedRoundRobin()
    rr.set({"a": 0.75, "b": 0.25, "c": 0.0})
    picks = [rr.pick() for _ in range(40)]
    assert picks.count("a") == 30 and picks.count("b") == 10 and "c" not in picks
    assert all(picks[i : i + 4].count("b") == 1 for i in range(0, 40, 4))  # interleaved
    assert rr.pick(exclude={"a"}) == "b"
    assert rr.pick(exclude={"a", "b"}) is None


def test_a_dead_board_that_answers_again_comes_back_parked() -> None:
    policy = AllOn(boards(2, wake_s=0.0))
    policy.decide(FleetObservation(0.0, 10.0, dead=frozenset({"b1"})))
    assert policy.state["b1"] is BoardState.DEAD
    policy.revive("b1")
    plan = policy.decide(FleetObservation(1.0, 10.0))
    assert "b1" in plan.wake and "b1" in plan.weights


def test_batch_time_line_fits_sizes_and_falls_back_to_time_per_item() -> None:
    t0, t1 = batch_time_line([(1, 0.012), (4, 0.018), (8, 0.025), (8, 0.025)])
    assert t0 == pytest.approx(0.0103, abs=5e-4) and t1 == pytest.approx(0.00185, abs=1e-4)
    assert batch_time_line([(4, 0.02), (4, 0.04)]) == pytest.approx((0.0, 0.0075))
    assert batch_time_line([(0, 0.02), (3, math.nan)]) is None
    assert batch_time_line([]) is None


def test_capacity_is_the_largest_batch_whose_wait_and_run_fit_the_target() -> None:
    # the Nano twin's MobileNet line at maximum clocks: 25.3 ms at batch 1, +19 ms per item
    nano = (0.0063, 0.0190)
    params = FleetParams(slo_s=0.25)
    # 2 t(b) <= 250 ms holds up to b = 6 (2 x 120 ms); 6 / 0.1203 s
    assert capacity_rps(nano, 16, params) == pytest.approx(6 / (0.0063 + 6 * 0.019))
    assert capacity_rps(nano, 3, params) == pytest.approx(3 / (0.0063 + 3 * 0.019))
    # a tighter target allows smaller batches only, and so less
    tight = capacity_rps(nano, 16, FleetParams(slo_s=0.1))
    assert 0 < tight < capacity_rps(nano, 16, params)
    assert capacity_rps(nano, 16, FleetParams(slo_s=0.04)) == 0.0  # not even one item fits


def test_capacity_says_what_is_wrong_with_its_input() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        capacity_rps((0.01, 0.01), 0)
    with pytest.raises(ValueError, match="batch time line"):
        capacity_rps((-0.01, 0.01), 8)
    with pytest.raises(ValueError, match="slo_s"):
        FleetParams(slo_s=0.0)


def test_consolidation_does_not_swap_an_awake_board_for_a_cheaper_sleeping_one() -> None:
    """Live, measured energy drifts: a board covering the load is not traded for a boot."""
    specs = [BoardSpec("a", "nano", 100.0, 0.10, 5.0), BoardSpec("b", "nano", 100.0, 0.11, 5.0)]
    policy = Consolidation(specs, park_after_s=0.0)
    policy.decide(FleetObservation(now=0.0, rate_rps=10.0))
    assert policy.serving() == ["a"]
    # a's measured energy rises above b's: b is asleep, a still covers the load
    policy.update(BoardSpec("a", "nano", 100.0, 0.12, 5.0))
    for k in range(1, 20):
        plan = policy.decide(FleetObservation(now=float(k), rate_rps=10.0))
        assert not plan.wake and not plan.park
    assert policy.serving() == ["a"]
    # more load than a covers: the cheapest sleeping board is woken beside it
    plan = policy.decide(FleetObservation(now=30.0, rate_rps=90.0))
    assert plan.wake == ("b",)


def _one_serving_one_waking(park_after_s: float = 0.0) -> Consolidation:
    """``dear`` serves alone; the rate rose and the cheaper ``cheap`` (wake 5 s) was woken."""
    specs = [BoardSpec("dear", "nx", 100.0, 0.12, 5.0), BoardSpec("cheap", "orin", 100.0, 0.1, 5.0)]
    policy = Consolidation(specs, park_after_s=park_after_s, headroom=0.5)
    policy.state["cheap"] = BoardState.PARKED
    plan = policy.decide(FleetObservation(now=0.0, rate_rps=90.0))
    assert plan.wake == ("cheap",) and policy.state["cheap"] is BoardState.WAKING
    return policy


def test_a_serving_board_is_not_parked_while_its_replacement_is_waking() -> None:
    """The live failure: the rate fell while the board kept was booting; the only serving
    board was parked and nothing served until the boot ended."""
    policy = _one_serving_one_waking()
    for k in range(1, 5):  # the rate falls: one board (the cheap one) would do
        plan = policy.decide(FleetObservation(now=float(k), rate_rps=20.0))
        assert not plan.park, k
        assert plan.weights == {"dear": 1.0}, k
        assert policy.state["dear"] is BoardState.SERVING
    # the replacement serves (its wake delay has passed): now the dear board is parked
    plan = policy.decide(FleetObservation(now=5.0, rate_rps=20.0))
    assert plan.park == ("dear",)
    assert plan.weights == {"cheap": 1.0}


def test_a_booting_board_keeps_the_board_it_replaces_serving_past_its_wake_delay() -> None:
    policy = _one_serving_one_waking()
    booting = frozenset({"cheap"})
    for k in range(1, 30):  # live, the board has not answered yet, whatever its delay said
        plan = policy.decide(FleetObservation(now=float(k), rate_rps=20.0, booting=booting))
        assert plan.serving == ("dear",) and not plan.park, k
    policy.woken("cheap")  # it answered
    plan = policy.decide(FleetObservation(now=30.0, rate_rps=20.0))
    assert plan.park == ("dear",) and plan.serving == ("cheap",)


def test_a_serving_board_stays_until_the_kept_boards_cover_the_rate() -> None:
    class KeepFirst(FleetPolicy):
        """Keeps only the first board, whatever the rate (a policy that under-sizes)."""

        def target(self, obs: FleetObservation) -> set[str]:
            return {"b0"}

    policy = KeepFirst(boards(2, cap=100.0, wake_s=0.0))
    policy.cover_headroom = 0.5
    plan = policy.decide(FleetObservation(now=0.0, rate_rps=80.0))  # 80 x 1.5 > 100
    assert not plan.park and sorted(plan.serving) == ["b0", "b1"]
    plan = policy.decide(FleetObservation(now=1.0, rate_rps=60.0))  # 60 x 1.5 <= 100
    assert plan.park == ("b1",) and plan.serving == ("b0",)


def test_the_hold_is_not_restarted_by_a_park_that_waited_for_a_boot() -> None:
    """Once the replacement serves, the deferred park is carried out at once, not a hold later."""
    policy = _one_serving_one_waking(park_after_s=3.0)
    parked_at = None
    for k in range(1, 40):
        plan = policy.decide(FleetObservation(now=float(k), rate_rps=20.0))
        if plan.park:
            parked_at = k
            break
    # the hold (from t=1) passed at 4 while the replacement was waking; it served at 5
    assert parked_at == 5


def test_a_waking_board_left_out_is_parked_at_once_and_serving_ones_stay() -> None:
    policy = Oracle(boards(3, cap=100.0, wake_s=10.0), lambda t0, t1: 50.0, start_awake=False)
    plan = policy.decide(FleetObservation(now=0.0, rate_rps=50.0))
    assert plan.wake == ("b0",)
    policy.update(BoardSpec("b0", "orin", 100.0, 0.5, 10.0))  # b0 now the dearest
    plan = policy.decide(FleetObservation(now=1.0, rate_rps=50.0))
    assert plan.park == ("b0",) and plan.wake == ("b1",)  # never served: nothing waits for it


def test_a_woken_board_is_sent_a_share_that_ramps_up_to_its_capacity() -> None:
    specs = [BoardSpec("a", "orin", 100.0, 0.1, 5.0), BoardSpec("b", "orin", 100.0, 0.1, 5.0)]
    policy = Consolidation(specs, park_after_s=0.0, headroom=0.5, wake_ramp_s=60.0)
    policy.state["b"] = BoardState.PARKED
    plan = policy.decide(FleetObservation(now=0.0, rate_rps=90.0))  # 135 > 100: wake b
    assert plan.wake == ("b",) and plan.weights == {"a": 1.0}
    shares = []
    for t in range(5, 90, 5):
        plan = policy.decide(FleetObservation(now=float(t), rate_rps=90.0))
        shares.append(plan.weights["b"])
    assert shares[0] == pytest.approx(0.1 / 1.1)  # serving from t=5: the floor, 10% of its capacity
    assert shares == sorted(shares)  # rises ...
    assert shares[12] == pytest.approx(0.5) and shares[-1] == pytest.approx(0.5)  # full at 65 s
    assert shares[6] == pytest.approx(0.5 / 1.5)  # 30 s in: half its capacity
    # a board serving from the start, and a driver that gives no time, are not ramped
    assert AllOn(specs).decide(FleetObservation(now=0.0, rate_rps=1.0)).weights["b"] == 0.5
    assert policy.weights(["a", "b"]) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="wake_ramp_s"):
        FleetParams(wake_ramp_s=-1.0)


def test_a_ramp_never_pushes_the_other_boards_past_their_capacity() -> None:
    specs = [BoardSpec(f"b{i}", "orin", 100.0, 0.1, 5.0) for i in range(3)]
    policy = Consolidation(specs, park_after_s=0.0, headroom=0.5, wake_ramp_s=60.0)
    policy.state["b1"] = policy.state["b2"] = BoardState.PARKED
    policy.decide(FleetObservation(now=0.0, rate_rps=180.0))  # a step: both woken
    plan = policy.decide(FleetObservation(now=5.0, rate_rps=180.0))  # both serve, ramping
    loads = {n: w * 180.0 for n, w in plan.weights.items()}
    assert loads["b0"] == pytest.approx(100.0)  # full, not 150 (100 / 120 of the rate)
    assert loads["b1"] == pytest.approx(40.0) and loads["b2"] == pytest.approx(40.0)


def test_a_draining_backlog_keeps_its_boards_while_the_arrivals_have_stopped() -> None:
    # four boards of 100 req/s serving, no arrivals, 200 requests still in flight: with the
    # latency target 0.25 s they stand for 800 req/s, so nothing is parked until they drain
    kwargs = {"park_after_s": 5.0, "headroom": 0.1, "hysteresis": 0.1}
    waiting = {f"b{i}": 50.0 for i in range(4)}
    with_slo = Consolidation(boards(4), slo_s=0.25, **kwargs)
    plans, _ = drive(with_slo, [0.0] * 20, ongoing=waiting)
    assert not any(p.park for p in plans) and len(with_slo.awake()) == 4
    blind = Consolidation(boards(4), **kwargs)
    plans, _ = drive(blind, [0.0] * 20, ongoing=waiting)
    assert any(p.park for p in plans) and len(blind.awake()) == 1
    # in steady state the requests in flight (rate x latency, latency under the target)
    # stand for less than the rate and change nothing
    steady = Consolidation(boards(4), slo_s=0.25, **kwargs)
    plans, _ = drive(steady, [150.0] * 40, ongoing={"b0": 5.0, "b1": 5.0})
    assert len(steady.awake()) == 2
    with pytest.raises(ValueError, match="slo_s"):
        Consolidation(boards(2), slo_s=0.0)
