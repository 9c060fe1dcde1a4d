"""Tiers in virtual time: the tier twins on the ordinary simulator, moved by ordinary tuners."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from ecoserve.core.assembly import EngineSettings, build_engine, build_space
from ecoserve.core.batching import Dispatch, WaitUntil
from ecoserve.core.controller import BatchOutcome
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import ApplyConfig, WindowClosed
from ecoserve.core.knobs import SPLIT, THRESHOLD, SearchSpace, batch_knob, split_knob
from ecoserve.core.link import Link, link_context, link_moved
from ecoserve.core.tiers import CascadeCosts, DevicePower, StageProfile, cascade_batch
from ecoserve.models.cascade import confidence
from ecoserve.models.digits import load_digits_model, load_digits_split
from ecoserve.replay.tiers import TIER_SETTINGS, DigitsSetup, compare_tiers, format_table
from ecoserve.sim.driver import simulate
from traces import load_trace
from tuners.cascade_threshold import CascadeThreshold, ThresholdChooser
from tuners.neurosurgeon import Neurosurgeon, SplitPlanner
from twins.link import EmulatedLink
from twins.tiers import CascadeSamples, CascadeTwin, SplitTwin

POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
#: fast, slow, fast again
SCHEDULE = "20mbit@0s,0.2mbit@20s,20mbit@40s"
COSTS = CascadeCosts(small_s=0.4e-3, big_s=0.03e-3, input_bytes=384, output_bytes=168)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_like_planner() -> SplitPlanner:
    """The digits large model's cut sizes; a device 20x slower than the next tier."""
    cut_bytes = (256, 8192, 8192, 2048, 4096, 1024, 512, 40)
    dev = (200e-6, 600e-6, 120e-6, 420e-6, 90e-6, 300e-6, 80e-6)  # 1.81 ms in all
    device = StageProfile(
        names=tuple(f"s{i}" for i in range(7)),
        times_s=dev,
        cut_bytes=cut_bytes,
        cut_shapes=tuple((b // 4,) for b in cut_bytes),
        cut_dtypes=("torch.float32",) * 8,
    )
    return SplitPlanner(device, device.scaled(20.0, tier="next"), POWER, overhead_bytes=128)


@pytest.fixture(scope="module")
def samples() -> CascadeSamples:
    split = load_digits_split()
    small, large = load_digits_model("small"), load_digits_model("large")
    with torch.inference_mode():
        scores, preds = confidence(small(split.x_test))
        big = large(split.x_test).argmax(dim=1)
    return CascadeSamples(
        scores.numpy().astype(np.float64), preds.numpy(), big.numpy(), split.y_test.numpy()
    )


def chooser() -> ThresholdChooser:
    """Baselines fixed on one reference link, so costs compare across links."""
    return ThresholdChooser(
        COSTS, POWER, accuracy_floor=0.97, error_weight=10.0, baseline_link=Link(20e6, 0.001)
    )


def split_baseline(planner: SplitPlanner) -> Baseline:
    local = planner.costs.figures(planner.n_stages, Link(1e6))
    return Baseline(local.energy_j, local.latency_s)


def fixed_split(twin: SplitTwin, k: int) -> dict:
    space = build_space(twin.knobs(), TIER_SETTINGS)
    config = space.with_value(space.maximum(), SPLIT, k)
    return {"tuner": "fixed", "tuner_params": {"config": list(config)}}


def test_fixed_split_matches_planner_figures_without_queueing() -> None:
    """One request per batch, far apart: each batch costs exactly what the planner prices."""
    planner = digits_like_planner()
    link = EmulatedLink.parse("5mbit", rtt_s=0.002)
    arrivals = np.arange(0.0, 5.0, 0.1)
    for k in range(planner.n_stages + 1):
        twin = SplitTwin(planner.costs, link, oracle=True)
        result = simulate(
            arrivals, twin, TIER_SETTINGS, baseline=split_baseline(planner), **fixed_split(twin, k)
        )
        row = planner.table(link.link_at(0.0))[k]
        np.testing.assert_allclose(result.latencies, row.latency_s, rtol=1e-9)
        assert result.active_energy_j == pytest.approx(len(arrivals) * row.energy_j, rel=1e-9)
        assert {b.knob for b in twin.log} == {float(k)}


def test_neurosurgeon_tuner_follows_the_bandwidth_schedule() -> None:
    planner = digits_like_planner()
    n = planner.n_stages
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    assert planner.best_split(link.link_at(0)) < n  # forwarding wins when fast
    assert planner.best_split(link.link_at(30)) == n  # local wins when slow
    arrivals = np.asarray(load_trace("poisson:50", duration="60s", seed=1).arrivals)

    def run(**kw) -> tuple[SplitTwin, np.ndarray]:
        twin = SplitTwin(planner.costs, link, oracle=kw.pop("oracle", False))
        r = simulate(arrivals, twin, TIER_SETTINGS, baseline=split_baseline(planner), **kw)
        return twin, r.completions - r.arrivals

    online, lat = run(tuner="neurosurgeon", tuner_params={"planner": planner})

    def mode(a: float, b: float) -> float:
        knobs = [x.knob for x in online.log if a <= x.start < b]
        return max(set(knobs), key=knobs.count)

    assert mode(5, 20) < n and mode(45, 60) < n
    assert mode(25, 40) == n
    slow_rows = [x for x in online.log if 25 <= x.start < 40]
    assert sum(x.forwarded for x in slow_rows) / len(slow_rows) < 0.05  # probes keep it fresh
    assert online.probes > 5
    # following the link beats both fixed ends over the whole schedule
    twin = SplitTwin(planner.costs, link)
    _, local = run(**fixed_split(twin, n))
    _, send = run(**fixed_split(twin, 0))
    assert np.nanmean(lat) < min(np.nanmean(local), np.nanmean(send))


def test_an_ordinary_tuner_moves_the_split_knob() -> None:
    """Grid search finds the split point from measured costs alone, with no profile.

    (EcoGD's ±1 steps stay at the local end here: an intermediate cut sends more bytes than
    either end, so the cost over split points has two valleys and no slope between them.)
    """
    planner = digits_like_planner()
    link = EmulatedLink.parse("20mbit", rtt_s=0.001)
    arrivals = np.asarray(load_trace("poisson:50", duration="60s", seed=3).arrivals)
    twin = SplitTwin(planner.costs, link)
    result = simulate(
        arrivals,
        twin,
        TIER_SETTINGS,
        baseline=split_baseline(planner),
        tuner="grid",
        tuner_params={"strides": [1, 1]},
    )
    assert len({b.knob for b in twin.log}) == planner.n_stages + 1  # it measured every one
    late = [b.knob for b in twin.log if b.start > 40]
    best = planner.best_split(link.link_at(0.0))
    assert max(set(late), key=late.count) == best  # and kept the planner's choice
    assert result.reports and all(r.values[SPLIT] in range(8) for r in result.reports)


def test_cascade_chooser_forwards_less_on_a_slow_link(samples: CascadeSamples) -> None:
    arrivals = np.asarray(load_trace("poisson:50", duration="60s", seed=2).arrivals)
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    settings = replace(TIER_SETTINGS, error_weight=10.0)
    base = cascade_batch(COSTS, POWER, Link(20e6, 0.001), 1, 1)
    helper = chooser()
    twin = CascadeTwin(COSTS, POWER, samples, link, chooser=helper)
    simulate(
        arrivals,
        twin,
        settings,
        baseline=Baseline(base[1], base[0]),
        tuner="cascade",
        tuner_params={"chooser": helper},
    )

    def forwarded(a: float, b: float) -> float:
        rows = [x for x in twin.log if a <= x.start < b]
        return sum(x.forwarded for x in rows) / sum(x.rows for x in rows)

    assert forwarded(25, 40) < forwarded(5, 20)
    slow = [x for x in twin.log if 25 <= x.start < 40]
    assert sum(x.correct for x in slow) / sum(x.rows for x in slow) >= 0.96
    assert helper.observations == sum(x.rows for x in twin.log)


def test_fixed_threshold_follows_the_rule(samples: CascadeSamples) -> None:
    link = EmulatedLink.parse("10mbit", rtt_s=0.001)
    arrivals = np.arange(len(samples)) * 0.01
    order = np.random.default_rng(3).permutation(len(samples))
    for t in (0.0, 0.9, 1.0):
        twin = CascadeTwin(COSTS, POWER, samples, link, seed=3)
        space = build_space(twin.knobs(), TIER_SETTINGS)
        index = space.knobs[space.axis(THRESHOLD)].index_of(t)
        config = list(space.with_value(space.maximum(), THRESHOLD, index))
        simulate(
            arrivals,
            twin,
            TIER_SETTINGS,
            baseline=Baseline(1.0, 1.0),
            tuner="fixed",
            tuner_params={"config": config},
        )
        want = np.ones(len(order), dtype=bool) if t == 1.0 else samples.scores[order] < t
        assert [bool(b.forwarded) for b in twin.log] == want.tolist()
        assert sum(b.sent_bytes for b in twin.log) == want.sum() * COSTS.input_bytes
        if t == 0.0:
            small_acc = np.mean(samples.small_preds == samples.labels)
            assert sum(b.correct for b in twin.log) / len(order) == pytest.approx(small_acc)


def test_compare_tiers_table(samples: CascadeSamples) -> None:
    planner = digits_like_planner()
    setup = DigitsSetup(planner, COSTS, samples, POWER, 0.9867, 0.97)
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    trace = load_trace("poisson:30", duration="60s", seed=0)
    rows = compare_tiers(trace, link, setup, thresholds=(0.0, 0.9, 1.0), tuners=())
    names = [r["policy"] for r in rows]
    assert names == [
        "split k=0",
        "split k=7",
        "split neurosurgeon",
        "cascade t=0",
        "cascade t=0.9",
        "cascade t=1",
        "cascade chooser",
    ]
    by = {r["policy"]: r for r in rows}
    assert by["split neurosurgeon"]["knob_by_segment"] == [0.0, 7.0, 0.0]
    assert by["split k=7"]["sent_kb"] == 0.0
    assert by["cascade t=1"]["forwarded"] == 1.0
    assert all(len(r["latency_ms_by_segment"]) == 3 for r in rows)
    table = format_table(rows, link)
    assert table.count("\n") == len(rows) + 1 and "20 / 0.2 / 20 Mbit/s" in table


def test_tier_tuners_need_their_helper_and_knob() -> None:
    planner = digits_like_planner()
    space = SearchSpace.of(split_knob(7))
    with pytest.raises(ValueError, match="tier setup"):
        Neurosurgeon(space)
    with pytest.raises(ValueError, match="split_point"):
        Neurosurgeon(SearchSpace.of(batch_knob(4)), planner=planner)
    tuner = Neurosurgeon(space, planner=planner, tolerance=0.2)
    assert tuner.ask() == (7,)  # all here until a link is known
    tuner.tell((7,), 1.0, link_context(Link(20e6, 0.001)))
    first = tuner.ask()
    assert first[0] < 7
    tuner.tell(first, 1.0, link_context(Link(21e6, 0.001)))  # within tolerance
    assert tuner.ask() == first and tuner.changes == 1
    tuner.tell(first, 1.0, link_context(Link(0.2e6, 0.001)))
    assert tuner.ask() == (7,) and tuner.changes == 2
    with pytest.raises(ValueError, match="tier setup"):
        CascadeThreshold(space)
    assert link_moved(None, Link(1e6), 0.1) and not link_moved(Link(1e6), Link(1.05e6), 0.1)
    # the engine closes a window early when the link estimate moves
    settings = EngineSettings(window_requests=1000, warmup_requests=0, window_seconds=None)
    engine = build_engine([split_knob(7)], settings, baseline=Baseline(1.0, 1.0))
    engine.start(0.0, 0.0)
    engine.arrive("request", 0.0)
    batch = engine.next(1.0, 0.0, lambda now: link_context(Link(20e6)))  # the timer ran out
    assert isinstance(batch, Dispatch)
    engine.batch_done(
        BatchOutcome(batch.config, [0.01], 0.01, 1.1, 0.01), lambda now: link_context(Link(19e6))
    )
    assert isinstance(engine.next(1.2, 0.01, lambda now: link_context(Link(19e6))), WaitUntil)
    closed = engine.next(1.3, 0.01, lambda now: link_context(Link(0.2e6)))
    assert isinstance(closed, WindowClosed) and closed.report.requests == 1
    assert isinstance(engine.next(1.3, 0.01), ApplyConfig)
