"""What the models save over the plain climber, per board: the guided scan, the capacity
guard, the fill timer.

Every workload of the load and paper suites (the paper's 2 s batching buffer), on each
board's twin, one seed, replayed through the engine five ways, each adding one part:
EcoGD with the plain opening scan (every batch size, largest first) and no guard; with the
scan guided by the fitted cost curve (``tuners.batch_curve``); with the capacity guard of
the batch-time model (``tuners.batch_time``) too, which is EcoGD's default; the default with
the fill timer (``--batch-timer fill``, at most 2 s); and the original climber. Each run is
scored over every request on the workload's reference baseline and against its oracles
(fixed 2 s timer); also the windows the opening scan took, energy per request and the p95
latency.

    python benchmarks/bench_guided.py [--boards xavier-nx,orin] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.controller import WindowReport
from ecoserve.replay.suite import LOAD_WORKLOADS, PAPER_MAX_WAIT_S, PAPER_WORKLOADS, Workload
from ecoserve.sim.driver import Simulator
from ecoserve.sim.oracle import Oracles, compute_oracles, run_cost, run_energy
from twins.fitted import load_twin

BOARDS = ("xavier-nx", "agx-xavier", "nano", "orin")
WORKLOADS: dict[str, Workload] = {w.label: w for w in LOAD_WORKLOADS + PAPER_WORKLOADS}


@dataclass(frozen=True)
class Variant:
    label: str
    tuner: str
    params: tuple[tuple[str, Any], ...] = ()
    batch_timer: str = "fixed"


VARIANTS = (
    Variant("plain", "ecogd", (("guided_scan", False), ("capacity_guard", False))),
    Variant("+ guided scan", "ecogd", (("capacity_guard", False),)),
    Variant("+ capacity guard (default)", "ecogd"),
    Variant("+ fill timer", "ecogd", batch_timer="fill"),
    Variant("original", "ecogd-original"),
)
DEFAULT = "+ capacity guard (default)"


@cache
def _oracles(board: str, label: str) -> Oracles:
    trace = WORKLOADS[label].load(seed=0)
    settings = EngineSettings(max_wait_s=PAPER_MAX_WAIT_S)
    return compute_oracles(
        trace.arrivals, load_twin(board), settings, validate=6, duration_s=trace.duration
    )


def run_one(job: tuple[str, str, Variant]) -> dict[str, Any]:
    board, label, variant = job
    oracles = _oracles(board, label)
    trace = WORKLOADS[label].load(seed=0)
    settings = EngineSettings(
        max_wait_s=PAPER_MAX_WAIT_S,
        tuner=variant.tuner,
        tuner_params=dict(variant.params),
        batch_timer=variant.batch_timer,
    )
    twin = load_twin(board)
    engine = build_engine(twin.knobs(), settings)
    scanning: list[bool] = []

    def seen(report: WindowReport) -> None:
        if report.phase == "tuning":
            scanning.append(bool(engine.tuner.describe().get("scanning")))

    result = Simulator(twin, engine, noise_seed=settings.seed).run(trace.arrivals, seen)
    energy = run_energy(result, settings.accounting)
    cost = run_cost(energy, result.latencies, oracles.baseline, settings.alpha)
    return {
        "board": board,
        "workload": label,
        "variant": variant.label,
        "cost": cost,
        "dynamic": cost / oracles.dynamic_run_cost,
        "static": cost / oracles.static_run_cost,
        "j_per_req": energy / max(1, result.served),
        "p95_ms": float(np.percentile(result.latencies, 95)) * 1e3,
        # tuning windows of the opening scan (the baseline window stands for batch 16's): the
        # tuner still says it is scanning after each but the last
        "scan_windows": (scanning.index(False) + 1 if False in scanning else len(scanning))
        if scanning and scanning[0]
        else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default=",".join(BOARDS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="labels, | separated")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    boards = args.boards.split(",")
    labels = args.workloads.split("|") if "|" in args.workloads else list(WORKLOADS)
    print(f"# {datetime.date.today()} python {platform.python_version()} cpus={os.cpu_count()}")
    print(
        "| board | workload | plain /dyn | + guided scan | + capacity guard (default) "
        "| + fill timer | original | default / original | scan windows plain -> guided "
        "| J/req default (fill) | p95 ms default (fill) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for board in boards:
            jobs = [(board, w, v) for w in labels for v in VARIANTS]
            done = list(pool.map(run_one, jobs))
            rows.extend(done)
            cell = {(r["workload"], r["variant"]): r for r in done}
            for label in labels:
                plain, guided, default, fill, original = (cell[(label, v.label)] for v in VARIANTS)
                print(
                    f"| {board} | {label} | {plain['dynamic']:.3f} | {guided['dynamic']:.3f} "
                    f"| {default['dynamic']:.3f} | {fill['dynamic']:.3f} "
                    f"| {original['dynamic']:.3f} | {default['cost'] / original['cost']:.3f} "
                    f"| {plain['scan_windows']} -> {guided['scan_windows']} "
                    f"| {default['j_per_req']:.4f} ({fill['j_per_req']:.4f}) "
                    f"| {default['p95_ms']:.0f} ({fill['p95_ms']:.0f}) |",
                    flush=True,
                )
    for variant in VARIANTS:
        ratios = sorted(r["dynamic"] for r in rows if r["variant"] == variant.label)
        print(
            f"# {variant.label}: /dynamic median {np.median(ratios):.3f}, "
            f"range {ratios[0]:.3f}-{ratios[-1]:.3f}, "
            f"within 1.03: {sum(x <= 1.03 for x in ratios)}/{len(ratios)}, "
            f"within 1.05: {sum(x <= 1.05 for x in ratios)}/{len(ratios)}"
        )
    by = {(r["board"], r["workload"], r["variant"]): r for r in rows}
    for variant in VARIANTS[:-1]:
        above = [
            (b, w)
            for b in boards
            for w in labels
            if by[(b, w, variant.label)]["cost"] > by[(b, w, "original")]["cost"]
        ]
        print(f"# {variant.label} above the original climber: {len(above)} rows {above}")


if __name__ == "__main__":
    main()
