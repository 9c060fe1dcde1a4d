"""Several models on one board: the joint cost, per-model baselines and figures, assembly."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from ecoserve.core.assembly import EngineSettings, build_engine, build_space
from ecoserve.core.controller import DEFAULT_QUEUE, BatchOutcome, Controller, WindowReport
from ecoserve.core.cost import Baseline, CostModel, joint_cost
from ecoserve.core.engine import Engine, QueueSpec
from ecoserve.core.knobs import CPU, GPU, Config, Knob, SearchSpace, batch_knob
from ecoserve.core.tuner import Tuner
from ecoserve.sim.driver import Simulator
from tuners.ecogd import EcoGD
from tuners.ecogd.batch import BatchAxis
from twins.base import DeviceTwin


class Scripted(Tuner):
    """Asks one configuration for ever and records what it is told."""

    name = "scripted"

    def __init__(self, space: SearchSpace, config: Config) -> None:
        super().__init__(space)
        self.config = config
        self.told: list[tuple[Config, float]] = []

    def ask(self) -> Config:
        return self.config

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        self.told.append((config, cost))


SPACE = SearchSpace.of(Knob(CPU, (1.0, 2.0)), batch_knob(4, name="batch_size:a"))
LOW: Config = (0, 3)


def joint(
    *,
    baselines: Mapping[str, Baseline] | None = None,
    queue_costs: Mapping[str, CostModel] | None = None,
    accounting: str = "active",
    window: int = 8,
    queues: Sequence[str] = ("a", "b"),
) -> Controller:
    return Controller(
        SPACE,
        Scripted(SPACE, LOW),
        window_requests=window,
        warmup_requests=0,
        baseline_windows=1,
        accounting=accounting,
        queues=queues,
        queue_costs=queue_costs,
        baselines=baselines,
    )


def batch(
    ctrl: Controller, queue: str, n: int, latency: float, joules: float, end: float, meter: float
) -> WindowReport | None:
    outcome = BatchOutcome(ctrl.config, [latency] * n, joules, end, meter, queue=queue)
    return ctrl.on_batch(outcome)


def figures(baselines: Mapping[str, Baseline]) -> dict[str, tuple[float, float]]:
    """Each baseline's figures, rounded (they come out of sums of floats)."""
    return {
        q: (round(b.energy_per_request_j, 9), round(b.latency_s, 9)) for q, b in baselines.items()
    }


# -- the formula -------------------------------------------------------------------------------


def test_joint_cost_weights_each_model_by_its_requests_and_drops_idle_models() -> None:
    assert joint_cost([(1, 1.0), (3, 2.0)]) == pytest.approx(1.75)
    assert joint_cost([(2, 0.5), (0, 99.0)]) == 0.5  # no requests: no say
    assert joint_cost([(3, 0.1)]) == 0.1  # exactly one model's own cost
    assert math.isnan(joint_cost([(0, 1.0)]))
    with pytest.raises(ValueError, match="request count must be >= 0"):
        joint_cost([(-1, 1.0)])


# -- the controller ------------------------------------------------------------------------------


def test_each_model_has_its_own_baseline_measured_at_maximum() -> None:
    ctrl = joint()
    ctrl.start(0.0, 0.0)
    assert ctrl.config == SPACE.maximum() and not ctrl.ready
    batch(ctrl, "a", 2, 0.1, 2.0, 1.0, 2.0)  # a: 1 J and 0.1 s per request
    first = batch(ctrl, "b", 6, 0.4, 1.2, 2.0, 3.2)  # b: 0.2 J and 0.4 s per request
    assert first is not None and first.phase == "baseline" and ctrl.ready
    assert figures(ctrl.baselines) == {"a": (1.0, 0.1), "b": (0.2, 0.4)}
    assert set(first.per_model) == {"a", "b"} and first.per_model["a"].cost == 1.0
    # the whole board's pooled figures stay: 3.2 J over 8 requests
    assert ctrl.baseline is not None
    assert ctrl.baseline.energy_per_request_j == pytest.approx(0.4)
    assert ctrl.config == LOW


def test_the_window_cost_is_each_models_cost_on_its_own_baseline_weighted_by_requests() -> None:
    ctrl = joint(baselines={"a": Baseline(1.0, 0.1), "b": Baseline(0.2, 0.4)})
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 2, 0.2, 1.0, 1.0, 1.0)  # a: E 0.5 J (0.5x), L 0.2 s (2x) -> 1.25
    report = batch(ctrl, "b", 6, 0.2, 1.2, 2.0, 2.2)  # b: E 0.2 J (1x), L 0.2 s (0.5x) -> 0.75
    assert report is not None
    a, b = report.per_model["a"], report.per_model["b"]
    assert (a.requests, b.requests) == (2, 6)
    assert a.cost == pytest.approx(0.5 * 0.5 + 0.5 * 2.0)
    assert b.cost == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert report.cost == pytest.approx(2 / 8 * 1.25 + 6 / 8 * 0.75)
    assert a.energy_j == 1.0 and a.latency_p99_s == pytest.approx(0.2)
    assert report.energy_j == pytest.approx(2.2) and report.requests == 8  # pooled fields kept
    assert ctrl.tuner.told == [(LOW, report.cost)]  # type: ignore[attr-defined]
    dumped = report.as_dict()["per_model"]["b"]
    assert dumped["requests"] == 6 and dumped["cost"] == pytest.approx(0.75)


def test_a_model_without_requests_in_a_window_drops_out_of_its_cost() -> None:
    ctrl = joint(baselines={"a": Baseline(1.0, 0.1), "b": Baseline(0.2, 0.4)})
    ctrl.start(0.0, 0.0)
    report = batch(ctrl, "b", 8, 0.2, 1.6, 1.0, 1.6)
    assert report is not None and set(report.per_model) == {"b"}
    assert report.cost == report.per_model["b"].cost == pytest.approx(0.75)


def test_total_accounting_splits_the_idle_joules_by_request_share() -> None:
    ctrl = joint(
        baselines={"a": Baseline(1.0, 1.0, "total"), "b": Baseline(1.0, 1.0, "total")},
        accounting="total",
    )
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 2, 0.1, 2.0, 1.0, 2.0)
    # the meter also counted 4 J between batches: a gets 2/8 of them, b 6/8
    report = batch(ctrl, "b", 6, 0.1, 6.0, 2.0, 12.0)
    assert report is not None
    assert report.per_model["a"].energy_j == pytest.approx(2.0 + 4.0 * 2 / 8)
    assert report.per_model["b"].energy_j == pytest.approx(6.0 + 4.0 * 6 / 8)
    assert report.energy_j == pytest.approx(12.0)


def test_slo_mode_holds_each_model_to_its_own_latency_target() -> None:
    costs = {"a": CostModel(slo_latency_s=0.1), "b": CostModel(slo_latency_s=1.0)}
    ctrl = joint(baselines={"a": Baseline(1.0, 1.0), "b": Baseline(1.0, 1.0)}, queue_costs=costs)
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 4, 0.2, 2.0, 1.0, 2.0)  # a: 0.5 J/req, tail 0.2 s over its 0.1 s
    report = batch(ctrl, "b", 4, 0.2, 2.0, 2.0, 4.0)  # b: the same, well inside its 1 s
    assert report is not None
    assert report.per_model["a"].cost == pytest.approx(0.5 + 10.0 * (0.2 / 0.1 - 1.0))
    assert report.per_model["b"].cost == pytest.approx(0.5)


def test_a_model_with_no_baseline_is_left_out_until_one_is_measured() -> None:
    ctrl = joint()
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 8, 0.1, 8.0, 1.0, 8.0)  # b sends nothing while the baseline is measured
    assert ctrl.ready and set(ctrl.baselines) == {"a"}
    batch(ctrl, "a", 4, 0.1, 2.0, 2.0, 10.0)  # a: 0.5 J/req -> 0.75
    report = batch(ctrl, "b", 4, 5.0, 50.0, 3.0, 60.0)
    assert report is not None and report.per_model["b"].cost is None
    assert report.cost == pytest.approx(0.75)  # b's slow requests are not scored
    ctrl.remeasure_baseline(3.0, 60.0)
    batch(ctrl, "b", 8, 0.5, 8.0, 4.0, 68.0)
    assert figures(ctrl.baselines) == {"a": (1.0, 0.1), "b": (1.0, 0.5)}  # a's kept


def test_the_per_model_baselines_are_saved_and_resumed() -> None:
    ctrl = joint(baselines={"a": Baseline(1.0, 0.1), "b": Baseline(0.2, 0.4)})
    state = ctrl.state_dict()
    assert state["baselines"]["b"] == {
        "energy_per_request_j": 0.2,
        "latency_s": 0.4,
        "accounting": "active",
    }
    again = joint()
    restored, problems = again.load_state_dict(state)
    assert "baseline" in restored and not problems
    assert again.baselines == ctrl.baselines and again.ready
    partial = {**state, "baselines": {"a": state["baselines"]["a"]}}
    fresh = joint()
    restored, problems = fresh.load_state_dict(partial)
    assert "baseline" not in restored and not fresh.ready
    assert any("no saved baseline for models ['b']" in p for p in problems)


def test_bad_joint_settings_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="distinct"):
        joint(queues=("a", "a"))
    with pytest.raises(ValueError, match=r"baselines for unknown queues \['c'\]"):
        joint(baselines={"c": Baseline(1.0, 1.0)})
    with pytest.raises(ValueError, match="accounting"):
        joint(baselines={"a": Baseline(1.0, 1.0, "total")})
    with pytest.raises(ValueError, match="need the queues"):
        Controller(SPACE, Scripted(SPACE, LOW), baselines={"a": Baseline(1.0, 1.0)})
    ctrl = joint()
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 1, 0.1, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no queue named 'zz'"):
        batch(ctrl, "zz", 1, 0.1, 1.0, 2.0, 2.0)


# -- the engine and its assembly ---------------------------------------------------------------


def test_build_engine_gives_each_model_its_batch_knob_bounds_and_target() -> None:
    settings = EngineSettings(max_batch=16, slo_latency_s=0.5)
    queues = [
        QueueSpec.for_model("cnn", max_batch=8),
        QueueSpec.for_model("bert", min_batch=2, slo_latency_s=0.1),
    ]
    engine = build_engine([Knob(CPU, (1e9, 2e9))], settings, queues=queues)
    space = engine.space
    assert space.names == (CPU, "batch_size:cnn", "batch_size:bert")
    assert space.knobs[1].values == tuple(range(1, 9))
    assert space.knobs[2].values == tuple(range(2, 17))
    assert engine.queue_names == ("cnn", "bert")
    engine.start(0.0, 0.0)
    assert (engine.batch_size("cnn"), engine.batch_size("bert")) == (8, 16)
    assert engine.phase == "baseline"
    known = {"cnn": Baseline(1.0, 0.1), "bert": Baseline(2.0, 0.2)}
    ready = build_engine([Knob(CPU, (1e9, 2e9))], settings, queues=queues, baselines=known)
    assert ready.ready and ready.baselines == known


def test_assembly_refuses_what_cannot_work() -> None:
    settings = EngineSettings()
    with pytest.raises(ValueError, match="used twice"):
        build_space([Knob("batch_size:a", (1,))], settings, [QueueSpec.for_model("a")])
    with pytest.raises(ValueError, match="at least one"):
        build_space([], settings, [])
    with pytest.raises(ValueError, match="min_batch"):
        QueueSpec.for_model("a", min_batch=4, max_batch=2)
    with pytest.raises(ValueError, match="slo_latency_s"):
        QueueSpec.for_model("a", slo_latency_s=0.0)
    with pytest.raises(ValueError, match="per model"):
        build_engine([], settings, baselines={"a": Baseline(1.0, 1.0)})


def test_the_engine_and_its_controller_must_score_the_same_queues() -> None:
    ctrl = joint()
    with pytest.raises(ValueError, match="scores queues"):
        Engine(ctrl, queues=(QueueSpec("a", "batch_size:a"), QueueSpec("c", "batch_size:c")))
    with pytest.raises(ValueError, match=r"batch knobs \['batch_size:b'\] are not in"):
        Engine(ctrl, queues=(QueueSpec("a", "batch_size:a"), QueueSpec("b", "batch_size:b")))


def test_a_batch_outcome_is_the_default_queues_unless_told() -> None:
    assert BatchOutcome((), [0.1], 1.0, 1.0, 1.0).queue == DEFAULT_QUEUE == "default"


class Line(DeviceTwin):
    """A noise-free board with one clock."""

    def knobs(self) -> list[Knob]:
        return [Knob(CPU, (1e9, 2e9)), Knob(GPU, (1e8, 2e8))]

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return (0.004 + 0.003 * batch) * 2e9 / freqs[CPU] * (2e8 / freqs[GPU]) ** 0.5

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return 1.0 + busy * (freqs[CPU] / 1e9 + freqs[GPU] / 1e8)


def test_one_model_scored_as_a_joint_queue_replays_exactly_as_before() -> None:
    """The joint path with one queue reduces to the one-model cost, bit for bit."""
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1 / 40.0, 6000))
    settings = EngineSettings(max_batch=6, window_requests=100, warmup_requests=20)
    twin = Line()
    runs: list[Any] = []
    for queues in (None, [QueueSpec()]):
        for accounting in ("active", "total"):
            s = EngineSettings(**{**vars(settings), "accounting": accounting})
            engine = build_engine(twin.knobs(), s, queues=queues)
            runs.append(Simulator(twin, engine).run(arrivals))
    for old, new in ((runs[0], runs[2]), (runs[1], runs[3])):
        assert len(old.reports) == len(new.reports) > 10
        assert [r.cost for r in old.reports] == [r.cost for r in new.reports]
        assert [r.config for r in old.reports] == [r.config for r in new.reports]
        assert not old.reports[-1].per_model and set(new.reports[-1].per_model) == {"default"}


# -- EcoGD on several batch knobs ----------------------------------------------------------------


def test_ecogd_batch_strategies_take_one_models_knob_and_stand_by_with_several() -> None:
    clocks = (Knob(CPU, (1.0, 2.0, 3.0)), Knob(GPU, (1.0, 2.0)))
    one = SearchSpace(clocks + (batch_knob(8, name="batch_size:cnn"),))
    axis = BatchAxis.of(one)
    assert axis is not None and axis.axis == 2 and axis.top == 7
    assert BatchAxis.of(SearchSpace(clocks + (batch_knob(8),))) is not None
    several = SearchSpace(
        clocks + (batch_knob(8, name="batch_size:a"), batch_knob(4, name="batch_size:b"))
    )
    assert BatchAxis.of(several) is None
    tuner = EcoGD(several, seed=1)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):  # a bowl with its floor inside: the climber walks every knob
        config = tuner.ask()
        assert several.contains(config)
        seen.add(config)
        cost = sum((i - 1) ** 2 for i in config) + rng.normal(0, 0.01)
        tuner.tell(config, float(cost), {"arrival_rate": 10.0})
    assert tuner.centre == (1, 1, 1, 1)
    assert {c[3] for c in seen} >= {1, 2, 3}


def test_ecogd_scans_each_models_batch_size_in_turn_before_it_climbs() -> None:
    clocks = (Knob(CPU, (1.0, 2.0, 3.0)), Knob(GPU, (1.0, 2.0)))
    space = SearchSpace(
        clocks + (batch_knob(8, name="batch_size:a"), batch_knob(4, name="batch_size:b"))
    )
    best = (1, 1, 2, 1)

    def cost(config: Config) -> float:
        return 1.0 + sum(0.05 * (i - b) ** 2 for i, b in zip(config, best, strict=True))

    tuner = EcoGD(space, seed=0)
    asked = []
    while True:
        config = tuner.ask()
        if tuner.phase() != "scan":
            break
        asked.append(config)
        if len(asked) == 3:  # a restart in the middle of the scans picks up where it was
            again = EcoGD(space, seed=0)
            again.load_state_dict(tuner.state_dict())
            assert again.ask() == config and again.phase() == "scan"
        tuner.tell(config, cost(config), {"arrival_rate": 10.0})
    assert len(asked) == len(set(asked))  # no size measured twice
    a_scan = [c for c in asked if c[3] == 3]
    b_scan = [c for c in asked if c[3] != 3]
    assert asked == a_scan + b_scan  # model a's sizes first, at the clocks in force
    assert all(c[:2] == (2, 1) for c in asked)
    assert len({c[2] for c in a_scan}) >= 3 and all(c[2] == 2 for c in b_scan)
    assert tuner.centre == (2, 1, 2, 1)  # each model's cheapest size; the climb follows
    assert config == (1, 1, 2, 1) and tuner.phase() == "climb"


def test_the_slo_cost_works_element_wise_for_the_oracles() -> None:
    model = CostModel(slo_latency_s=0.1)
    costs = model.cost(np.array([0.5, 0.5]), np.array([0.05, 0.05]), Baseline(1.0, 1.0))
    assert costs == pytest.approx([0.5, 0.5])
    tails = np.array([0.05, 0.2])
    over = model.cost(np.array([0.5, 0.5]), tails, Baseline(1.0, 1.0), tails)
    assert over == pytest.approx([0.5, 0.5 + 10.0])


def test_a_models_scan_reads_its_own_cost_not_the_traffic_mix() -> None:
    """The joint cost of a window follows its mix of models; the scan of model a's batch
    size follows a's own cost (and measures again a window in which a served nothing)."""
    space = SearchSpace(
        (
            Knob(CPU, (1.0, 2.0)),
            batch_knob(8, name="batch_size:a"),
            batch_knob(8, name="batch_size:b"),
        )
    )
    tuner = EcoGD(space, seed=0)
    told = []
    while True:
        config = tuner.ask()
        if tuner.phase() != "scan" or config[2] != 7:
            break
        own = 1.0 + 0.1 * abs(config[1] - 2)  # a is cheapest at index 2 (batch 3)
        # the mix: a window at a's best size happens to hold mostly b's costly requests
        joint_here = 5.0 if config[1] == 2 else own
        metrics = {"requests:a": 10.0, "requests:b": 10.0, "cost:a": own, "cost:b": 1.0}
        if len(told) == 1:  # a served nothing in this window: no figure for it
            metrics = {"requests:b": 10.0, "cost:b": 1.0}
        told.append(config)
        tuner.tell(config, joint_here, metrics)
    assert tuner.centre[1] == 2  # a's own cheapest size, though its windows' joint cost was high
    assert told[1] == told[2]  # the window without a's requests was measured again


def test_the_tuner_is_told_each_models_own_cost_and_requests() -> None:
    ctrl = joint(baselines={"a": Baseline(1.0, 0.1), "b": Baseline(0.2, 0.4)})
    ctrl.start(0.0, 0.0)
    batch(ctrl, "a", 2, 0.2, 1.0, 1.0, 1.0)
    batch(ctrl, "b", 6, 0.2, 1.2, 2.0, 2.2)
    seen: dict[str, float] = {}
    tuner = ctrl.tuner
    assert isinstance(tuner, Scripted)
    original = tuner.tell

    def spy(config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        seen.update(metrics or {})
        original(config, cost, metrics)

    tuner.tell = spy  # type: ignore[method-assign]
    batch(ctrl, "a", 8, 0.2, 4.0, 3.0, 6.2)
    assert seen["requests:a"] == 8.0 and "requests:b" not in seen
    assert seen["cost:a"] == pytest.approx(0.5 * 0.5 + 0.5 * 2.0)
