"""One capacity, two measurements: a live virtual board's estimate beside the replay's figure.

A board's capacity is the highest arrival rate it serves within the fleet's latency target
under its own tuner (``ecoserve.core.fleet``). The replay measures it on the board's model
(``BoardModel.capacity``: the highest calibrated rate whose p99 is within the target). A live
board estimates it from its own batch times (``capacity_rps`` over the line its batches fit).
Here each board kind runs live, as a fleet board does (its ``BoardService`` on the virtual
device at its twin's pace, EcoGD with the fleet's p99 target), under Poisson arrivals at
``--load`` of its replay capacity; its estimate is printed beside the replay's, with the p99
the live board kept.

Run: ``python benchmarks/bench_fleet_capacity.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.core.fleet import DEFAULTS, FleetParams, capacity_rps
from ecoserve.rayfleet.board import BoardService
from ecoserve.server.service import ServiceError
from ecoserve.server.settings import ServeSettings
from ecoserve.sim.board_model import calibrate


async def live(kind: str, rate: float, seconds: float, slo_s: float) -> dict[str, float]:
    """Serve Poisson arrivals at ``rate`` on a live virtual board; its estimate and p99."""
    settings = ServeSettings(
        device=f"virtual:{kind}",
        torch_threads=1,
        slo_latency_s=slo_s,
        slo_percentile=99.0,
        watchdog_s=None,
    )
    board = BoardService(f"{kind}-0", settings)
    await board.start()
    model = board.service.model
    assert model is not None  # a board serves one model
    item = model.example_item()
    latencies: list[float] = []
    rejected = 0

    async def one() -> None:
        nonlocal rejected
        t0 = time.monotonic()
        try:
            await board.infer([item])
        except ServiceError:  # queue full: the host cannot keep the twin's pace
            rejected += 1
            return
        latencies.append(time.monotonic() - t0)

    rng = random.Random(0)
    tasks = []
    start = time.monotonic()
    due = start
    try:
        while due - start < seconds:
            due += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        st = board.stats()
    finally:
        await board.close()
    line = st["batch_line_s"]
    params = FleetParams(slo_s=slo_s)
    return {
        "capacity": capacity_rps((line[0], line[1]), st["max_batch"], params),
        "t1_ms": 1e3 * (line[0] + line[1]),
        "t_max_ms": 1e3 * (line[0] + line[1] * st["max_batch"]),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "sent": (len(latencies) + rejected) / (time.monotonic() - start),
        "rejected": rejected,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="nano,xavier-nx,orin")
    p.add_argument("--load", type=float, default=0.5, help="share of the replay's capacity")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--slo-s", type=float, default=DEFAULTS.slo_s)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    settings = EngineSettings(tuner="ecogd", slo_latency_s=args.slo_s, slo_percentile=99.0)
    print(f"p99 target {args.slo_s * 1e3:g} ms; live load {args.load:g} x the replay capacity")
    print(
        "| kind | replay capacity | live estimate | live / replay | live t(1) ms | live t(16) ms "
        "| live req/s sent | live p99 ms | rejected |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.kinds.split(","):
        model = calibrate(kind, "ecogd", settings, workers=args.workers)
        replay = model.capacity(args.slo_s)
        got = asyncio.run(live(kind, args.load * replay, args.seconds, args.slo_s))
        print(
            f"| {kind} | {replay:.1f} | {got['capacity']:.1f} | {got['capacity'] / replay:.2f} "
            f"| {got['t1_ms']:.1f} | {got['t_max_ms']:.1f} | {got['sent']:.1f} "
            f"| {got['p99_ms']:.0f} | {got['rejected']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
