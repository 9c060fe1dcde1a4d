"""What each of EcoGD's additions to the paper's climber is worth, on the paper suite's loads.

EcoGD runs on the fixed and bursty workloads of ``--suite paper`` (one hour each, Xavier NX
twin, the paper's 2 s batching buffer), once per option set and seed; the table gives the mean
cost over the second half of each run against the static oracle (the convergence target is
<= 1.05), and the mean cost over the whole run. Option sets are cumulative: each row adds one
addition to the row above, and the last row is EcoGD's defaults.

With ``--switch``, also what the first and last option sets do when the load changes: an hour
of one workload, then an hour of another; the mean cost over the last 30 minutes against the
second workload's static oracle (on its own baseline), over ``--switch-seeds`` seeds.

    python benchmarks/bench_ecogd_options.py [--seeds 6] [--workers 2] [--switch]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
from dataclasses import replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.runner import ReplayPlan, run_plan
from ecoserve.replay.suite import PAPER_MAX_WAIT_S, PAPER_WORKLOADS
from ecoserve.sim.driver import simulate
from ecoserve.sim.oracle import compute_oracles, renormalised_costs
from traces import load_trace
from twins.fitted import load_twin

#: (label, EcoGD parameters): cumulative, from the climber with probes to the defaults.
OPTION_SETS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "probes only (no scan, no inheritance, losers kept up to 4x)",
        {
            "opening_scan": False,
            "inherit_margin": None,
            "loser_memory": 4.0,
            "follow_load": False,
        },
    ),
    ("+ opening scan", {"inherit_margin": None, "loser_memory": 4.0, "follow_load": False}),
    ("+ inherited batch neighbours", {"loser_memory": 4.0, "follow_load": False}),
    ("+ losers kept up to 6x", {"follow_load": False}),
    ("+ following the load (the defaults)", {}),
)

SWITCHES = (("fixed:50ms", "bursty:10@900ms"), ("bursty:10@500ms", "bursty:10@900ms"))


def after_switch(first: str, second: str, params: dict[str, Any], seeds: int) -> float:
    """Mean of the last 30 minutes' cost / the second workload's static oracle."""
    hour = 3600.0
    a, b = load_trace(first, duration="1h"), load_trace(second, duration="1h")
    arrivals = np.concatenate([a.arrivals, b.arrivals + hour])
    settings = EngineSettings(max_wait_s=PAPER_MAX_WAIT_S, tuner="ecogd", tuner_params=params)
    twin = load_twin("xavier-nx")
    oracle = compute_oracles(b.arrivals, twin, settings, duration_s=b.duration)
    ratios = []
    for seed in range(seeds):
        result = simulate(arrivals, twin, replace(settings, seed=seed))
        last = [r for r in result.reports if r.phase == "tuning" and r.start >= 1.5 * hour]
        costs = renormalised_costs(last, oracle.baseline, settings.alpha)
        ratios.append(float(np.mean(costs)) / oracle.static_cost)
    return statistics.mean(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--switch", action="store_true", help="also the load-switch runs")
    parser.add_argument("--switch-seeds", type=int, default=4)
    args = parser.parse_args()
    workloads = tuple(w for w in PAPER_WORKLOADS if w.kind in ("fixed", "bursty"))
    print(
        f"# bench_ecogd_options {datetime.date.today()} {platform.machine()} "
        f"{platform.python_version()} cpus={os.cpu_count()} seeds={args.seeds}"
    )
    base = ReplayPlan(
        workloads=workloads,
        tuners=("ecogd",),
        seeds=tuple(range(args.seeds)),
        settings=EngineSettings(max_wait_s=PAPER_MAX_WAIT_S),
    )
    labels = [w.label for w in workloads]
    print("\n2nd half / static oracle (mean cost over the whole run)\n")
    print("| EcoGD | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    oracles = None
    for name, params in OPTION_SETS:
        plan = replace(base, settings=replace(base.settings, tuner_params=params))
        result = run_plan(plan, workers=args.workers, oracles=oracles)
        oracles = result.oracles
        cells = []
        for label in labels:
            records = [r for r in result.records if r.workload == label]
            after = statistics.mean(r.ratio_after_static_oracle for r in records)
            mean = statistics.mean(r.mean_cost for r in records)
            cells.append(f"{after:.3f} ({mean:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.switch:
        ends = (OPTION_SETS[0], OPTION_SETS[-1])
        print("\nlast 30 minutes after a switch / the new load's static oracle\n")
        print("| switch | " + " | ".join(name for name, _ in ends) + " |")
        print("|---|" + "---:|" * len(ends))
        for first, second in SWITCHES:
            cells = [f"{after_switch(first, second, p, args.switch_seeds):.3f}" for _, p in ends]
            print(f"| {first} -> {second} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
