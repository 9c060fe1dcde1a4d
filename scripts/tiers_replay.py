"""Replay a trace over a changing link: fixed split points and thresholds against online ones.

Seeded and in virtual time; only the measured stage times vary between runs. The device is
this CPU made ``--device-slowdown`` times slower, the next tier this CPU ``--server-speedup``
times faster; power figures are the stated assumptions, not measurements.

    python scripts/tiers_replay.py                          # about 5 s
    python scripts/tiers_replay.py --link "10mbit@0s,0.2mbit@60s" --trace poisson:20
    python scripts/tiers_replay.py --live                   # + two daemons on loopback, ~15 s

``--live`` also starts an edge daemon (``tier_router``) on a loopback port and drives a
device ``TierNode`` against it through ``NextTierClient`` with an emulated link per row: the
device's stages sleep so that it runs ``--device-slowdown`` times slower than this CPU.
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

from ecoserve.models.digits import load_digits_model, load_digits_split
from ecoserve.tiers.http import NextTierClient, tier_router
from ecoserve.tiers.link import EmulatedLink
from ecoserve.tiers.node import TierNode
from ecoserve.tiers.replay import digits_setup, tier_replay_report
from traces import load_trace
from traces.durations import parse_duration

LIVE_MBIT = (0.05, 0.2, 1.0, 5.0, 20.0, 100.0)


class _Sleepy(nn.Module):
    """A stage that also sleeps: this CPU made slower, like a smaller device."""

    def __init__(self, inner: nn.Module, extra_s: float) -> None:
        super().__init__()
        self.inner, self.extra_s = inner, extra_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.extra_s)
        return self.inner(x)


def live_table(setup, slowdown: float, rtt_s: float, requests: int = 20) -> list[str]:
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
    small_slow = _Sleepy(small, setup.costs.small_s * (1.0 - 1.0 / slowdown))
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

    async def one(mbit: float) -> list[str]:
        emulation = EmulatedLink.parse(f"{mbit}mbit", rtt_s=rtt_s)
        async with NextTierClient(url, emulation=emulation) as client:
            node = TierNode.for_split(slow, setup.planner, client)
            await node.start()
            ms: dict[str, float] = {}
            chosen = (await node.infer(x_all[:1])).split
            est = client.link()
            for label, k in (("chosen", None), ("local", n), ("send", 0)):
                node.set_split(k)
                lat = [(await node.infer(x_all[i : i + 1])).latency_s for i in range(requests)]
                ms[label] = 1e3 * statistics.median(lat)
            cascade = TierNode.for_cascade(small_slow, client, threshold=0.9)
            lat, fwd = [], 0
            for i in range(4 * requests):
                a = await cascade.infer(x_all[i : i + 1])
                lat.append(a.latency_s)
                fwd += sum(a.forwarded)
            cascade.set_threshold(1.0)
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
    ap.add_argument("--trace", default="poisson:50", help="trace name, spec or CSV path")
    ap.add_argument("--duration", default="120s")
    ap.add_argument("--link", default="20mbit@0s,0.2mbit@40s,20mbit@80s")
    ap.add_argument("--rtt", default="1ms", help="round-trip time of the link")
    ap.add_argument("--device-slowdown", type=float, default=100.0)
    ap.add_argument("--server-speedup", type=float, default=4.0)
    ap.add_argument("--oracle", action="store_true", help="price with the true link")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--live", action="store_true", help="also measure two daemons on loopback")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    rtt_s = parse_duration(args.rtt)
    link = EmulatedLink.parse(args.link, rtt_s=rtt_s)
    trace = load_trace(args.trace, duration=args.duration, seed=args.seed)
    setup = digits_setup(device_slowdown=args.device_slowdown, server_speedup=args.server_speedup)
    print(
        tier_replay_report(
            trace,
            link,
            link_spec=args.link,
            setup=setup,
            oracle=args.oracle,
            seed=args.seed,
            device_slowdown=args.device_slowdown,
            server_speedup=args.server_speedup,
        )
    )
    if args.live:
        print(
            f"\nTwo daemons on loopback (RTT {1e3 * rtt_s:g} ms emulated on top; device "
            f"{args.device_slowdown:g}x slower by sleeping; 20 requests per split column, "
            "80 for the cascade):\n"
        )
        print("\n".join(live_table(setup, args.device_slowdown, rtt_s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
