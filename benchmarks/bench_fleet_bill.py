"""The whole bill's sensitivity: parked draw x ingress host x wake time, one model measurement.

The fleet replay's published day (``ecoserve replay --fleet`` with its default trace on
``--boards``), consolidation and the oracle with powered-off parking, over a grid of the
three figures the bill assumes (``ecoserve.sim.fleet.Bill``): a powered-off board's draw, the
ingress host's draw, and a board's time from power-on to serving. The board models are
measured once (they do not depend on any of the three); each (wake, parked draw) pair is a
fleet run of its own, and the ingress host, always on, adds its draw times the day to every
run alike, so it is billed on the runs without re-running them.

Prints two Markdown tables: tails and rejected requests per wake time (the parked draw and
the ingress host change no decision), and the energy ratios over all-on at maximum clocks
and over all-on with EcoGD on every board, both with the ingress host in the bill.

Run: ``python benchmarks/bench_fleet_bill.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.fleet import measure_models, parse_mix, replay_measured
from ecoserve.sim.board_model import max_rate
from ecoserve.sim.fleet import Bill, FleetRun
from traces.rates import diurnal
from twins.fitted import load_twin


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default="orin:20,xavier-nx:20,nano:20")
    p.add_argument("--parked-w", default="0.5,2,5", help="powered-off draws to try (W)")
    p.add_argument("--ingress-w", default="0,20,40,100", help="ingress host draws to try (W)")
    p.add_argument("--wake-s", default="45,90,180", help="wake-to-serving times to try (s)")
    p.add_argument("--slo-ms", type=float, default=250.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    parked, ingress, wakes = floats(args.parked_w), floats(args.ingress_w), floats(args.wake_s)
    for w in ingress:  # refused before the models are measured
        Bill(ingress_w=w)
    boards = parse_mix(args.boards)
    kinds = sorted({b.kind for b in boards})
    slo_s = args.slo_ms / 1e3
    peak = 0.2 * sum(max_rate(load_twin(b.kind), 16) for b in boards)
    series = diurnal(peak, peak / 10, seed=args.seed)
    t0 = time.perf_counter()
    models = measure_models(kinds, EngineSettings(), slo_s, workers=2)
    t1 = time.perf_counter()
    base = replay_measured(
        series,
        boards,
        models,
        slo_s=slo_s,
        parking_modes=("off",),
        policies=(),
        bill=Bill(ingress_w=0.0),
    )
    all_max = base.by("all-on-max", "none")
    all_eco = base.by("all-on-ecogd", "none")
    assert all_max is not None and all_eco is not None
    runs: dict[tuple[float, float, str], FleetRun] = {}
    for wake in wakes:
        for off_w in parked:
            bill = Bill(ingress_w=0.0, off_w=off_w, wake_s=wake)
            got = replay_measured(
                series,
                boards,
                models,
                slo_s=slo_s,
                parking_modes=("off",),
                policies=("consolidation", "oracle"),
                bill=bill,
                baselines=False,
            )
            for run in got.runs:
                runs[(wake, off_w, run.policy)] = run
    t2 = time.perf_counter()
    print(series.describe())
    print(
        f"board models {t1 - t0:.0f} s; {len(runs) + 2} fleet runs {t2 - t1:.0f} s "
        f"({len(parked) * len(ingress) * len(wakes)} bills)\n"
    )
    print("| wake s | policy | p99 ms | SLO violations | rejected requests | boards awake (mean) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for wake in wakes:
        for policy in ("consolidation", "oracle"):
            r = runs[(wake, parked[0], policy)]
            print(
                f"| {wake:g} | {policy} | {r.latency_quantile_s(99) * 1e3:,.0f} | "
                f"{100 * r.slo_violations:.3f}% | {r.rejected:,.0f} | {r.awake.mean():.1f} |"
            )
    print()
    head = " | ".join(f"{p} {w:g} s" for w in wakes for p in ("consolidation", "oracle"))
    print(f"| parked W | ingress W | {head} |")
    print("| ---: | ---: |" + " ---: |" * (2 * len(wakes)))
    for off_w in parked:
        for w_in in ingress:
            mx = replace(all_max, ingress_w=w_in)
            eco = replace(all_eco, ingress_w=w_in)
            cells = []
            for wake in wakes:
                for policy in ("consolidation", "oracle"):
                    r = replace(runs[(wake, off_w, policy)], ingress_w=w_in)
                    cells.append(
                        f"{r.bill_joules_per_request / mx.bill_joules_per_request:.3f} / "
                        f"{r.bill_joules_per_request / eco.bill_joules_per_request:.3f}"
                    )
            print(f"| {off_w:g} | {w_in:g} | " + " | ".join(cells) + " |")
    print(
        "\ncells: energy per request over all-on at max clocks / over all-on with EcoGD, "
        "the ingress host in every bill; all-on max "
        f"{all_max.joules_per_request:.4f} J/req and all-on EcoGD "
        f"{all_eco.joules_per_request:.4f} J/req for the boards alone, p99 "
        f"{all_max.latency_quantile_s(99) * 1e3:.0f} / {all_eco.latency_quantile_s(99) * 1e3:.0f}"
        " ms"
    )


if __name__ == "__main__":
    main()
