"""Two daemons on loopback: a device tier node against an edge tier's routes, per emulated link.

For each emulated bandwidth the device's ``TierNode`` connects to an edge ``tier_router``,
pings and probes, and the ``neurosurgeon`` tuner chooses the split point from the node's link
estimate (what ``ecoserve serve --next-tier URL --tuner neurosurgeon`` does at its first
window). Then 20 requests each run at the chosen split, all here (k=7) and sending the input
(k=0), and 80 through a cascade at threshold 0.9 and 20 forwarding everything. The device
is this CPU made ``--device-slowdown`` times slower by sleeping; the link's RTT is emulated on
top of loopback. Latencies vary with the machine; the split choice should not.

    python benchmarks/bench_tiers_live.py [--device-slowdown 100] [--rtt 1ms]   # about 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from collections import OrderedDict

import torch
import uvicorn
from fastapi import FastAPI
from torch import nn

from ecoserve.core.knobs import SPLIT, SearchSpace
from ecoserve.models.digits import load_digits_model, load_digits_split
from ecoserve.replay.tiers import DigitsSetup, digits_setup
from ecoserve.server.tier_client import NextTierClient
from ecoserve.server.tier_node import TierNode
from ecoserve.server.tier_routes import tier_router
from traces import parse_duration
from tuners.neurosurgeon import Neurosurgeon
from twins.link import EmulatedLink

LIVE_MBIT = (0.05, 0.2, 1.0, 5.0, 20.0, 100.0)


class _Sleepy(nn.Module):
    """A stage that also sleeps: this CPU made slower, like a smaller device."""

    def __init__(self, inner: nn.Module, extra_s: float) -> None:
        super().__init__()
        self.inner, self.extra_s = inner, extra_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.extra_s)
        return self.inner(x)


def live_table(setup: DigitsSetup, slowdown: float, rtt_s: float, requests: int = 20) -> list[str]:
    """Measured latencies of a device node against a live edge daemon, per emulated link."""
    large, small = load_digits_model("large"), load_digits_model("small")
    x_all = load_digits_split().x_test
    extra = [t * (1.0 - 1.0 / slowdown) for t in setup.planner.device.times_s]
    slow = nn.Sequential(
        OrderedDict(
            (name, _Sleepy(m, e))
            for (name, m), e in zip(large.named_children(), extra, strict=True)
        )
    )
    small_slow = _Sleepy(small, setup.cascade.small_s * (1.0 - 1.0 / slowdown))
    app = FastAPI()
    app.include_router(tier_router(large, large, input_shape=(1, 8, 8)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    n = len(large)
    space = SearchSpace.of(setup.planner.knob())

    async def one(mbit: float) -> list[str]:
        emulation = EmulatedLink.parse(f"{mbit}mbit", rtt_s=rtt_s)
        async with NextTierClient(url, emulation=emulation) as client:
            node = TierNode.for_split(slow, client)
            await node.start()
            tuner = Neurosurgeon(space, planner=setup.planner)
            tuner.tell(space.maximum(), 1.0, node.context())
            chosen = int(space.values(tuner.ask())[SPLIT])
            est = client.link()
            ms: dict[str, float] = {}
            for label, k in (("chosen", chosen), ("local", n), ("send", 0)):
                node.set_value(k)
                lat = [(await node.infer(x_all[i : i + 1])).latency_s for i in range(requests)]
                ms[label] = 1e3 * statistics.median(lat)
            cascade = TierNode.for_cascade(small_slow, client)
            cascade.set_value(0.9)
            lat, fwd = [], 0
            for i in range(4 * requests):
                a = await cascade.infer(x_all[i : i + 1])
                lat.append(a.latency_s)
                fwd += sum(a.forwarded)
            cascade.set_value(1.0)
            lat1 = [(await cascade.infer(x_all[i : i + 1])).latency_s for i in range(requests)]
            await node.aclose()
            return [
                f"{mbit:g}",
                f"{0 if est is None else est.bandwidth_bps / 1e6:.3g}",
                str(chosen),
                f"{ms['chosen']:.2f}",
                f"{ms['local']:.2f}",
                f"{ms['send']:.2f}",
                f"{1e3 * statistics.mean(lat):.2f} ({100 * fwd / len(lat):.0f}% sent)",
                f"{1e3 * statistics.mean(lat1):.2f}",
            ]

    lines = [
        "| emulated Mbit/s | estimated Mbit/s | chosen k | chosen: median ms | all here (k=7) "
        "| send input (k=0) | cascade t=0.9: mean ms | forward all (t=1): mean ms |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    try:
        for mbit in LIVE_MBIT:
            lines.append("| " + " | ".join(asyncio.run(one(mbit))) + " |")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt", default="1ms", help="round-trip time emulated on top of loopback")
    ap.add_argument("--device-slowdown", type=float, default=100.0)
    ap.add_argument("--server-speedup", type=float, default=4.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rtt_s = parse_duration(args.rtt)
    setup = digits_setup(device_slowdown=args.device_slowdown, server_speedup=args.server_speedup)
    print(
        f"Two daemons on loopback (RTT {1e3 * rtt_s:g} ms emulated on top; device "
        f"{args.device_slowdown:g}x slower by sleeping; 20 requests per split column, 80 for "
        "the cascade):\n"
    )
    print("\n".join(live_table(setup, args.device_slowdown, rtt_s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
