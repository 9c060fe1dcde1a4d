"""The fleet replay's figures against the same decisions replayed request by request.

A small fleet (default 2 Orin, 2 Xavier NX, 2 Nano) over a compressed day (the diurnal
envelope's period shortened to ``--day``, so that every request can be replayed), every
policy and parking mode of ``ecoserve replay --fleet``; then each run's decisions are carried
out on individual requests through every board's own engine (``ecoserve.sim.fleet_direct``).
Prints energy per request and p50/p99 from both, and each policy's ratio to all-on at
maximum clocks from both.

Run: ``python benchmarks/bench_fleet_direct.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.fleet import parse_mix, replay_fleet
from ecoserve.sim.board_model import max_rate
from ecoserve.sim.fleet import parking
from ecoserve.sim.fleet_direct import check
from traces import parse_duration
from traces.rates import diurnal
from twins.fitted import load_twin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default="orin:2,xavier-nx:2,nano:2")
    p.add_argument("--day", default="4h", help="period of the diurnal envelope (default 4h)")
    p.add_argument("--slo-ms", type=float, default=250.0)
    p.add_argument("--headroom", type=float, default=0.5, help="consolidation's (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    boards = parse_mix(args.boards)
    day = parse_duration(args.day)
    peak = 0.2 * sum(max_rate(load_twin(b.kind), 16) for b in boards)
    series = diurnal(peak, peak / 10, duration_s=day, day_s=day, seed=args.seed)
    settings = EngineSettings()
    t0 = time.perf_counter()
    result = replay_fleet(
        series,
        boards,
        slo_s=args.slo_ms / 1e3,
        settings=settings,
        headroom=args.headroom,
        workers=2,
    )
    t1 = time.perf_counter()
    parks = {m: parking(m, result.models["ecogd"]) for m in ("off", "min-clocks")}
    direct = check(result.runs, boards, series, parks, settings, seed=args.seed)
    t2 = time.perf_counter()
    print(series.describe())
    print(f"fleet replay {t1 - t0:.0f} s; direct replay of every run {t2 - t1:.0f} s\n")
    base_m = result.by("all-on-max", "none")
    base_d = direct["all-on-max/none"]
    assert base_m is not None
    print(
        "| policy | parking | J/req model | J/req direct | x max-RR model | x max-RR direct "
        "| p50 ms model / direct | p99 ms model / direct |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in result.runs:
        d = direct[f"{run.policy}/{run.parking}"]
        print(
            f"| {run.policy} | {run.parking} | {run.joules_per_request:.4f} | "
            f"{d.joules_per_request:.4f} | "
            f"{run.joules_per_request / base_m.joules_per_request:.3f} | "
            f"{d.joules_per_request / base_d.joules_per_request:.3f} | "
            f"{run.latency_quantile_s(50) * 1e3:.0f} / {d.quantile_s(50) * 1e3:.0f} | "
            f"{run.latency_quantile_s(99) * 1e3:.0f} / {d.quantile_s(99) * 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
