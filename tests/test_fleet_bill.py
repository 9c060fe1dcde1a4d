"""The fleet's whole bill: the ingress host, a powered-off board's draw and wake time, Ray's
two targets, and the direct replay of one board of a fleet run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecoserve.cli import main
from ecoserve.core.assembly import EngineSettings
from ecoserve.core.fleet import AllOn, BoardSpec, Consolidation
from ecoserve.replay.fleet import parse_ray_targets, render, replay_measured
from ecoserve.sim.board_model import LATENCY_EDGES, BoardModel
from ecoserve.sim.fleet import (
    Bill,
    FleetBoard,
    FleetRun,
    Parking,
    make_bill,
    parking,
    run_fleet,
)
from ecoserve.sim.fleet_direct import (
    DirectResult,
    board_arrivals,
    model_board,
    peer_state,
    replay_board,
    tuned_settings,
)
from traces.rates import RateSeries


def one_bin(latency_s: float) -> np.ndarray:
    hist = np.zeros(len(LATENCY_EDGES) - 1)
    hist[int(np.searchsorted(LATENCY_EDGES, latency_s)) - 1] = 1.0
    return hist


def toy_model(kind: str = "toy", tuner: str = "ecogd") -> BoardModel:
    """A stated toy board: 2 W idle, 10 W at 100 req/s, overloaded past 100 req/s."""
    return BoardModel(
        kind=kind,
        tuner=tuner,
        rates=np.array([0.0, 50.0, 100.0, 120.0]),
        power_w=np.array([2.0, 6.0, 10.0, 11.0]),
        served=np.array([1.0, 1.0, 1.0, 100.0 / 120.0]),
        latency_mean_s=np.array([0.05, 0.05, 0.1, 2.0]),
        histogram=np.vstack([one_bin(0.05), one_bin(0.05), one_bin(0.1), one_bin(2.0)]),
        idle_w=2.0,
        min_clock_idle_w=2.0,
    )


BOARDS = [FleetBoard("t0", "toy"), FleetBoard("t1", "toy"), FleetBoard("t2", "toy")]
MODELS = {"fixed": {"toy": toy_model(tuner="fixed")}, "ecogd": {"toy": toy_model()}}


def step_up(low: float = 40.0, high: float = 180.0, each_s: int = 600) -> RateSeries:
    """Quiet, then a sudden rise that needs a second board."""
    return RateSeries("step", 1.0, np.concatenate([np.full(each_s, low), np.full(each_s, high)]))


def consolidation_run(bill: Bill, series: RateSeries | None = None):  # type: ignore[no-untyped-def]
    series = series or step_up()
    park = parking("off", MODELS["ecogd"], bill)
    specs = [BoardSpec(b.name, "toy", 100.0, 0.1, park.wake_s["toy"]) for b in BOARDS]
    policy = Consolidation(specs, park_after_s=0.0, period_s=5.0)
    return run_fleet(
        policy, BOARDS, MODELS["ecogd"], series, park, slo_s=0.25, ingress_w=bill.ingress_w
    )


def test_the_ingress_host_is_billed_to_every_policy_alike() -> None:
    result = replay_measured(
        step_up(), BOARDS, MODELS, slo_s=0.25, bill=Bill(ingress_w=30.0), ray_targets=(2.0, None)
    )
    assert len(result.runs) == 2 + 2 * 4  # two baselines; per parking mode: Ray x2, cons., oracle
    for run in result.runs:
        assert run.ingress_j == pytest.approx(30.0 * 1200)
        assert run.bill_j - run.energy_j == pytest.approx(30.0 * 1200)
    # boards-only ratios leave the host out; with it, the same joules are added to every run,
    # so among runs that served every request each ratio moves towards 1
    boards_only = result.ratios("all-on-max")
    billed = result.ratios("all-on-max", bill=True)
    full = [r.key for r in result.runs if r.rejected < 1e-6 * r.offered]
    assert len(full) >= 3
    for key in full:
        assert abs(billed[key] - 1.0) <= abs(boards_only[key] - 1.0) + 1e-12
    assert any(billed[k] != pytest.approx(boards_only[k]) for k in full)
    assert result.ratios("all-on-ecogd")["all-on-ecogd/none"] == pytest.approx(1.0)
    assert "x eco" in render(result)


def test_ray_s_rule_runs_at_each_target_under_one_policy_name() -> None:
    result = replay_measured(
        step_up(), BOARDS, MODELS, slo_s=0.25, parking_modes=("off",), ray_targets=(2.0, None)
    )
    ray = [r for r in result.runs if r.policy == "ray-autoscale"]
    assert [r.variant.split()[0] for r in ray][0] == "target=2"
    assert "Little" in ray[1].variant and len({r.key for r in ray}) == 2
    assert parse_ray_targets("2, little") == [2.0, None]
    for bad in ("0", "two", ""):
        with pytest.raises(ValueError, match="--ray-target"):
            parse_ray_targets(bad)


def test_parked_draw_raises_the_bill_but_changes_no_decision() -> None:
    low, high = consolidation_run(Bill(off_w=0.5)), consolidation_run(Bill(off_w=5.0))
    assert high.energy_j > low.energy_j
    assert high.served == pytest.approx(low.served) and np.array_equal(high.states, low.states)
    parked_board_s = float((low.states == 2).sum()) * low.period_s  # type: ignore[union-attr]
    assert high.energy_j - low.energy_j == pytest.approx(4.5 * parked_board_s)
    # all-on parks nothing: its bill does not see the parked draw
    specs = [BoardSpec(b.name, "toy", 100.0, 0.1) for b in BOARDS]
    bills = [
        run_fleet(
            AllOn(specs),
            BOARDS,
            MODELS["ecogd"],
            step_up(),
            parking("off", MODELS["ecogd"], Bill(off_w=w)),
            slo_s=0.25,
        ).energy_j
        for w in (0.5, 5.0)
    ]
    assert bills[0] == pytest.approx(bills[1])


def test_a_longer_wake_loses_more_requests_on_a_sudden_rise() -> None:
    rejected = [consolidation_run(Bill(wake_s=s)).rejected for s in (10.0, 60.0, 180.0)]
    assert 0 < rejected[0] < rejected[1] < rejected[2]
    # the one serving board is overloaded (180 req/s on 120 at most) until the second wakes
    assert rejected[2] == pytest.approx(180.0 * (1 - 100 / 180) * 180, rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ingress_w": -1.0}, "ingress host power must be >= 0 W"),
        ({"off_w": -0.5}, "powered-off board's draw"),
        ({"wake_s": 0.0}, "must be > 0 s"),
        ({"wake_s_by_kind": (("nano", 0.0),)}, r"\(nano\)"),
        ({"ingress_w": math.inf}, "ingress"),
    ],
)
def test_bad_bills_are_refused_with_what_to_do(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bill(**kwargs)  # type: ignore[arg-type]


def test_bill_options_parse_per_kind_and_name_typos() -> None:
    bill = make_bill(20.0, "1,nano:3", "orin:90")
    assert (bill.ingress_w, bill.off_w_of("orin"), bill.off_w_of("nano")) == (20.0, 1.0, 3.0)
    assert (bill.wake_s_of("orin"), bill.wake_s_of("nano")) == (90.0, 45.0)
    with pytest.raises(ValueError, match="--parked-w"):
        make_bill(None, "lots", None)
    with pytest.raises(ValueError, match="not in the fleet"):
        make_bill(None, None, "orni:90").check_kinds(["orin"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wake-s", "0"], "must be > 0 s"),
        (["--ingress-w", "-5"], "ingress host power"),
        (["--parked-w", "nano:x"], "--parked-w"),
        (["--wake-s", "orin:60"], "not in the fleet"),
        (["--ray-target", "none"], "--ray-target"),
        (["--parked-w", "nano:1,nano:2"], "given twice"),
        (["--parked-w", "1,2"], "two values for every kind"),
        (["--parked-w", ":1"], "names no kind"),
        (["--wake-s", ""], "is empty"),
    ],
)
def test_cli_refuses_a_bad_bill_before_measuring(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--fleet", "--boards", "nano:1", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ingress-w", "-5", "--boards", "orin:2"], "--boards, --ingress-w"),
        (["--parked-w", "foo:1"], "fleet-only option(s) without --fleet: --parked-w"),
        (["--fleet", "--boards", "nano:1", "--background", "builtin:digits-finetune"], "lends"),
    ],
)
def test_cli_refuses_fleet_options_where_they_would_be_ignored(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--trace", "poisson:20", "--duration", "1m", *argv]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_one_board_of_a_fleet_run_is_replayed_request_by_request() -> None:
    """A tiny fleet of Nanos: the woken board's requests through its own engine on its twin."""
    boards = [FleetBoard("nano-0", "nano"), FleetBoard("nano-1", "nano")]
    model = toy_model("nano")
    # 8 req/s, then 30: the second board is woken (capacities stated at 20 req/s)
    series = RateSeries("ramp", 1.0, np.concatenate([np.full(60, 8.0), np.full(60, 30.0)]))
    bill = Bill(wake_s=10.0)
    park = parking("off", {"nano": model}, bill)
    specs = [BoardSpec(b.name, "nano", 20.0, 0.1, 10.0) for b in boards]
    run = run_fleet(
        Consolidation(specs, park_after_s=0.0, period_s=5.0),
        boards,
        {"nano": model},
        series,
        park,
        slo_s=0.25,
    )
    assert (
        run.states is not None and (run.states[:, 1] == 2).any() and (run.states[:, 1] == 0).any()
    )
    settings = EngineSettings()
    for i, b in enumerate(boards):
        m = model_board(run, i, model, series, park)
        d = replay_board(run, i, b, series, park, settings, seed=1)
        assert d.offered == pytest.approx(
            m.offered, rel=0.1
        )  # binomial thinning of the same shares
        assert d.served == d.offered and np.isfinite(d.quantile_s(99)) and d.energy_j > 0
        assert d.arrivals_s is not None and d.arrivals_s.size == d.latencies_s.size
        whole = d.quantile_after_s(np.array([0.0]), 1e6, 99)
        assert whole == (pytest.approx(d.quantile_s(99)), d.offered)
    # the woken board is sent nothing while parked or booting
    woken = board_arrivals(run, 1, series, seed=1)
    first_serving = float(np.argmax(run.states[:, 1] == 0) * run.period_s)
    assert woken.size and woken.min() >= first_serving
    window = replay_board(run, 1, boards[1], series, park, settings, window_s=(60.0, 120.0))
    assert 0 < window.offered <= woken.size + 100
    with pytest.raises(ValueError, match="window"):
        replay_board(run, 1, boards[1], series, park, settings, window_s=(200.0, 300.0))


def test_a_percentile_among_the_rejected_is_never_answered() -> None:
    lat = np.full(97, 0.05)
    lost = DirectResult(1.0, 100, 97, lat, np.arange(97.0), np.array([200.0, 201.0, 202.0]))
    assert math.isinf(lost.quantile_s(99)) and lost.quantile_s(50) == pytest.approx(0.05)
    # only the requests after t=150 s: three, all rejected
    assert lost.quantile_after_s(np.array([150.0]), 100.0, 99) == (math.inf, 3)
    with pytest.raises(ValueError, match="arrival times"):
        DirectResult(1.0, 1, 1, np.array([0.1])).quantile_after_s(np.array([0.0]), 1.0, 99)


def _served_parked_woken(mode: str) -> tuple[FleetRun, RateSeries, Parking]:
    """One Orin sent 250 req/s for 180 s, parked 600 s, woken (5 s boot) and sent it again."""
    states = np.array([0] * 36 + [2] * 120 + [1] + [0] * 11, dtype=np.int8)[:, None]
    n = len(states)
    run = FleetRun(
        "consolidation", "ecogd", mode, 0.0, 0.0, 0.0, 0.0, np.zeros(1), 0.25, 5.0,
        np.ones(n), np.ones(n), 0.0, weights=(states == 0).astype(float), states=states,
    )  # fmt: skip
    park = Parking(mode, {"orin": 0.5}, {"orin": 5.0}, {"orin": 2.0})
    return run, RateSeries("flat", 1.0, np.full(n * 5, 250.0)), park


@pytest.mark.parametrize("seed", [0, 1])
def test_a_board_powered_off_resumes_its_tuning_at_the_wake(seed: int) -> None:
    """Its engine stops with it and a new one resumes the saved state at boot. An engine left
    running through the parked spell (the board at minimum clocks) sees one idle window; the
    capacity guard remembers the busy seconds' 250 req/s, so that window cannot take it to a
    batch size too small for the load it is sent again (before the guard counted busy
    seconds, it went to batch 1: seconds of queue and rejections)."""
    woke = np.array([156 * 5.0])
    run, series, park = _served_parked_woken("off")
    d = replay_board(run, 0, FleetBoard("o", "orin"), series, park, EngineSettings(), seed=seed)
    p99, n = d.quantile_after_s(woke, 20.0, 99)
    assert n > 3000 and p99 < 0.25  # 15 s served after a 5 s boot
    run, series, park = _served_parked_woken("min-clocks")
    d = replay_board(run, 0, FleetBoard("o", "orin"), series, park, EngineSettings(), seed=seed)
    p99, n = d.quantile_after_s(woke, 20.0, 99)
    assert n > 3000 and p99 < 0.25


def test_a_peer_state_is_a_tuned_engine_of_the_kind() -> None:
    settings = tuned_settings(EngineSettings(), 0.25)
    state = peer_state("nano", 15.0, settings, seconds=120.0)
    assert state["windows_closed"] > 0 and state["tuner"] == "ecogd" and state["baseline"]
    with pytest.raises(ValueError, match="rate"):
        peer_state("nano", 0.0, settings)
