"""The tiers simulator: split point and threshold against a bandwidth schedule, in virtual time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ecoserve.models.digits import load_digits_model, load_digits_split
from ecoserve.tiers.cascade import CascadeCosts, ThresholdChooser
from ecoserve.tiers.link import EmulatedLink, Link
from ecoserve.tiers.node import ArrivalRate, SplitChoice, ThresholdChoice, link_moved
from ecoserve.tiers.replay import compare_tiers, format_table
from ecoserve.tiers.sim import CascadeData, simulate_cascade, simulate_split
from ecoserve.tiers.split import DevicePower, SplitPlanner
from ecoserve.tiers.stages import StageProfile
from traces import load_trace

POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
#: fast, slow, fast again
SCHEDULE = "20mbit@0s,0.2mbit@20s,20mbit@40s"


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
def cascade_data() -> CascadeData:
    split = load_digits_split()
    small, large = load_digits_model("small"), load_digits_model("large")
    return CascadeData.from_models(small, large, split.x_test, split.y_test)


COSTS = CascadeCosts(small_s=0.4e-3, big_s=0.03e-3, input_bytes=384, output_bytes=168)


def chooser() -> ThresholdChooser:
    """Baselines fixed on one reference link, so costs compare across links."""
    return ThresholdChooser(
        COSTS, POWER, accuracy_floor=0.97, error_weight=10.0, baseline_link=Link(20e6, 0.001)
    )


def test_fixed_split_matches_planner_figures_without_queueing() -> None:
    planner = digits_like_planner()
    link = EmulatedLink.parse("5mbit", rtt_s=0.002)
    arrivals = np.arange(0.0, 5.0, 0.1)  # far apart: no queue anywhere
    for k in range(planner.n_stages + 1):
        result = simulate_split(planner, link, arrivals, k, oracle=True)
        row = planner.table(link.link_at(0.0))[k]
        np.testing.assert_allclose(result.latency_s, row.latency_s, rtol=1e-9)
        np.testing.assert_allclose(result.energy_j, row.energy_j, rtol=1e-9)
        assert result.knob_changes == 0 and set(result.knob) == {k}


def test_split_point_follows_bandwidth_schedule() -> None:
    planner = digits_like_planner()
    n = planner.n_stages
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    assert planner.best_split(link.link_at(0)) < n  # forwarding wins when fast
    assert planner.best_split(link.link_at(30)) == n  # local wins when slow
    trace = load_trace("poisson:50", duration="60s", seed=1)
    online = simulate_split(planner, link, trace)
    fast1, slow, fast2 = (online.summary(a, b) for a, b in ((2, 20), (22, 40), (45, 60)))
    assert fast1["knob_mode"] < n and fast2["knob_mode"] < n
    assert slow["knob_mode"] == n
    assert slow["forwarded"] < 0.02  # probes, not requests, keep the estimate fresh
    assert online.probes > 5 and online.knob_changes >= 2
    # following the link beats both fixed ends over the whole schedule
    local = simulate_split(planner, link, trace, n).summary()
    send = simulate_split(planner, link, trace, 0).summary()
    assert online.summary()["latency_mean_s"] < min(local["latency_mean_s"], send["latency_mean_s"])
    # the true link changes the split at once; the estimate after at most a probe or two
    oracle = simulate_split(planner, link, trace, oracle=True)
    assert oracle.summary(20, 40)["knob_mode"] == n
    assert oracle.summary(20, 40)["forwarded"] == 0.0


def test_threshold_chooser_forwards_less_on_slow_link(cascade_data: CascadeData) -> None:
    trace = load_trace("poisson:50", duration="60s", seed=2)
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    result = simulate_cascade(COSTS, POWER, cascade_data, link, trace, chooser())
    fast = result.summary(5, 20)
    slow = result.summary(25, 40)
    assert slow["forwarded"] < fast["forwarded"]
    assert slow["knob_mode"] < fast["knob_mode"]
    assert slow["accuracy"] >= 0.96
    # on constant links: the slower, the less forwarded
    fractions = []
    for spec in ("0.2mbit", "2mbit", "20mbit"):
        steady = EmulatedLink.parse(spec, rtt_s=0.001)
        r = simulate_cascade(COSTS, POWER, cascade_data, steady, trace, chooser())
        fractions.append(r.summary(10, None)["forwarded"])
    assert fractions[0] < fractions[2] and fractions[0] <= fractions[1] <= fractions[2]


def test_fixed_threshold_follows_the_rule(cascade_data: CascadeData) -> None:
    link = EmulatedLink.parse("10mbit", rtt_s=0.001)
    arrivals = np.arange(len(cascade_data)) * 0.01
    probs = torch.softmax(cascade_data.small_logits, dim=1).max(dim=1).values.numpy()
    for t in (0.0, 0.9, 1.0):
        r = simulate_cascade(COSTS, POWER, cascade_data, link, arrivals, t, seed=3)
        order = np.random.default_rng(3).permutation(len(cascade_data))
        want = np.ones(len(order), dtype=bool) if t == 1.0 else probs[order] < t
        assert np.array_equal(r.forwarded, want)
        assert r.sent_bytes.sum() == want.sum() * COSTS.input_bytes
    small_acc = np.mean(cascade_data.small_logits.argmax(1).numpy() == cascade_data.labels)
    r0 = simulate_cascade(COSTS, POWER, cascade_data, link, arrivals, 0.0)
    assert r0.summary()["accuracy"] == pytest.approx(small_acc)


def test_compare_tiers_table(cascade_data: CascadeData) -> None:
    planner = digits_like_planner()
    link = EmulatedLink.parse(SCHEDULE, rtt_s=0.001)
    trace = load_trace("poisson:30", duration="60s", seed=0)
    rows = compare_tiers(
        trace,
        link,
        planner=planner,
        accuracy=0.9867,
        costs=COSTS,
        data=cascade_data,
        thresholds=(0.0, 0.9, 1.0),
        chooser=chooser,
    )
    names = [r["policy"] for r in rows]
    assert names == [
        "split k=0",
        "split k=7",
        "split online (planner)",
        "cascade t=0",
        "cascade t=0.9",
        "cascade t=1",
        "cascade online (chooser)",
    ]
    by = {r["policy"]: r for r in rows}
    assert by["split online (planner)"]["knob_by_segment"] == [0.0, 7.0, 0.0]
    assert by["split k=7"]["sent_kb"] == 0.0
    assert by["cascade t=1"]["forwarded"] == 1.0
    assert all(len(r["latency_ms_by_segment"]) == 3 for r in rows)
    table = format_table(rows, link)
    assert table.count("\n") == len(rows) + 1 and "20 / 0.2 / 20 Mbit/s" in table


def test_knob_helpers() -> None:
    planner = digits_like_planner()
    choice = SplitChoice(planner, tolerance=0.2)
    assert choice.update(Link(20e6, 0.001), 0.0) < 7
    first = choice.split
    assert choice.update(Link(21e6, 0.001), 1.0) == first  # within tolerance: not re-planned
    assert choice.update(Link(0.2e6, 0.001), 2.0) == 7
    assert choice.changes == 1 and [h[1] for h in choice.history] == [first, 7]
    choice.pin(3)
    assert choice.update(Link(0.2e6, 0.001)) == 3
    with pytest.raises(ValueError):
        choice.pin(8)
    assert link_moved(None, Link(1e6), 0.1) and not link_moved(Link(1e6), Link(1.05e6), 0.1)
    fixed = ThresholdChoice(None, 0.8)
    assert fixed.update(Link(1e6)) == 0.8
    rate = ArrivalRate(window_s=1.0)
    for t in np.arange(0, 3, 0.1):
        rate.observe(float(t))
    assert rate.rate(2.9) == pytest.approx(10.0, rel=0.15)
