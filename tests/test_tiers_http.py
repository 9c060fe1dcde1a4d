"""Two daemons on loopback: a device tier (TierNode) in front of an edge tier (tier_router)."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from torch import nn

from ecoserve.core.knobs import SPLIT, SearchSpace
from ecoserve.core.link import Link, LinkEstimator
from ecoserve.core.tiers import DevicePower, StageProfile
from ecoserve.models.cascade import confidence
from ecoserve.models.digits import load_digits_model, load_digits_split
from ecoserve.models.stages import profile_stages
from ecoserve.models.tensor_codec import CONTENT_TYPE, decode_tensor, encode_tensor
from ecoserve.server.tier_client import NextTierClient
from ecoserve.server.tier_node import TierNode
from ecoserve.server.tier_routes import COMPUTE_HEADER, tier_router
from tuners.neurosurgeon import Neurosurgeon, SplitPlanner
from twins.link import EmulatedLink

POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
HEADER = 128  # bytes of .npy framing per message
STAGE_SLEEP_S = 0.004  # the emulated slow device: 4 ms per stage, 28 ms for the model


class Daemon:
    """A uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they
        # are TCP; without it keep-alive exchanges stall ~40 ms (Nagle vs delayed ACK)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Daemon:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test daemon did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class Slow(nn.Module):
    """A stage that also sleeps: a device many times slower than this CPU."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner(x)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def large() -> nn.Sequential:
    return load_digits_model("large")


@pytest.fixture(scope="module")
def small() -> nn.Sequential:
    return load_digits_model("small")


@pytest.fixture(scope="module")
def x_test() -> torch.Tensor:
    return load_digits_split().x_test


@pytest.fixture(scope="module")
def edge(large: nn.Sequential) -> Iterator[Daemon]:
    app = FastAPI()
    app.include_router(tier_router(large, large, input_shape=(1, 8, 8)))
    with Daemon(app) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def profiles(large: nn.Sequential, x_test: torch.Tensor) -> tuple[StageProfile, StageProfile]:
    """The slow device's profile (measured, sleeps included) and the edge's."""
    slow = nn.Sequential(
        OrderedDict((n, Slow(m, STAGE_SLEEP_S)) for n, m in large.named_children())
    )
    device = profile_stages(slow, x_test[:1], repeats=3, warmup=1, tier="device")
    server = profile_stages(large, x_test[:1], repeats=20, tier="edge")
    return device, server


def slow_device(large: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict((n, Slow(m, STAGE_SLEEP_S)) for n, m in large.named_children())
    )


def brute_force_split(device: StageProfile, server: StageProfile, link: Link) -> int:
    """Neurosurgeon's argmin written out from the profiles (ties: the larger split)."""
    n = device.n_stages
    best, best_lat = n, math.inf
    for j in range(n + 1):
        lat = sum(device.times_s[:j]) + sum(server.times_s[j:])
        if j < n:
            up = 8 * (device.cut_bytes[j] + HEADER) / link.bandwidth_bps
            down = 8 * (device.cut_bytes[n] + HEADER) / link.bandwidth_bps
            lat += link.rtt_s + up + down
        if lat <= best_lat:
            best, best_lat = j, lat
    return best


async def plan(node: TierNode, planner: SplitPlanner) -> Neurosurgeon:
    """Start ``node`` (ping and probe), then let the planner tuner set its split point."""
    await node.start()
    space = SearchSpace.of(planner.knob())
    tuner = Neurosurgeon(space, planner=planner)
    tuner.tell(space.maximum(), 1.0, node.context())
    node.set_value(space.values(tuner.ask())[SPLIT])
    return tuner


def test_split_equals_unsplit_for_every_k(edge: Daemon, large: nn.Sequential, x_test) -> None:
    x = x_test[:16]
    with torch.inference_mode():
        want = large(x)
    n = len(large)

    async def scenario() -> list[tuple[int, torch.Tensor, tuple[bool, ...]]]:
        async with NextTierClient(edge.url) as client:
            node = TierNode.for_split(large, client)
            out = []
            for k in range(n + 1):
                node.set_value(k)
                answer = await node.infer(x)
                out.append((answer.split, answer.output, answer.forwarded))
            await node.aclose()
            return out

    for k, (split, got, forwarded) in enumerate(asyncio.run(scenario())):
        assert split == k
        assert forwarded == ((k < n),) * len(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cascade_gives_documented_answer(
    edge: Daemon, small: nn.Sequential, large: nn.Sequential, x_test
) -> None:
    x = x_test[:120]
    threshold = 0.9
    with torch.inference_mode():
        score, small_pred = confidence(small(x))
        big_pred = large(x).argmax(dim=1)
    keep = score >= threshold
    want = torch.where(keep, small_pred, big_pred)
    assert 0 < int(keep.sum()) < len(x)  # both paths exercised

    async def scenario():
        async with NextTierClient(edge.url) as client:
            node = TierNode.for_cascade(small, client)
            node.set_value(threshold)
            batch = await node.infer(x)
            rows = [await node.infer(x[i : i + 1]) for i in range(0, len(x), 10)]
            await node.aclose()
            return batch, rows, node.status()

    batch, rows, status = asyncio.run(scenario())
    assert batch.threshold == threshold
    assert batch.forwarded == tuple(not k for k in keep.tolist())
    assert torch.equal(batch.output.argmax(dim=1), want)
    for i, one in zip(range(0, len(x), 10), rows, strict=True):
        assert int(one.output.argmax(dim=1)) == int(want[i])
        assert one.forwarded == (not bool(keep[i]),)
    assert status["rows_forwarded"] == int((~keep).sum()) + sum(r.forwarded[0] for r in rows)
    assert status["fallbacks"] == 0


@pytest.mark.parametrize("mbit", [0.1, 1.0, 10.0, 100.0])
def test_chosen_split_is_brute_force_best(edge: Daemon, large, x_test, profiles, mbit) -> None:
    device, server = profiles
    planner = SplitPlanner(device, server, POWER, overhead_bytes=HEADER)
    emulation = EmulatedLink.parse(f"{mbit}mbit", rtt_s=0.002)

    async def scenario():
        async with NextTierClient(edge.url, emulation=emulation) as client:
            node = TierNode.for_split(slow_device(large), client)
            tuner = await plan(node, planner)
            answer = await node.infer(x_test[:1])
            await node.aclose()
            return answer, tuner.planned_for, client.link()

    answer, planned_for, estimate = asyncio.run(scenario())
    assert planned_for is not None and estimate is not None
    assert answer.split == brute_force_split(device, server, planned_for)
    # the estimate came from one ping and one probe through the emulated link
    assert 0.3 * mbit * 1e6 < planned_for.bandwidth_bps < 2 * mbit * 1e6 or mbit >= 10


def test_crossover_slow_link_local_fast_link_forward(edge: Daemon, large, x_test, profiles):
    """Measured latencies cross over: local wins at 0.05 Mbit/s, forwarding at 1 Gbit/s."""
    device, server = profiles
    planner = SplitPlanner(device, server, POWER, overhead_bytes=HEADER)
    x = x_test[:1]
    n = len(large)

    async def run(spec: str) -> dict[str, float]:
        emulation = EmulatedLink.parse(spec, rtt_s=0.001)
        estimator = LinkEstimator(prior=Link(1e9), alpha=0.5)
        async with NextTierClient(edge.url, emulation=emulation, estimator=estimator) as client:
            node = TierNode.for_split(slow_device(large), client)
            await plan(node, planner)
            chosen = (await node.infer(x)).split
            timings: dict[str, float] = {"chosen": float(chosen)}
            for label, k in (("local", n), ("forward", 0)):
                node.set_value(k)
                timings[label] = min([(await node.infer(x)).latency_s for _ in range(3)])
            await node.aclose()
            return timings

    slow = asyncio.run(run("0.05mbit"))
    fast = asyncio.run(run("1000mbit"))
    assert slow["chosen"] == n and fast["chosen"] < n
    assert slow["local"] < slow["forward"]
    assert fast["forward"] < fast["local"]


def test_two_daemons_end_to_end(edge: Daemon, large, x_test, profiles) -> None:
    """A device daemon answers /infer through its TierNode, which splits to the edge daemon."""
    device, server = profiles
    planner = SplitPlanner(device, server, POWER, overhead_bytes=HEADER)
    client = NextTierClient(edge.url, estimator=LinkEstimator(prior=Link(1e9), alpha=0.5))
    node = TierNode.for_split(slow_device(large), client)
    app = FastAPI()
    planned: list[Neurosurgeon] = []

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        if not planned:
            planned.append(await plan(node, planner))
        answer = await node.infer(decode_tensor(await request.body()))
        return Response(
            encode_tensor(answer.output),
            media_type=CONTENT_TYPE,
            headers={"x-split": str(answer.split)},
        )

    app.include_router(tier_router(large, None, node=node))
    x = x_test[:4]
    with torch.inference_mode():
        want = large(x)
    with Daemon(app) as dev, httpx.Client(base_url=dev.url, timeout=30) as http:
        resp = http.post("/infer", content=encode_tensor(x), headers={"content-type": CONTENT_TYPE})
        assert resp.status_code == 200, resp.text
        torch.testing.assert_close(decode_tensor(resp.content), want, rtol=1e-5, atol=1e-5)
        assert int(resp.headers["x-split"]) < len(large)  # fast loopback, slow device: sent
        status = http.get("/v1/tier/status").json()
        assert status["mode"] == "split" and status["rows_forwarded"] == 4
        assert status["next_tier"]["exchanges"] >= 1
        assert http.post("/v1/tier/cascade", content=encode_tensor(x)).status_code == 404


def test_next_tier_down_answers_here(large, small, x_test) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    x = x_test[:3]
    with torch.inference_mode():
        want_large, want_small = large(x), small(x)

    async def scenario():
        async with NextTierClient(dead, timeout_s=2) as c1, NextTierClient(dead, timeout_s=2) as c2:
            split_node = TierNode.for_split(large, c1)
            unplanned = await split_node.infer(x)  # link unknown and down: all here
            split_node.set_value(2)
            known_down = await split_node.infer(x)  # still known down: no send is tried
            status = split_node.status()
            eager = TierNode.for_split(large, c1, probe_interval_s=0.0)  # never "known down"
            eager.set_value(2)
            pinned = await eager.infer(x)  # send fails: the tail runs here
            cascade_node = TierNode.for_cascade(small, c2)  # threshold 1.0: forward all
            cascaded = await cascade_node.infer(x)
            return unplanned, known_down, pinned, cascaded, status, eager.status()

    unplanned, known_down, pinned, cascaded, status, eager = asyncio.run(scenario())
    assert unplanned.split == len(large) and not unplanned.fallback
    assert known_down.split == len(large) and not known_down.fallback
    torch.testing.assert_close(known_down.output, want_large, rtol=1e-5, atol=1e-5)
    assert pinned.fallback and pinned.split == 2 and pinned.forwarded == (False,) * 3
    torch.testing.assert_close(pinned.output, want_large, rtol=1e-5, atol=1e-5)
    assert cascaded.fallback
    torch.testing.assert_close(cascaded.output, want_small)
    assert status["fallbacks"] == 0 and status["link"]["down"]
    assert eager["fallbacks"] == 1


def test_bad_payloads_are_422(edge: Daemon, large, x_test) -> None:
    good0 = encode_tensor(x_test[:2])
    with torch.inference_mode():
        good3 = encode_tensor(large[:3](x_test[:2]))
    headers = {"content-type": CONTENT_TYPE}
    with httpx.Client(base_url=edge.url, timeout=30) as http:

        def post(path: str, body: bytes) -> httpx.Response:
            return http.post(path, content=body, headers=headers)

        ok = post("/v1/tier/split/3", good3)
        assert ok.status_code == 200 and float(ok.headers[COMPUTE_HEADER]) >= 0
        cases = {
            ("/v1/tier/split/0", b"not a tensor"): ".npy",
            ("/v1/tier/split/0", b""): "empty body",
            ("/v1/tier/split/0", good0[:-7]): "malformed",
            ("/v1/tier/split/7", good0): "outside 0..6",
            ("/v1/tier/split/-1", good0): "outside 0..6",
            ("/v1/tier/split/3", good0): "expects shape (N, 32, 4, 4)",
            ("/v1/tier/split/0", encode_tensor(torch.ones(2, 1, 8, 8, dtype=torch.int64))): "dtype",
            ("/v1/tier/split/0", encode_tensor(torch.ones(1, 8, 8))): "expects shape",
            ("/v1/tier/cascade", good3): "expects shape (N, 1, 8, 8)",
            ("/v1/tier/cascade", b"\x93NUMPY garbage"): "malformed",
        }
        for (path, body), message in cases.items():
            resp = post(path, body)
            assert resp.status_code == 422, (path, resp.text)
            assert message in resp.json()["detail"], (path, resp.json())
        assert post("/v1/tier/split/abc", good0).status_code == 422
        logits = decode_tensor(post("/v1/tier/cascade", good0).content)
        assert logits.shape == (2, 10)
        assert http.get("/v1/tier/ping").json() == {"ok": True, "stages": 7, "cascade": True}
        assert http.get("/v1/tier/profile").status_code == 404


def test_router_without_shapes_still_422(large) -> None:
    app = FastAPI()
    app.include_router(tier_router(large, None))
    with Daemon(app) as daemon, httpx.Client(base_url=daemon.url, timeout=30) as http:
        body = encode_tensor(torch.ones(1, 3, 8, 8))
        resp = http.post("/v1/tier/split/0", content=body)
        assert resp.status_code == 422 and "cut 0" in resp.json()["detail"]
        assert http.post("/v1/tier/cascade", content=body).status_code == 404


def test_client_estimates_emulated_bandwidth(edge: Daemon) -> None:
    emulation = EmulatedLink.parse("1mbit", rtt_s=0.005)

    async def scenario() -> Link | None:
        async with NextTierClient(edge.url, emulation=emulation) as client:
            await client.connect()  # connection set-up is not a round trip
            for _ in range(3):
                await client.ping()
            await client.probe(8000)
            await client.send(6, encode_tensor(torch.ones(1, 128)))
            return client.link()

    link = asyncio.run(scenario())
    assert link is not None
    assert 0.5e6 < link.bandwidth_bps < 1.5e6
    assert 0.005 <= link.rtt_s < 0.05
    assert np.isfinite(link.rtt_s)


def test_the_router_bounds_computations_in_progress(large) -> None:
    app = FastAPI()
    app.include_router(tier_router(large, large, max_pending=0))
    with Daemon(app) as daemon, httpx.Client(base_url=daemon.url, timeout=30) as http:
        resp = http.post("/v1/tier/cascade", content=encode_tensor(torch.zeros(1, 1, 8, 8)))
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


def test_a_fast_link_is_measured_from_transfers_long_enough_to_mean_it(edge: Daemon) -> None:
    """100 Mbit/s with 256-byte requests: the probe grows until its transfer counts, and the
    small requests, lost in the round trip's jitter, do not drag the estimate down."""
    emulation = EmulatedLink.parse("100mbit")

    async def scenario() -> tuple[Link | None, int]:
        async with NextTierClient(edge.url, emulation=emulation) as client:
            await client.connect()
            for _ in range(3):
                await client.ping()
            await client.probe()
            row = encode_tensor(torch.ones(1, 1, 8, 8))  # 256 bytes of data
            for _ in range(10):
                await client.send(0, row)
            return client.link(), client.probe_bytes

    link, probe_bytes = asyncio.run(scenario())
    assert link is not None
    # the real loopback's own time (a busy box's HTTP stack) adds to the emulated 100 Mbit/s;
    # the old estimate read 1.3 Mbit/s here
    assert 15e6 < link.bandwidth_bps < 200e6, link
    assert probe_bytes > 64 * 1024  # grown from 2 KiB to what takes a while at 100 Mbit/s
