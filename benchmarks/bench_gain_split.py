"""Where the gain over all-maximum comes from: batch size, CPU clock, GPU clock, timer.

For each board's twin and workload, the best static configuration is found in nested spaces,
each freeing one more knob, and the cost of the best one is read off the oracle's vectorised
replay (``ecoserve.sim.oracle.estimate_windows``: every configuration over every window, noise
free, request-weighted over the whole run, on the workload's reference baseline: all clocks at
maximum, batch 16, the paper's 2 s buffer, whose cost is 1):

1. batch size alone, both clocks at maximum (what ``jetson_clocks`` plus a tuned batch gives);
2. + the CPU clock;
3. + the GPU clock (the static oracle over the three knobs);
4. + the batching timer, the best of ``--timers`` (default ``TIMERS``; each a separate replay).

Each knob's contribution is the drop of cost (and of joules per request) it adds to the row
above. These are estimates (the replay restarts every window from an empty queue), the same
ones the oracles rank configurations by; the static oracle validates its best by simulation.

    python benchmarks/bench_gain_split.py [--boards xavier-nx,orin] [--suites load,paper]
        [--timers 0.05,0.2,0.5,2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_space
from ecoserve.core.knobs import BATCH, CPU, GPU
from ecoserve.replay.suite import PAPER_MAX_WAIT_S, suite
from ecoserve.sim.oracle import config_table, estimate_windows, reference_baseline, window_costs
from twins.fitted import load_twin

#: Batching timers tried for the last row (seconds): the daemon's default up to the paper's.
TIMERS = (0.05, 0.2, 0.5, 1.0, 2.0)


def best_in(
    costs: np.ndarray, energy: np.ndarray, mask: np.ndarray, weights: np.ndarray
) -> tuple[float, float]:
    """The lowest request-weighted cost among ``mask``'s configurations, with its J/request."""
    cost = (costs * weights).sum(axis=1) / weights.sum()
    joules = (energy * weights).sum(axis=1) / weights.sum()
    row = int(np.flatnonzero(mask)[np.argmin(cost[mask])])
    return float(cost[row]), float(joules[row])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="xavier-nx,agx-xavier,nano,orin")
    parser.add_argument("--suites", default="load,paper")
    parser.add_argument(
        "--timers", default=",".join(f"{t:g}" for t in TIMERS), help="seconds, comma list"
    )
    args = parser.parse_args()
    timers = tuple(float(t) for t in args.timers.split(","))
    print(
        f"# bench_gain_split {datetime.date.today()} {platform.machine()} "
        f"{platform.python_version()} cpus={os.cpu_count()} timers={timers}"
    )
    print(
        "\ncost (J/request) of the best static configuration as knobs are freed; "
        "the gain of each knob is the drop from the column before\n"
    )
    print(
        "| board | workload | all-max | + batch | + CPU clock | + GPU clock | + timer (best) "
        "| gain: batch / CPU / GPU / timer |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    settings = EngineSettings(max_wait_s=PAPER_MAX_WAIT_S)
    workloads = [w for name in args.suites.split(",") for w in suite(name)]
    for board in args.boards.split(","):
        twin = load_twin(board)
        space = build_space(twin.knobs(), settings)
        table = config_table(twin, space)
        top = space.maximum()
        axes = {name: space.axis(name) for name in (CPU, GPU, BATCH)}
        at_top = {name: table.configs[:, a] == top[a] for name, a in axes.items()}
        masks = [
            at_top[CPU] & at_top[GPU] & at_top[BATCH],
            at_top[CPU] & at_top[GPU],
            at_top[GPU],
            np.ones(len(table.configs), dtype=bool),
        ]
        for workload in workloads:
            trace = workload.load(seed=0)
            baseline, _ = reference_baseline(trace.arrivals, twin, settings)
            rows: list[tuple[float, float]] = []
            by_timer = []
            tried = list(dict.fromkeys((*timers, settings.max_wait_s)))  # the suite's always
            for timer in tried:
                est = estimate_windows(
                    table,
                    trace.arrivals,
                    window_requests=settings.window_requests or 416,
                    max_wait=timer,
                    accounting=settings.accounting,
                    duration_s=trace.duration,
                )
                costs = window_costs(est, baseline, settings.alpha)
                energy = est.energy_per_request_j
                if timer == settings.max_wait_s:
                    rows = [best_in(costs, energy, m, est.requests) for m in masks]
                by_timer.append(best_in(costs, energy, masks[-1], est.requests))
            rows.append(min(by_timer))
            cells = [f"{c:.3f} ({j:.4f})" for c, j in rows]
            gains = [rows[k][0] - rows[k + 1][0] for k in range(len(rows) - 1)]
            timer = tried[by_timer.index(min(by_timer))]
            print(
                f"| {board} | {workload.label} | {' | '.join(cells[:-1])} | "
                f"{cells[-1]} at {timer:g} s | "
                f"{' / '.join(f'{g:.3f}' for g in gains)} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
