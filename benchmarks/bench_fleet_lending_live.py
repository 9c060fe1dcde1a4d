"""Live: a Ray Serve fleet lends its parked boards to a training job and wakes them for load.

``live`` (the default): a fleet of virtual boards on a local Ray cluster (each board a Ray
custom resource on this one node) with a ``[lend]`` table. A warm-up load wakes every board
so each has a live capacity estimate (``capacity_rps``: the highest rate it serves within
the fleet's ``slo_s``, from its own batch times); then nothing is sent until the policy has
parked the idle boards, they are lent, and the job has taken ``--idle-steps`` steps. Then a
load at ``--load`` times the rate that needs every board (the sum of the boards' estimates
divided by ``1 + headroom``, the policy's margin) for ``--load-s``: the policy wakes the lent
boards, each leaves the job at a step boundary and serves. After the load the script idles
again until a board is lent back and the job goes on from the step it had reached. Every
request must be answered 200; the exit status says whether it was.

``compare``: the job alone on ``--boards`` lent boards (no serving), plain all-reduce every
step against SoCFlow's groups (``--group-size``, every ``--k`` steps across groups), in
alternating order, ``--repeats`` times each.

Ray shares this host's cores with everything else on it: run it when no other benchmark
runs. Run: ``python benchmarks/bench_fleet_lending_live.py`` (about 2 minutes on 2 cores);
``python benchmarks/bench_fleet_lending_live.py compare`` (about 1.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve

from ecoserve.background.checkpoint import load_checkpoint
from ecoserve.background.data_parallel import LendSettings
from ecoserve.rayfleet.app import build_fleet
from ecoserve.rayfleet.config import FleetSettings
from ecoserve.rayfleet.lending import LentTraining

#: The request every load sends: one CIFAR-sized image for the built-in CNN.
BODY = {"input": [[[0.5] * 32] * 32] * 3}


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


class Clock:
    """Seconds since the run began, on every line printed."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def status(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.get("/v1/status", timeout=30)
    reply.raise_for_status()
    out: dict[str, Any] = reply.json()
    return out


async def wait_for(
    client: httpx.AsyncClient,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    what: str,
) -> dict[str, Any]:
    """Poll ``/v1/status`` until ``done`` says so; the last status either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await status(client)
        if done(st) or time.monotonic() > deadline:
            if not done(st):
                print(f"  (gave up waiting for {what} after {timeout_s:g} s)", flush=True)
            return st
        await asyncio.sleep(0.5)


async def send(
    client: httpx.AsyncClient,
    rate: float,
    seconds: float,
    codes: list[int],
    seed: int,
    latencies: list[float] | None = None,
) -> float:
    """Poisson arrivals at ``rate`` for ``seconds``, open loop; waits for every answer.

    Returns the seconds until the last answer came."""

    async def one() -> None:
        sent = time.monotonic()
        try:
            reply = await client.post("/v1/infer", json=BODY, timeout=300)
            codes.append(reply.status_code)
        except httpx.HTTPError:
            codes.append(-1)
        if latencies is not None:
            latencies.append(time.monotonic() - sent)

    rng = random.Random(seed)
    tasks = []
    start = due = time.monotonic()
    while True:
        due += rng.expovariate(rate)
        if due - start >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return time.monotonic() - start


def lend_summary(lend: Mapping[str, Any]) -> str:
    acc0, acc = lend.get("accuracy_start"), lend.get("accuracy")
    accuracy = "n/a" if acc0 is None or acc is None else f"{acc0:.3f} -> {acc:.3f}"
    return (
        f"members {lend.get('members')} step {lend.get('step')} steps by board "
        f"{lend.get('steps_by_board')} accuracy {accuracy} error {lend.get('error')}"
    )


def recall_times(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each recall's seconds until its board left, and the step it left at; a board recalled
    before its replica joined had nothing to leave (the lend was withdrawn)."""
    asked: dict[str, float] = {}
    joined: set[str] = set()
    out = []
    for e in events:
        board = e["board"]
        if e["event"] == "joined":
            joined.add(board)
        elif e["event"] == "recall" and board not in joined:
            out.append(f"{board} recalled before it joined: its lend withdrawn")
        elif e["event"] == "recall":
            asked[board] = float(e["t"])
        elif e["event"] == "left":
            joined.discard(board)
            if board in asked:
                took = float(e["t"]) - asked.pop(board)
                out.append(f"{board} left at step {e.get('step')} {took * 1e3:.0f} ms after recall")
    return out + [f"{board}: recalled, not left yet" for board in asked]


def fleet_settings(args: argparse.Namespace, state_dir: str) -> FleetSettings:
    return FleetSettings.from_args(
        {
            "boards": args.boards,
            "period_s": args.period_s,
            "park_after_s": args.park_after_s,
            "headroom": args.headroom,
            "slo_s": args.slo_s,
            "state_dir": state_dir,
            "serve": {
                "window_requests": 16,
                "warmup_requests": 4,
                "window_seconds": 1.0,
                "max_batch": args.max_batch,
            },
            "lend": {
                "group_size": args.group_size,
                "k": args.k,
                "eval_every": args.eval_every,
                "options": {"lr": args.lr},
            },
        }
    )


async def scenario(args: argparse.Namespace, url: str, fleet: FleetSettings, say: Clock) -> bool:
    """Warm-up, idle (boards lent), load (boards recalled), idle (lent again)."""
    codes: list[int] = []
    async with httpx.AsyncClient(base_url=url) as client:
        st = await wait_for(client, lambda s: bool(s["ready"]), 300, "the fleet to be ready")
        say(f"ready; counts {st['counts']}; {loadavg()}")

        took = await send(client, args.warmup_rate, args.warmup_s, codes, seed=1)
        st = await status(client)
        caps = {n: b["capacity_rps"] for n, b in st["boards"].items()}
        say(f"warm-up {args.warmup_rate:g} req/s for {took:.1f} s; capacity estimates {caps}")

        began, warm_step = time.monotonic(), int(st["lending"]["step"])
        st = await wait_for(
            client,
            lambda s: (
                len(s["lending"]["members"]) >= 1
                and s["lending"]["step"] >= warm_step + args.idle_steps
            ),
            args.idle_timeout_s,
            f"{args.idle_steps} steps on lent boards",
        )
        lend = st["lending"]
        say(
            f"idle {time.monotonic() - began:.1f} s: counts {st['counts']}; "
            f"{lend_summary(lend)}; {loadavg()}"
        )
        lent = set(lend["members"])
        step_before = int(lend["step"])

        total = sum(float(b["capacity_rps"]) for b in st["boards"].values())
        rate = args.load * total / (1.0 + fleet.headroom)
        say(
            f"load: {args.load:g} x {total:.1f} req/s (the boards' estimates) / "
            f"(1 + headroom {fleet.headroom:g}) = {rate:.1f} req/s for {args.load_s:g} s"
        )
        load_began = time.monotonic()  # the ingress's event clock (monotonic, this host)
        n_before = len(codes)
        latencies: list[float] = []
        took = await send(client, rate, args.load_s, codes, seed=2, latencies=latencies)
        st = await status(client)
        lend = st["lending"]
        sent = len(codes) - n_before
        p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
        woke: dict[str, float] = {}
        for e in st["events"]:  # each lent board's first "up" after the load began
            if e["event"] == "up" and e["board"] in lent and e["board"] not in woke:
                if e["t"] >= load_began:
                    woke[e["board"]] = round(float(e["t"]) - load_began, 1)
        say(
            f"load done: {sent} requests in {took:.1f} s (last answer included), latency p50 "
            f"{p50:.0f} ms p99 {p99:.0f} ms; counts {st['counts']}; lent boards serving "
            f"{woke or 'never'} s into the load; {loadavg()}"
        )
        say(f"lending: {lend_summary(lend)}")
        for line in recall_times(lend["events"]):
            say(f"  recall: {line}")
        for name, t in st["wake_timings"].items():
            parts = {k: round(v, 2) for k, v in t.items() if k != "at" and v is not None}
            say(f"  wake {name}: {parts}")

        began = time.monotonic()
        st = await wait_for(
            client,
            lambda s: (
                len(s["lending"]["members"]) >= 1
                and s["lending"]["step"] >= int(lend["step"]) + args.idle_steps // 2
            ),
            args.idle_timeout_s,
            "a board lent again",
        )
        lend = st["lending"]
        say(
            f"idle again {time.monotonic() - began:.1f} s: counts {st['counts']}; "
            f"{lend_summary(lend)}; {loadavg()}"
        )
        say("fleet events: " + ", ".join(f"{e['board']} {e['event']}" for e in st["events"]))
        say(
            "lend events: "
            + ", ".join(
                f"{e['board']} {e['event']}" + (f"@{e['step']}" if "step" in e else "")
                for e in lend["events"]
            )
        )
        evals = [(int(e["step"]), round(e["accuracy"], 3)) for e in lend["evaluations"]]
        say(f"evaluations (step, accuracy): {evals}")
    bad = sorted({c for c in codes if c != 200})
    say(f"requests {len(codes)}, not 200: {bad or 'none'}")
    went_on = int(lend["step"]) > step_before and lend["error"] is None
    return not bad and went_on


def live(args: argparse.Namespace) -> int:
    say = Clock()
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="ecoserve-lend-")
    fleet = fleet_settings(args, state_dir)
    port = free_port()
    say(f"{args.boards}, lend group_size {args.group_size} k {args.k}; {loadavg()}")
    ray.init(
        address="local",  # a cluster of its own, never one already running here
        num_cpus=2,
        resources={b.resource: 1 for b in fleet.boards},
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_fleet(fleet), name="fleet-lend", route_prefix="/")
        ok = asyncio.run(scenario(args, f"http://127.0.0.1:{port}", fleet, say))
    finally:
        serve.shutdown()  # the ingress stops the job: it saves its checkpoint
        ray.shutdown()
    ckpt_path = Path(state_dir) / "lend.ckpt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        say(f"checkpoint at stop: step {ckpt.step}, metric {ckpt.metric}")
    else:
        say("no checkpoint at stop")
        ok = False
    say(f"{'OK' if ok else 'FAILED'}; {loadavg()}")
    return 0 if ok else 1


def compare(args: argparse.Namespace) -> int:
    """All-reduce every step against groups with delayed aggregation, same boards."""
    say = Clock()
    boards = [f"board{i}" for i in range(args.lent)]
    say(f"{args.lent} lent boards, {args.steps} steps each run; {loadavg()}")
    ray.init(
        address="local",
        num_cpus=2,
        resources={f"board_{b}": 1 for b in boards},
        include_dashboard=False,
        log_to_driver=False,
    )
    ok = True
    try:
        plans: list[tuple[int | None, int]] = [(None, 1), (args.group_size, args.k)]
        for _ in range(args.repeats):
            for group_size, k in plans:
                settings = LendSettings(
                    group_size=group_size, k=k, eval_every=args.eval_every, options={"lr": args.lr}
                )
                training = LentTraining(settings)
                began = time.monotonic()
                for b in boards:
                    training.lend(b)
                while training.status()["step"] < 4 and time.monotonic() - began < 180:
                    time.sleep(0.02)
                s0, t0 = int(training.status()["step"]), time.monotonic()
                while training.status()["step"] < s0 + args.steps and time.monotonic() - t0 < 120:
                    time.sleep(0.02)
                dt = time.monotonic() - t0
                st = training.stop()
                ok = ok and st["error"] is None
                say(
                    f"group_size={group_size} k={k}: started in {t0 - began:.1f} s; "
                    f"{(st['step'] - s0) / dt:.1f} steps/s over steps {s0}-{st['step']}; "
                    f"step {st['step_s'] * 1e3:.1f} ms, average {st['sync_s'] * 1e3:.1f} ms "
                    f"(means of the last 20); accuracy {st['accuracy_start']:.3f} -> "
                    f"{st['accuracy']:.3f}; error {st['error']}; {loadavg()}"
                )
    finally:
        ray.shutdown()
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", choices=("live", "compare"), default="live")
    p.add_argument("--group-size", type=int, default=2, help="boards per group")
    p.add_argument("--k", type=int, default=4, help="steps between cross-group averages")
    p.add_argument("--eval-every", type=int, default=4, help="steps between evaluations")
    p.add_argument("--lr", type=float, default=0.02, help="the job's learning rate")
    live_ = p.add_argument_group("live")
    live_.add_argument("--boards", default="xavier-nx:2,nano:1")
    live_.add_argument("--period-s", type=float, default=0.5, help="the policy's period")
    live_.add_argument("--park-after-s", type=float, default=2.0)
    live_.add_argument("--headroom", type=float, default=0.5, help="the policy's margin")
    live_.add_argument("--slo-s", type=float, default=0.25, help="the fleet's p99 target")
    live_.add_argument("--max-batch", type=int, default=8)
    live_.add_argument("--warmup-rate", type=float, default=8.0)
    live_.add_argument("--warmup-s", type=float, default=6.0)
    live_.add_argument("--idle-steps", type=int, default=12, help="job steps before the load")
    live_.add_argument("--idle-timeout-s", type=float, default=240.0)
    live_.add_argument("--load", type=float, default=1.1, help="x the rate needing every board")
    live_.add_argument("--load-s", type=float, default=10.0)
    live_.add_argument("--state-dir", default=None, help="the fleet's folder (default: a new one)")
    cmp_ = p.add_argument_group("compare")
    cmp_.add_argument("--lent", type=int, default=3, help="boards lent to the job")
    cmp_.add_argument("--steps", type=int, default=60, help="steps timed per run")
    cmp_.add_argument("--repeats", type=int, default=2)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.group_size < 1 or args.k < 1 or args.lent < 1 or args.steps < 1:
        parser().error("--group-size, --k, --lent and --steps must be >= 1")
    if args.load <= 0 or args.load_s <= 0 or args.warmup_rate <= 0 or args.warmup_s <= 0:
        parser().error("--load, --load-s, --warmup-rate and --warmup-s must be > 0")
    return live(args) if args.mode == "live" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
