"""How fast EcoGD is back at a new load level's optimum after a step change of the rate.

The load is ``step:8,24@10m`` for an hour (Poisson at 8 then 24 req/s, each held 10 minutes,
so five step changes and every level met three times), on each board's twin with the paper's
2 s batching buffer. The new level's oracle is the best static configuration for that level's
arrivals alone, estimated by the oracle's vectorised replay (``ecoserve.sim.oracle``) on the
workload's reference baseline. After each change, the recovery is the number of tuning windows
from the first one that starts after the change until the first one from which three windows
in a row average within 5% of that level's oracle ("never" when the level ends first). Also
the run cost over every request against the dynamic oracle's. Tuners: EcoGD (defaults), EcoGD
with the load-following off, and the original climber.

    python benchmarks/bench_load_following.py [--boards xavier-nx,orin] [--seeds 3]
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

from ecoserve.core.assembly import EngineSettings, build_space
from ecoserve.core.cost import Baseline
from ecoserve.replay.suite import PAPER_MAX_WAIT_S
from ecoserve.sim.driver import simulate
from ecoserve.sim.oracle import (
    config_table,
    estimate_windows,
    reference_baseline,
    renormalised_costs,
    run_cost,
    run_energy,
    window_costs,
)
from traces import load_trace
from twins.fitted import load_twin

SPEC, PERIOD_S, DURATION = "step:8,24@10m", 600.0, "1h"
#: Windows in a row that must average within the tolerance, and the tolerance.
RUN, TOLERANCE = 3, 0.05
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("EcoGD", "ecogd", {}),
    ("EcoGD, load-following off", "ecogd", {"follow_load": False}),
    ("original climber", "ecogd-original", {}),
)


def level_oracles(
    arrivals: np.ndarray, twin: Any, settings: EngineSettings, baseline: Baseline
) -> tuple[list[float], float]:
    """Each level's best static cost (estimated) and the dynamic oracle's run cost."""
    table = config_table(twin, build_space(twin.knobs(), settings))
    levels, best_total, requests = [], 0.0, 0.0
    for start in np.arange(0.0, float(arrivals[-1]) + 1e-9, PERIOD_S):
        part = arrivals[(arrivals >= start) & (arrivals < start + PERIOD_S)]
        est = estimate_windows(
            table,
            part - start,
            window_requests=settings.window_requests or 416,
            max_wait=settings.max_wait_s,
            accounting=settings.accounting,
        )
        costs = window_costs(est, baseline, settings.alpha)
        per_config = (costs * est.requests).sum(axis=1) / est.requests.sum()
        levels.append(float(per_config.min()))
        best_total += float((costs.min(axis=0) * est.requests).sum())
        requests += float(est.requests.sum())
    return levels, best_total / requests


def recoveries(
    reports: list[Any], baseline: Baseline, alpha: float, levels: list[float]
) -> list[int | None]:
    """Windows after each change until ``RUN`` windows average within tolerance of the oracle."""
    tuning = [r for r in reports if r.phase == "tuning"]
    out: list[int | None] = []
    for k in range(1, len(levels)):
        start, end = k * PERIOD_S, (k + 1) * PERIOD_S
        level = [r for r in tuning if r.start >= start and r.end <= end]
        costs = renormalised_costs(level, baseline, alpha)
        limit = (1.0 + TOLERANCE) * levels[k]
        hit = next(
            (i + 1 for i in range(len(costs) - RUN + 1) if costs[i : i + RUN].mean() <= limit),
            None,
        )
        out.append(hit)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default="xavier-nx,agx-xavier,nano,orin")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# bench_load_following {datetime.date.today()} {platform.machine()} "
        f"{platform.python_version()} cpus={os.cpu_count()} seeds={args.seeds} load={SPEC}"
    )
    print(
        "\n| board | tuner | recovery windows per change (median over seeds) | "
        "median | worst | run cost / dynamic oracle |"
    )
    print("|---|---|---|---:|---:|---:|")
    trace = load_trace(SPEC, duration=DURATION)
    settings = EngineSettings(max_wait_s=PAPER_MAX_WAIT_S)
    for board in args.boards.split(","):
        twin = load_twin(board)
        baseline, _ = reference_baseline(trace.arrivals, twin, settings)
        levels, dynamic = level_oracles(trace.arrivals, twin, settings, baseline)
        for label, tuner, params in VARIANTS:
            per_seed, ratios = [], []
            for seed in range(args.seeds):
                run_settings = replace(settings, tuner=tuner, tuner_params=params, seed=seed)
                result = simulate(trace.arrivals, twin, run_settings)
                per_seed.append(recoveries(result.reports, baseline, settings.alpha, levels))
                energy = run_energy(result, settings.accounting)
                ratios.append(
                    run_cost(energy, result.latencies, baseline, settings.alpha) / dynamic
                )
            cells: list[str] = []
            flat: list[float] = []
            for change in zip(*per_seed, strict=True):
                done = [w for w in change if w is not None]
                flat.extend(w if w is not None else float("inf") for w in change)
                cells.append(
                    f"{statistics.median(done):.0f}"
                    if len(done) == len(change)
                    else f"{statistics.median(done):.0f} ({len(change) - len(done)} never)"
                    if done
                    else "never"
                )
            median = statistics.median(flat)
            worst = max(flat)
            print(
                f"| {board} | {label} | {', '.join(cells)} | "
                f"{'never' if median == float('inf') else f'{median:.0f}'} | "
                f"{'never' if worst == float('inf') else f'{worst:.0f}'} | "
                f"{statistics.mean(ratios):.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
