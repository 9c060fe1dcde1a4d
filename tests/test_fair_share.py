"""Fair-share admission: work-conserving below saturation, shares by weight when saturated,
a reserve for tenants within their share, rate limits; and, in virtual time, that a burst
of one tenant leaves another's latency and acceptance alone."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest

from ecoserve.core.batching import BatchPolicy, Dispatch, WaitUntil
from ecoserve.core.fair_share import (
    MAX_SHARE_RETRY_S,
    MIN_SHARE_RETRY_S,
    Decision,
    FairShare,
    Limits,
    water_fill,
)


def two(capacity: int = 8, throughput: float = 10.0, **kw: float) -> FairShare:
    return FairShare({"a": Limits(), "b": Limits()}, capacity, throughput, **kw)


def offer(fs: FairShare, name: str, rate: float, start: float, end: float) -> list[Decision]:
    """Requests of ``name`` evenly spaced at ``rate`` from ``start`` to ``end``."""
    count = round((end - start) * rate)
    return [fs.admit(name, start + i / rate) for i in range(count)]


# --- the rule, step by step -------------------------------------------------------------


def test_water_fill_gives_small_demands_in_full_and_splits_the_rest_by_weight() -> None:
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    fair = water_fill({"a": 5.0, "b": 100.0, "c": 100.0}, weights, 65.0)
    assert fair == pytest.approx({"a": 5.0, "b": 20.0, "c": 40.0})
    assert water_fill({"a": 5.0, "b": 7.0, "c": 1.0}, weights, 65.0) == {"a": 5, "b": 7, "c": 1}
    assert water_fill({"a": 0.0}, {"a": 1.0}, 10.0) == {"a": 0.0}


def test_below_saturation_a_tenant_fills_the_board_up_to_its_burst_cap() -> None:
    fs = two(capacity=8, throughput=100.0)  # pool 2; alone, a's part of C is all 8
    assert (fs.capacity, fs.pool, fs.throughput) == (8, 2, 100.0)
    decisions = offer(fs, "a", 100.0, 0.0, 0.09)  # 9 requests: a modest rate, not a flood
    assert [d.admitted for d in decisions] == [True] * 8 + [False]
    assert decisions[-1].reason == "share"
    assert MIN_SHARE_RETRY_S <= decisions[-1].retry_after_s <= MAX_SHARE_RETRY_S
    fs.release("a")
    assert fs.admit("a", 0.1).admitted


def test_a_tenant_alone_past_its_share_may_fill_the_whole_capacity() -> None:
    fs = two(capacity=8, throughput=10.0)  # the board finishes 10 a second; pool 2
    admitted = [d.admitted for d in offer(fs, "a", 40.0, 0.0, 1.0)]
    # nobody else is active: no one's latency to keep the reserve for
    assert admitted[:8] == [True] * 8 and not any(admitted[8:])
    assert fs.in_system("a") == 8


def test_a_tenant_past_its_share_is_held_to_the_pool_and_the_reserve_stays_free() -> None:
    fs = two(capacity=8, throughput=10.0)  # the board finishes 10 a second; pool 2
    admitted = []
    for i in range(40):  # a offers 40 a second for a second
        if i % 10 == 0:  # while b is active all along, far within its share
            assert fs.admit("b", i / 40.0).admitted
            fs.release("b")
        admitted.append(fs.admit("a", i / 40.0).admitted)
    known = admitted.index(False)  # a flood is known as one within a few requests
    assert 3 <= known <= 8 and not any(admitted[known:])
    assert fs.demand("a", 1.0) == pytest.approx(40.0, rel=0.15)
    for _ in range(known):
        fs.release("a")
    # past its share: held to the pool
    assert [fs.admit("a", 1.0).admitted for _ in range(3)] == [True, True, False]
    # b sends within its share: admitted beyond the pool, up to its half of C
    assert [fs.admit("b", 1.0 + i / 10).admitted for i in range(5)] == [True] * 4 + [False]
    assert (fs.in_system("a"), fs.in_system("b"), fs.in_system()) == (2, 4, 6)
    fs.release("a")
    # what b holds counts against a's pool: 4 of 2 leave a nothing
    refused = fs.admit("a", 1.5)
    assert (refused.admitted, refused.reason) == (False, "share")
    assert fs.fair_rates(1.5)["a"] == pytest.approx(10.0 - fs.fair_rates(1.5)["b"])


def test_tenants_past_their_share_split_the_capacity_by_weight() -> None:
    fs = FairShare({"a": Limits(weight=3), "b": Limits(weight=1)}, 40, 10.0)  # pool 10
    for i in range(60):  # both flood, far past the 10 a second the board finishes
        for name in ("a", "b"):
            fs.admit(name, i / 30)
            if fs.in_system(name):
                fs.release(name)
    assert fs.in_system() == 0
    a = sum(fs.admit("a", 2.0).admitted for _ in range(40))
    b = sum(fs.admit("b", 2.0).admitted for _ in range(40))
    # both past their share, nobody within it to keep the reserve for: 3:1 of all of C
    assert (a, b) == (30, 10)


def test_a_within_share_tenant_is_not_refused_however_hard_the_other_pushes() -> None:
    fs = two(capacity=48, throughput=600.0)
    refused = Counter[str]()
    for step in range(3000):  # a: 10 requests a ms, b: one every 10 ms
        t = step * 0.001
        for _ in range(10):
            refused["a"] += not fs.admit("a", t).admitted
        if step % 10 == 0:
            refused["b"] += not fs.admit("b", t).admitted
        if fs.in_system("b"):
            fs.release("b")
        if fs.in_system("a") and step % 2 == 0:  # the board finishes a's at 500 a second
            fs.release("a")
    assert refused["b"] == 0
    assert refused["a"] > 0.9 * 30000 - 1500


def test_bad_input_says_what_is_wrong() -> None:
    fs = two()
    with pytest.raises(ValueError, match="no request in the system"):
        fs.release("a")
    with pytest.raises(ValueError, match=r"unknown tenant 'c'.*\['a', 'b'\]"):
        fs.admit("c", 0.0)
    with pytest.raises(ValueError, match="finite time"):
        fs.admit("a", math.nan)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="capacity must be a whole number"):
            fs.set_capacity(bad, 10.0)  # type: ignore[arg-type]
    for nonsense in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="throughput must be requests per second"):
            fs.set_capacity(8, nonsense)
    with pytest.raises(ValueError, match="no tenants"):
        FairShare({}, 8, 10.0)
    with pytest.raises(ValueError, match="reserve"):
        FairShare({"a": Limits()}, 8, 10.0, reserve=1.0)
    with pytest.raises(ValueError, match="window_s"):
        FairShare({"a": Limits()}, 8, 10.0, window_s=0)
    with pytest.raises(ValueError, match="sigmas"):
        FairShare({"a": Limits()}, 8, 10.0, sigmas=-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": 0}, "weight must be a number > 0"),
        ({"weight": -1.0}, "weight must be a number > 0"),
        ({"weight": math.inf}, "weight must be a number > 0"),
        ({"rate": 0}, "rate must be requests per second > 0"),
        ({"burst": 5}, "burst needs a rate"),
        ({"rate": 10, "burst": 0.5}, "burst must be a number of requests >= 1"),
    ],
)
def test_limits_refuse_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)


def test_set_capacity_moves_the_pool_and_keeps_what_was_admitted() -> None:
    fs = FairShare({"a": Limits()}, 40, 1000.0)
    assert fs.pool == 10
    assert all(d.admitted for d in offer(fs, "a", 100.0, 0.0, 0.2))
    fs.set_capacity(8, 1000.0)
    assert (fs.pool, fs.in_system("a")) == (2, 20)
    assert not fs.admit("a", 0.2).admitted
    fs.set_capacity(80, 1000.0)
    assert fs.pool == 20 and fs.admit("a", 0.2).admitted
    assert FairShare({"a": Limits()}, 1, 1.0).pool == 1  # never a pool of nothing


# --- rate limits ------------------------------------------------------------------------


def test_rate_limit_refuses_with_the_time_until_the_next_token() -> None:
    fs = FairShare({"a": Limits(rate=10, burst=2)}, 1000, 1000.0)
    assert fs.admit("a", 0.0).admitted and fs.admit("a", 0.0).admitted  # the burst
    refused = fs.admit("a", 0.0)
    assert (refused.admitted, refused.reason) == (False, "rate")
    assert refused.retry_after_s == pytest.approx(0.1)
    later = fs.admit("a", 0.04)
    assert later.reason == "rate" and later.retry_after_s == pytest.approx(0.06)
    assert fs.admit("a", 0.1).admitted  # exactly when it said: refusals spent no token
    assert fs.admit("a", 0.15).retry_after_s == pytest.approx(0.05)
    assert fs.admit("a", 10.0).admitted and fs.admit("a", 10.0).admitted  # refilled to 2,
    assert not fs.admit("a", 10.0).admitted  # not beyond


def test_rate_limit_default_burst_is_a_second_and_a_clock_stepping_back_adds_nothing() -> None:
    fs = FairShare({"a": Limits(rate=5)}, 1000, 1000.0)
    assert sum(fs.admit("a", 1.0).admitted for _ in range(8)) == 5
    assert not fs.admit("a", 0.0).admitted  # earlier time: no refill, no crash
    assert fs.admit("a", 1.2).admitted


def test_a_share_refusal_spends_no_token() -> None:
    fs = FairShare({"a": Limits(rate=100, burst=3)}, 1, 1000.0)  # room for one request
    assert fs.admit("a", 0.0).admitted
    assert fs.admit("a", 0.0).reason == "share"
    fs.release("a")
    assert fs.admit("a", 0.0).admitted and fs.admit("a", 0.0).reason == "share"
    fs.release("a")
    assert fs.admit("a", 0.0).admitted  # the third token, still there
    fs.release("a")
    assert fs.admit("a", 0.0).reason == "rate"


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.004, "1"), (1.0, "1"), (2.01, "3")])
def test_retry_after_header_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert Decision(False, "rate", wait).retry_after_header == header


# --- a virtual-time board: two tenants, one FIFO queue, one batch at a time ------------

BATCH = 8
MAX_WAIT = 0.05  # the engine's default batching timer


def batch_time(n: int) -> float:
    """20 ms a batch plus 2.5 ms a request: 200 requests a second at full batches."""
    return 0.020 + 0.0025 * n


@dataclass
class Outcome:
    latency: dict[str, list[float]] = field(default_factory=dict)
    refused: dict[str, Counter[str]] = field(default_factory=dict)

    def p99(self, name: str) -> float:
        return float(np.percentile(self.latency[name], 99))

    def served_rate(self, name: str, horizon: float) -> float:
        return len(self.latency[name]) / horizon


def poisson(rate: float, start: float, horizon: float, seed: int, name: str) -> list[float]:
    """A tenant's arrivals: its own stream, the same whoever else is simulated."""
    rng = np.random.default_rng([seed, *name.encode()])
    gaps = rng.exponential(1 / rate, size=int(rate * (horizon - start) * 1.5) + 20)
    times = start + np.cumsum(gaps)
    return [float(t) for t in times[times < horizon]]


def simulate(
    rates: Mapping[str, float],
    horizon: float = 20.0,
    seed: int = 0,
    capacity: int = 6 * BATCH,
    weights: Mapping[str, float] | None = None,
    starts: Mapping[str, float] | None = None,
) -> Outcome:
    """Arrivals → admission → the engine's batching rule → a board running one batch at a time."""
    limits = {n: Limits(weight=(weights or {}).get(n, 1.0)) for n in rates}
    fs = FairShare(limits, capacity, BATCH / batch_time(BATCH))
    queue: BatchPolicy[tuple[str, float]] = BatchPolicy(batch_size=BATCH, max_wait=MAX_WAIT)
    arrivals = sorted(
        (t, n)
        for n, r in rates.items()
        for t in poisson(r, (starts or {}).get(n, 0.0), horizon, seed, n)
    )
    out = Outcome({n: [] for n in rates}, {n: Counter() for n in rates})
    running: list[tuple[str, float]] = []
    done_at = math.inf
    now, i = 0.0, 0
    while i < len(arrivals) or running or len(queue):
        if not running:
            step = queue.poll(now)
            if isinstance(step, Dispatch):
                running, done_at = step.items, now + batch_time(len(step.items))
                continue
            wake = step.deadline if isinstance(step, WaitUntil) else math.inf
        else:
            wake = done_at
        arrival = arrivals[i][0] if i < len(arrivals) else math.inf
        if wake <= arrival:  # a batch finishes (or the timer fires) first
            now = wake
            if running:
                for name, at in running:
                    out.latency[name].append(now - at)
                    fs.release(name)
                running, done_at = [], math.inf
            continue
        now, name = arrivals[i]
        i += 1
        decision = fs.admit(name, now)
        if decision.admitted:
            queue.add((name, now), now)
        else:
            assert decision.reason is not None
            out.refused[name][decision.reason] += 1
    return out


def test_below_saturation_nobody_is_refused() -> None:
    both = simulate({"a": 70, "b": 70}, horizon=10.0)
    assert both.refused == {"a": Counter(), "b": Counter()}
    assert len(both.latency["a"]) > 600 and len(both.latency["b"]) > 600


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("a_starts", [0.0, 5.0])
@pytest.mark.parametrize("b_rate", [50.0, 80.0])
def test_a_burst_at_five_times_its_share_is_refused_and_b_keeps_its_latency(
    seed: int, a_starts: float, b_rate: float
) -> None:
    """Equal weights on a board finishing 200 a second: each tenant's share is 100 a second.
    a sends 500 a second (from the start, or into b's steady stream at 5 s)."""
    horizon = 20.0
    alone = simulate({"b": b_rate}, horizon, seed)
    both = simulate({"a": 500, "b": b_rate}, horizon, seed, starts={"a": a_starts})
    assert alone.refused["b"] == Counter() and both.refused["b"] == Counter()
    assert len(both.latency["b"]) == len(alone.latency["b"])  # every b request served
    assert both.p99("b") <= 1.2 * alone.p99("b"), (both.p99("b"), alone.p99("b"))
    # a's excess is refused for its share, and a still gets at least its share
    span = horizon - a_starts
    assert set(both.refused["a"]) == {"share"}
    assert both.refused["a"]["share"] > 0.6 * 500 * span
    assert len(both.latency["a"]) / span > 100


def test_two_bursts_share_the_board_by_weight() -> None:
    # a pool of two batches: with 1.5, a's 9 places and b's 3 are not all full when a batch
    # leaves, and b, needing fewer, refills first: the split comes out near 2.4:1
    horizon = 20.0
    out = simulate({"a": 500, "b": 500}, horizon, 0, 8 * BATCH, weights={"a": 3.0, "b": 1.0})
    a, b = out.served_rate("a", horizon), out.served_rate("b", horizon)
    assert a / b == pytest.approx(3.0, rel=0.1)
    assert a + b > 0.9 * BATCH / batch_time(BATCH)  # the board stays busy
