"""Replay speed of one checkout, with a fingerprint of what it replayed.

Run it in two checkouts, alternately, on the same machine, to compare the engine's speed
before and after a change: the fingerprint (window count and the sum of window costs) must
agree, and the wall times are compared as ratios within one session.

    python benchmarks/bench_engine_speed.py fixed:50ms poisson:20
"""

from __future__ import annotations

import argparse
import time

from ecoserve.sim.driver import simulate
from traces import load_trace
from twins.fitted import load_twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", help="trace specs, e.g. fixed:50ms")
    parser.add_argument("--duration", default="3h")
    parser.add_argument("--board", default="xavier-nx")
    parser.add_argument("--tuner", default="ecogd")
    args = parser.parse_args()
    twin = load_twin(args.board)
    for spec in args.traces:
        trace = load_trace(spec, duration=args.duration, seed=0)
        start = time.perf_counter()
        result = simulate(trace.arrivals, twin, tuner=args.tuner)
        wall = time.perf_counter() - start
        costs = sum(r.cost for r in result.reports)
        print(f"{spec}: {wall:.2f} s wall, {len(result.reports)} windows, cost sum {costs:.6f}")


if __name__ == "__main__":
    main()
