"""Splitting: codec, links, stage profiles, fx slicing, the split planner and runner."""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from ecoserve.core.knobs import SPLIT as SPLIT_KNOB
from ecoserve.core.knobs import SearchSpace, split_knob
from ecoserve.core.link import Link, LinkEstimator
from ecoserve.core.tiers import DevicePower, StageProfile
from ecoserve.models.digits import load_digits_model
from ecoserve.models.stages import (
    load_profile,
    profile_stages,
    run_from,
    save_profile,
    sequential_from_fx,
)
from ecoserve.models.tensor_codec import CONTENT_TYPE, decode_tensor, encode_tensor
from ecoserve.server.tier_node import SplitRunner
from ecoserve.server.tier_routes import handle_split
from tuners.neurosurgeon import Objective, SplitPlanner
from twins.link import EmulatedLink, parse_rate

POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: faster and steadier for these tiny models on a shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def large() -> nn.Sequential:
    return load_digits_model("large")


def synthetic(dev_s: list[float], cut_bytes: list[int], speedup: float = 4.0):
    """A device/server profile pair; the server runs every stage ``speedup`` times faster."""
    n = len(dev_s)
    dev = StageProfile(
        names=tuple(f"s{i}" for i in range(n)),
        times_s=tuple(dev_s),
        cut_bytes=tuple(cut_bytes),
        cut_shapes=tuple((b // 4,) for b in cut_bytes),
        cut_dtypes=("torch.float32",) * (n + 1),
    )
    return dev, dev.scaled(speedup, tier="server")


def brute_force(dev: StageProfile, srv: StageProfile, link: Link, goal: str, p=POWER) -> int:
    """The formulas written out independently of the planner; ties to the larger split."""
    n = dev.n_stages
    best, best_j = math.inf, -1
    for j in range(n + 1):
        t_dev = sum(dev.times_s[:j])
        if j == n:
            latency, energy = t_dev, t_dev * p.busy_w
        else:
            t_srv = sum(srv.times_s[j:])
            up = dev.cut_bytes[j] * 8 / link.bandwidth_bps
            down = dev.cut_bytes[n] * 8 / link.bandwidth_bps
            latency = t_dev + link.rtt_s + up + down + t_srv
            energy = t_dev * p.busy_w + (up + down) * p.tx_w + (link.rtt_s + t_srv) * p.idle_w
        value = latency if goal == "latency" else energy
        if value <= best * (1 + 1e-12):
            best, best_j = min(best, value), j
    return best_j


# -- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(2, 3, 4),
        torch.randn(5, 7).to(torch.float16),
        torch.arange(12, dtype=torch.int64).reshape(3, 4),
        torch.tensor([True, False, True]),
        torch.randn(4, 6).t(),  # not contiguous
        torch.tensor(2.5),  # zero-dimensional
        torch.zeros(0, 3),
    ],
)
def test_codec_round_trips_dtype_shape_and_values(tensor: torch.Tensor) -> None:
    out = decode_tensor(encode_tensor(tensor))
    assert out.dtype == tensor.dtype
    assert out.shape == tensor.shape
    assert torch.equal(out, tensor)


def test_codec_fp16_halves_floats_and_leaves_integers() -> None:
    x = torch.randn(64, 32)
    full, half = encode_tensor(x), encode_tensor(x, fp16=True)
    assert len(half) - 128 == (len(full) - 128) // 2
    back = decode_tensor(half, dtype=torch.float32)
    assert back.dtype == torch.float32
    assert torch.allclose(back, x, rtol=1e-3, atol=1e-3)
    ints = torch.arange(10)
    assert decode_tensor(encode_tensor(ints, fp16=True), dtype=torch.float32).dtype == torch.int64
    assert CONTENT_TYPE == "application/octet-stream"


def test_codec_body_is_plain_npy() -> None:
    arr = np.load(io.BytesIO(encode_tensor(torch.ones(2, 2))), allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (2, 2)


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "not an encoded tensor"),
        (b'{"inputs": [1, 2]}', "not an encoded tensor"),
        (encode_tensor(torch.ones(8))[:-5], "malformed tensor body"),
        (encode_tensor(torch.ones(8)) + b"junk", "malformed tensor body"),
        (b"\x93NUMPY\x01\x00\xff\x00{'descr'", "malformed tensor header"),
        (b"\x93NUMPY\x09\x00", "malformed tensor header"),
        (_npy(np.array([1, "a"], dtype=object), allow_pickle=True), "unsupported dtype"),
        (_npy(np.array(["text"])), "dtype torch cannot hold"),
    ],
)
def test_codec_rejects_garbage_with_value_error(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_tensor(body)


def test_codec_refuses_a_header_promising_more_data_than_sent() -> None:
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    np.lib.format.write_array_header_1_0(buf, header)
    with pytest.raises(ValueError, match="header says"):
        decode_tensor(buf.getvalue() + b"\0" * 16)


def test_codec_reads_big_endian_and_fortran_order() -> None:
    assert decode_tensor(_npy(np.array([1, 2], dtype=">i4"))).tolist() == [1, 2]
    f = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert decode_tensor(_npy(f)).tolist() == f.tolist()


# -- link ------------------------------------------------------------------------------------


def test_link_transfer_times() -> None:
    link = Link(bandwidth_bps=8e6, rtt_s=0.01, downlink_bps=16e6)
    assert link.transfer_time(1_000_000) == pytest.approx(1.0)
    assert link.transfer_time(1_000_000, downlink=True) == pytest.approx(0.5)
    assert link.exchange_time(1_000_000, 1_000_000) == pytest.approx(1.51)
    assert Link(0.0).transfer_time(1) == math.inf
    assert Link(0.0).transfer_time(0) == 0.0
    with pytest.raises(ValueError):
        Link(-1.0)


def test_link_estimator_recovers_bandwidth_and_rtt() -> None:
    est = LinkEstimator(prior=Link(1e6, 0.05))
    assert est.link() == Link(1e6, 0.05)
    for _ in range(30):
        est.observe_rtt(0.02)
    rng = random.Random(0)
    for _ in range(60):
        nbytes = rng.choice([1_000, 50_000, 200_000])
        est.observe_transfer(nbytes, 0.02 + nbytes * 8 / 20e6)
    assert est.rtt_s == pytest.approx(0.02, rel=1e-3)
    assert est.link().bandwidth_bps == pytest.approx(20e6, rel=0.02)
    # the link slows down: the estimate follows
    for _ in range(40):
        est.observe_transfer(100_000, 0.02 + 100_000 * 8 / 2e6)
    assert est.link().bandwidth_bps == pytest.approx(2e6, rel=0.05)


def test_small_transfers_lost_in_jitter_say_nothing_about_bandwidth() -> None:
    est = LinkEstimator(alpha=0.5, min_wire_s=0.005)
    est.observe_rtt(0.001)
    # 256 bytes at 100 Mbit/s take 20 us; with 2 ms of jitter they would read 1 Mbit/s
    assert not est.observe_transfer(256, 0.001 + 0.002)
    assert est.bandwidth_bps is None
    assert est.observe_transfer(256 * 1024, 0.001 + 256 * 1024 * 8 / 100e6)
    assert est.bandwidth_bps == pytest.approx(100e6, rel=1e-6)
    for _ in range(20):  # jitter spikes of small requests past min_wire_s: still too small
        assert not est.observe_transfer(600, 0.001 + 0.010)
    assert est.bandwidth_bps == pytest.approx(100e6, rel=1e-6)
    # the link slows down: a large transfer counts, and the estimate follows
    assert est.observe_transfer(256 * 1024, 0.001 + 256 * 1024 * 8 / 10e6)
    assert est.bandwidth_bps < 20e6


def test_link_estimator_needs_something_to_go_on() -> None:
    est = LinkEstimator()
    with pytest.raises(ValueError, match="no bandwidth"):
        est.link()
    est.observe_rtt(0.01)
    est.observe_transfer(100, 0.005)  # shorter than the RTT: says nothing about bandwidth
    assert est.bandwidth_bps is None


def test_emulated_link_schedule() -> None:
    assert parse_rate("10mbit") == 10e6
    link = EmulatedLink.parse("10mbit@0s,1mbit@60s,500kbit@2min", rtt_s=0.01)
    assert link.bandwidth_at(0) == 10e6
    assert link.bandwidth_at(59.9) == 10e6
    assert link.bandwidth_at(60) == 1e6
    assert link.bandwidth_at(1000) == 500e3
    assert link.link_at(61) == Link(1e6, 0.01)
    # 2.5 MB starting at 59 s: 1 s at 10 Mbit/s moves 1.25 MB, the rest at 1 Mbit/s takes 10 s
    assert link.transfer_time(2_500_000, 59.0) == pytest.approx(11.0)
    assert EmulatedLink.parse("1gbit").bandwidth_at(5) == 1e9
    outage = EmulatedLink(((0.0, 8e6), (1.0, 0.0), (3.0, 8e6)))
    assert outage.transfer_end(2_000_000, 0.0) == pytest.approx(4.0)
    assert EmulatedLink(((0.0, 8e6), (1.0, 0.0))).transfer_end(2_000_000, 0.0) == math.inf


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "fast",
        "10mbps",
        "10mbit@5s",
        "10mbit@0s,1mbit",
        "1mbit@0s,2mbit@0s",
        "1mbit@0s,2mbit@3h",
    ],
)
def test_emulated_link_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        EmulatedLink.parse(spec)


# -- stages ----------------------------------------------------------------------------------


def test_profile_has_times_and_cut_sizes(large: nn.Sequential, tmp_path) -> None:
    x = torch.rand(3, 1, 8, 8)
    prof = profile_stages(large, x, repeats=3, warmup=1)
    assert prof.n_stages == len(large) == 7
    assert prof.names[0] == "conv1"
    assert all(t > 0 for t in prof.times_s)
    assert prof.cut_bytes[0] == x.numel() * 4
    assert prof.cut_bytes[-1] == 3 * 10 * 4
    assert prof.cut_shapes[1] == (3, 32, 8, 8)
    assert prof.batch_size == 3
    assert prof.transfer_bytes(1, fp16=True) == prof.cut_bytes[1] // 2
    path = tmp_path / "profile.json"
    save_profile(prof, path)
    assert load_profile(path) == prof
    assert json.loads(path.read_text())["cut_bytes"] == list(prof.cut_bytes)
    fast = prof.scaled(4.0, tier="server")
    assert fast.times_s[0] == pytest.approx(prof.times_s[0] / 4)
    assert fast.tier == "server"


def test_profile_rejects_stages_passing_more_than_one_tensor() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(TypeError, match="not a single tensor"):
        profile_stages(nn.Sequential(Pair(), nn.Identity()), torch.ones(1, 2), repeats=1)
    with pytest.raises(TypeError, match="sequential_from_fx"):
        profile_stages(Pair(), torch.ones(1, 2))
    with pytest.raises(ValueError):
        StageProfile.from_dict({"names": ["a"]})


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.c2(torch.relu(self.c1(x))))


class ResidualNet(nn.Module):
    """Not a Sequential: residual blocks, a parameter used twice, a reshape by size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.b1, self.b2 = Block(8), Block(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(self.stem(x) * self.scale))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.reshape(x.size(0), -1)) * self.scale


def test_fx_stages_reproduce_the_model_at_every_cut() -> None:
    torch.manual_seed(0)
    net = ResidualNet().eval()
    x = torch.rand(2, 1, 8, 8)
    seq = sequential_from_fx(net, x)
    with torch.no_grad():
        want = net(x)
        assert torch.allclose(seq(x), want, atol=1e-6)
        for k in range(len(seq) + 1):
            h = decode_tensor(encode_tensor(seq[:k](x)))  # empty slice: the input
            assert torch.allclose(run_from(seq, k, h), want, atol=1e-6), k
    prof = profile_stages(seq, x, repeats=1, warmup=0)
    # inside a residual block two tensors are live: no cut may produce the block's
    # inner activation alone, so every 8x8 cut is a block input/output
    assert prof.cut_shapes[0] == (2, 1, 8, 8)
    assert prof.cut_shapes[-1] == (2, 10)
    names = list(prof.names)
    for inner in ("b1_c1", "b1_c2", "b2_c1", "b2_c2", "size"):
        assert inner not in names
    assert "scale" not in names  # parameters are not stages


def test_fx_on_a_sequential_gives_the_same_outputs(large: nn.Sequential) -> None:
    x = torch.rand(4, 1, 8, 8)
    seq = sequential_from_fx(large, x)
    assert len(seq) >= len(large)
    with torch.no_grad():
        assert torch.allclose(seq(x), large(x), atol=1e-6)


def test_fx_leaves_batch_norm_statistics_and_modes_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    before = model[1].running_mean.clone()
    seq = sequential_from_fx(model, torch.rand(2, 1, 8, 8))
    assert torch.equal(model[1].running_mean, before)
    assert model.training and model[1].training
    assert len(seq) == 3


def test_fx_needs_one_input() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    with pytest.raises(ValueError, match="one tensor input"):
        sequential_from_fx(Two(), torch.ones(1))

    class TwoOut(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x + 1

    with pytest.raises(ValueError, match="not a single tensor"):
        sequential_from_fx(TwoOut(), torch.ones(1))


# -- planner ---------------------------------------------------------------------------------


def random_profiles(seed: int):
    rng = random.Random(seed)
    n = rng.randint(2, 12)
    dev = [rng.uniform(1e-4, 5e-2) for _ in range(n)]
    cuts = [rng.randint(100, 2_000_000) for _ in range(n + 1)]
    return synthetic(dev, cuts, speedup=rng.choice([1.0, 2.0, 4.0, 10.0]))


LINKS = [Link(bw, rtt) for bw in (1e5, 1e6, 1e7, 1e8, 1e9, 1e11) for rtt in (0.0, 0.002, 0.05)]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("goal", ["latency", "energy"])
def test_planner_matches_brute_force_on_synthetic_profiles(seed: int, goal: str) -> None:
    dev, srv = random_profiles(seed)
    planner = SplitPlanner(dev, srv, POWER, Objective(goal))
    for link in LINKS:
        table = planner.table(link)
        assert [r.split for r in table] == list(range(dev.n_stages + 1))
        assert planner.best_split(link) == brute_force(dev, srv, link, goal)


def test_planner_matches_brute_force_on_the_digits_profile(large: nn.Sequential) -> None:
    dev = profile_stages(large, torch.rand(1, 1, 8, 8), repeats=5, warmup=2)
    srv = dev.scaled(4.0)
    for goal in ("latency", "energy"):
        planner = SplitPlanner(dev, srv, POWER, Objective(goal))
        for link in LINKS:
            assert planner.best_split(link) == brute_force(dev, srv, link, goal)


def test_cost_goal_interpolates_between_energy_and_latency() -> None:
    dev, srv = random_profiles(3)
    lat = SplitPlanner(dev, srv, POWER, Objective("latency"))
    en = SplitPlanner(dev, srv, POWER, Objective("energy"))
    for link in LINKS:
        assert SplitPlanner(dev, srv, POWER, Objective("cost", 0.0)).best_split(
            link
        ) == lat.best_split(link)
        assert SplitPlanner(dev, srv, POWER, Objective("cost", 1.0)).best_split(
            link
        ) == en.best_split(link)
        row = SplitPlanner(dev, srv, POWER, Objective("cost", 0.5)).table(link)[-1]
        assert row.cost == pytest.approx(1.0)  # all-local is its own baseline
    with pytest.raises(ValueError, match="positive baselines"):
        SplitPlanner(dev, srv, DevicePower(0, 0), Objective("cost")).table(LINKS[0])


# A Neurosurgeon-like shape: big early activations, a small bottleneck late.
CROSSOVER = synthetic(
    dev_s=[0.004, 0.010, 0.006, 0.012, 0.008, 0.010, 0.002],
    cut_bytes=[600_000, 3_200_000, 800_000, 400_000, 200_000, 100_000, 2_000, 4_000],
    speedup=10.0,
)


@pytest.mark.parametrize("profiles", [CROSSOVER, random_profiles(5), random_profiles(8)])
@pytest.mark.parametrize("rtt", [0.0, 0.01])
def test_best_split_moves_toward_the_device_as_bandwidth_drops(profiles, rtt: float) -> None:
    dev, srv = profiles  # every stage is slower on the device than on the server
    planner = SplitPlanner(dev, srv, POWER, Objective("latency"))
    bandwidths = np.logspace(12, 3, 200)  # fast to slow
    splits = [planner.best_split(Link(float(bw), rtt)) for bw in bandwidths]
    assert splits == sorted(splits)
    assert splits[-1] == dev.n_stages  # slow link: all local
    if rtt == 0.0:
        assert splits[0] == 0  # fast link, server faster: send the input


def test_crossover_profile_has_intermediate_splits() -> None:
    dev, srv = CROSSOVER
    planner = SplitPlanner(dev, srv, POWER, Objective("latency"))
    chosen = {planner.best_split(Link(float(bw), 0.0)) for bw in np.logspace(12, 3, 200)}
    assert chosen - {0, dev.n_stages}, chosen


def test_digits_crossover_slow_local_fast_forward(large: nn.Sequential) -> None:
    dev = profile_stages(large, torch.rand(1, 1, 8, 8), repeats=5, warmup=2)
    planner = SplitPlanner(dev, dev.scaled(4.0), POWER, Objective("latency"))
    assert planner.best_split(Link(1e4, 0.0)) == dev.n_stages
    assert planner.best_split(Link(1e12, 0.0)) == 0
    assert planner.best_split(Link(0.0, 0.0)) == dev.n_stages  # link down


def test_planner_rejects_mismatched_profiles() -> None:
    a, _ = synthetic([0.1, 0.1], [10, 20, 30])
    b, _ = synthetic([0.1, 0.1, 0.1], [10, 20, 30, 40])
    c, _ = synthetic([0.1, 0.1], [10, 25, 30])
    with pytest.raises(ValueError, match="stages"):
        SplitPlanner(a, b, POWER)
    with pytest.raises(ValueError, match="cut sizes"):
        SplitPlanner(a, c, POWER)


def test_split_knob_is_a_tunable_knob() -> None:
    knob = split_knob(7)
    assert knob.name == SPLIT_KNOB == "split_point"
    assert knob.values == tuple(range(8))
    space = SearchSpace.of(knob)
    assert space.values(space.maximum()) == {"split_point": 7}
    with pytest.raises(ValueError):
        split_knob(0)


# -- running a split model ---------------------------------------------------------------


@pytest.mark.parametrize("fp16", [False, True])
async def test_split_runner_matches_the_unsplit_model_for_every_k(
    large: nn.Sequential, fp16: bool
) -> None:
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        want = large(x)
    sent: list[tuple[int, int]] = []

    async def send(k: int, payload: bytes) -> bytes:
        sent.append((k, len(payload)))
        return handle_split(large, k, payload)  # the next tier, in process

    runner = SplitRunner(large, send, fp16=fp16)
    tol = 2e-2 if fp16 else 1e-5
    for k in range(len(large) + 1):
        out = await runner.run(x, k)
        assert out.dtype == torch.float32
        assert torch.allclose(out, want, atol=tol), k
    assert [k for k, _ in sent] == list(range(len(large)))  # k = N sent nothing
    if not fp16:
        prof = profile_stages(large, x, repeats=1, warmup=0)
        assert [n - 128 for _, n in sent] == list(prof.cut_bytes[:-1])
    with pytest.raises(ValueError, match="outside"):
        await runner.run(x, len(large) + 1)


def test_handle_split_rejects_bad_payloads(large: nn.Sequential) -> None:
    with pytest.raises(ValueError):
        handle_split(large, 2, b"not a tensor")
    with pytest.raises(ValueError, match="outside"):
        handle_split(large, 9, encode_tensor(torch.ones(1)))
