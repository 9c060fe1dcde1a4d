"""The serving benchmark's search: one spike neither ends the ramp nor carries a rate."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_http import Result  # noqa: E402
from bench_serving import passes, sustained_rate  # noqa: E402
from null_server import RESPONSE, NullProtocol  # noqa: E402


def server(
    capacity: float, spikes: frozenset[tuple[int, int]] = frozenset()
) -> Callable[[float], Result]:
    """A fake server: p99 10 ms up to ``capacity`` (req/s), 500 ms past it; the n-th run
    at a rate in ``spikes`` (rate, n) sees one 500 ms spike."""
    seen: dict[float, int] = {}

    def run_at(rate: float) -> Result:
        n = seen.get(rate, 0)
        seen[rate] = n + 1
        slow = rate > capacity or (round(rate), n) in spikes
        latency = 0.5 if slow else 0.01
        return Result(
            "fake", latencies=[latency] * int(rate), statuses={200: int(rate)}, seconds=1.0
        )

    return run_at


def search(run_at: Callable[[float], Result], **kw: int) -> float:
    best, _ = sustained_rate("fake", run_at, 100.0, 2.0, 100.0, 10, **kw)
    return best


def test_a_run_passes_only_within_the_tail_bound_with_every_request_answered() -> None:
    ok = Result("x", latencies=[0.01] * 100, statuses={200: 100}, seconds=1.0)
    assert passes(ok, 100.0, 100.0)
    assert not passes(ok, 200.0, 100.0)  # answered half the offered rate: a backlog
    failed = Result("x", latencies=[0.01] * 100, statuses={200: 100, 503: 1}, seconds=1.0)
    assert not passes(failed, 100.0, 100.0)
    slow = Result("x", latencies=[0.01] * 98 + [0.2] * 2, statuses={200: 100}, seconds=1.0)
    assert not passes(slow, 100.0, 100.0)


def test_without_spikes_the_search_finds_the_capacity_bracket() -> None:
    assert search(server(450.0), refine=0) == 400.0
    assert search(server(450.0), refine=3) == pytest.approx(450.0, abs=25.0)


def test_one_spike_does_not_end_the_ramp_when_patience_allows() -> None:
    spiky = frozenset({(200, 0)})
    assert search(server(450.0, spiky), refine=0, patience=0) == 100.0  # the old behaviour
    assert search(server(450.0, spiky), refine=0, patience=1) == 400.0


def test_a_rate_holds_only_if_every_repeat_passes() -> None:
    # The second run at 400 req/s spikes: with two repeats 400 no longer holds.
    spiky = frozenset({(400, 1)})
    assert search(server(450.0, spiky), refine=0, repeats=1) == 400.0
    assert search(server(450.0, spiky), refine=0, repeats=2, patience=1) == 200.0


def test_when_the_first_rate_fails_the_search_steps_down_to_one_that_holds() -> None:
    assert search(server(30.0), refine=0) == 25.0  # 100 fails; 50 fails; 25 holds
    # then bisected towards 50: 37.5 holds, 43.75 does not
    assert search(server(40.0), refine=2) == 37.5


class Transport:
    """What the null server writes, in order."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_the_null_server_answers_each_request_once_its_body_is_in() -> None:
    post = b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    get = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    protocol, transport = NullProtocol(), Transport()
    protocol.transport = transport  # type: ignore[assignment]
    protocol.data_received(post[:-3])  # the head and part of the body: nothing yet
    assert transport.written == []
    protocol.data_received(post[-3:] + get + post[:10])  # the rest, a GET, a new head begun
    assert transport.written == [RESPONSE, RESPONSE]
    protocol.data_received(post[10:])
    assert transport.written == [RESPONSE] * 3 and not protocol.buffer
