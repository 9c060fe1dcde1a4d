"""Replay speed and tuning quality against the targets.

1. Speed: a 3-hour trace replayed with EcoGD on the Xavier NX twin (median of ``--repeats``
   runs); target >= 1,000x faster than real time.
2. Quality (from a suite's ``results.json``, or by running the paper suite with ``--suite``):
   EcoGD's mean cost over the second half of each run <= 1.05x the static oracle on every
   fixed and bursty workload, and EcoGD's mean cost below DVFS's on every workload.
3. With ``--suite``: the whole paper suite's wall time on ``--workers`` processes; target
   <= 15 minutes on 2 cores.

    python benchmarks/bench_replay.py [--repeats 3] [--suite] [--results DIR/results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from ecoserve.sim.driver import simulate
from traces import load_trace
from twins.fitted import load_twin

SPEED_TRACES = ("fixed:50ms", "bursty:10@500ms", "poisson:20")


class SpeedRow(TypedDict):
    trace: str
    requests: int
    wall_s: float
    speedup: float
    windows: int


def speed(repeats: int) -> list[SpeedRow]:
    twin = load_twin("xavier-nx")
    rows: list[SpeedRow] = []
    for spec in SPEED_TRACES:
        trace = load_trace(spec, duration="3h")
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            res = simulate(trace.arrivals, twin, tuner="ecogd")
            walls.append(time.perf_counter() - start)
        wall = statistics.median(walls)
        rows.append(
            {
                "trace": spec,
                "requests": len(trace),
                "wall_s": wall,
                "speedup": res.end_s / wall,
                "windows": len(res.reports),
            }
        )
    return rows


def targets(results: Path) -> tuple[list[str], bool]:
    doc = json.loads(results.read_text())
    recs = doc["results"]
    kinds = {w["label"]: w["kind"] for w in doc.get("meta", {}).get("workloads", [])}
    lines, ok = [], True
    for workload in dict.fromkeys(r["workload"] for r in recs):
        eco = [r for r in recs if r["workload"] == workload and r["tuner"] == "ecogd"]
        dvfs = [r for r in recs if r["workload"] == workload and r["tuner"] == "dvfs"]
        if not eco:
            continue
        after = statistics.mean(r["ratio_after_static_oracle"] for r in eco)
        mean = statistics.mean(r["mean_cost"] for r in eco)
        line = f"{workload:>18}: EcoGD second half / static oracle {after:.3f}"
        if kinds.get(workload) in ("fixed", "bursty"):
            hit = after <= 1.05
            ok &= hit
            line += " (target <= 1.05: " + ("met" if hit else "MISSED") + ")"
        if dvfs:
            d = statistics.mean(r["mean_cost"] for r in dvfs)
            hit = mean < d
            ok &= hit
            line += f"; mean {mean:.3f} vs DVFS {d:.3f} (" + ("below" if hit else "NOT below") + ")"
        lines.append(line)
    return lines, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--suite", action="store_true", help="run the paper suite (minutes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, help="a suite's results.json to check")
    args = parser.parse_args()
    print(
        f"# bench_replay {datetime.date.today()} {platform.machine()} "
        f"{platform.python_version()} cpus={os.cpu_count()}"
    )
    print("\n## replay speed (EcoGD, 3-hour traces, xavier-nx twin)")
    print("| trace | requests | windows | wall s (median) | x real time |")
    print("|---|---:|---:|---:|---:|")
    fast = True
    for row in speed(args.repeats):
        fast &= row["speedup"] >= 1000
        print(
            f"| {row['trace']} | {row['requests']} | {row['windows']} | "
            f"{row['wall_s']:.2f} | {row['speedup']:.0f} |"
        )
    print(f"target >= 1000x: {'met' if fast else 'MISSED'}")
    results = args.results
    if args.suite:
        out = Path(tempfile.mkdtemp(prefix="ecoserve-suite-"))
        cmd = [sys.executable, "-m", "ecoserve", "replay", "--suite", "paper", "--seeds", "3"]
        cmd += ["--workers", str(args.workers), "--out", str(out), "--json", "--no-plots"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        print(f"\n## paper suite: {wall / 60:.1f} min on {args.workers} workers (target <= 15)")
        results = out / "results.json"
    if results is not None:
        print("\n## quality targets")
        lines, ok = targets(results)
        print("\n".join(lines))
        print(f"all quality targets: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
