"""Harvesting the troughs on one board: the load suite with a background job in the slot.

Each workload of ``--suite load`` (an hour each) is replayed on the twin four times: serving
alone, the engine's background slot, steps whenever the queue is empty (no gap prediction),
and a model of the job as a separate process at nice 19 (see ``ecoserve.replay.harvest``).
Targets: capacity >= 0.70, serving p99 <= 1.1x and serving cost <= 1.02x of serving alone,
and the slot's joules per item with its tuned clocks <= 0.8x at maximum clocks.

    python benchmarks/bench_harvest.py [--delay-s 0.02] [--cut-s 3600] [--job SPEC]
    python benchmarks/bench_harvest.py --seeds 0,1,2          # medians over serving seeds
    python benchmarks/bench_harvest.py --tuner fixed          # serving's configuration fixed

The serving cost ratio moves with any change in latency, because the serving tuner's
trajectory follows what it measures: with ``--seeds`` each seed (serving tuner and the twin's
noise) is replayed and the per-arm medians and ranges are printed after the tables; with
``--tuner fixed`` serving's configuration never moves and the ratio is the slot's own effect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from ecoserve.core.assembly import EngineSettings
from ecoserve.core.harvest import HarvestSettings
from ecoserve.replay.harvest import (
    ARMS,
    HarvestReport,
    background_cost,
    harvest_replay,
    render,
)
from ecoserve.replay.suite import LOAD_WORKLOADS, PAPER_MAX_WAIT_S
from twins.fitted import load_twin


def summary(reports: list[HarvestReport]) -> str:
    """Per arm over every workload and seed: the median and range of each ratio."""
    lines = ["arm          capacity (median, range)  p99 x               cost x"]
    for arm in ARMS[1:]:
        rows = [rep.row(arm) for rep in reports if any(r.arm == arm for r in rep.rows)]
        parts = []
        for key in ("capacity", "p99_ratio", "serving_cost"):
            vals = [getattr(r, key) for r in rows]
            parts.append(f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})")
        lines.append(f"{arm:<12} " + "  ".join(f"{x:<20}" for x in parts))
    tuned = [rep.tuned_vs_max_j for rep in reports]
    lines.append(
        f"tuned slot J/item vs maximum clocks: median {statistics.median(tuned):.3f} "
        f"({min(tuned):.3f}-{max(tuned):.3f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="xavier-nx")
    p.add_argument("--job", default="builtin:digits-finetune")
    p.add_argument("--tuner", default="ecogd", help="the serving tuner")
    p.add_argument("--delay-s", type=float, default=0.02, help="the slot's delay bound")
    p.add_argument("--cut-s", type=float, default=None, help="replay only this much of each")
    p.add_argument("--seeds", default="0", help="comma-separated serving seeds (default 0)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    twin = load_twin(args.device)
    cost = background_cost(args.job, twin)
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. 0,1,2")
    slot = HarvestSettings(max_delay_s=args.delay_s)
    reports = []
    for seed in seeds:
        settings = replace(EngineSettings(max_wait_s=PAPER_MAX_WAIT_S), tuner=args.tuner, seed=seed)
        for w in LOAD_WORKLOADS:
            trace = w.load(seed=0)
            if args.cut_s is not None:
                trace = trace.cut(args.cut_s)
            t0 = time.perf_counter()
            label = w.label if len(seeds) == 1 else f"{w.label} s{seed}"
            reports.append(
                harvest_replay(trace.arrivals, twin, settings, cost, workload=label, harvest=slot)
            )
            print(f"{label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(render(reports))
    print(
        f"job cost on {args.device}: {cost.fixed_s * 1e3:.3f} ms + "
        f"{cost.per_item_s * 1e3:.4f} ms/item"
    )
    print(summary(reports))
    if args.out is not None:
        rows = [
            {**r.as_dict(), "tuned_vs_max_j": rep.tuned_vs_max_j}
            for rep in reports
            for r in rep.rows
        ]
        args.out.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
