"""Per-window overhead of every tuner: the time of one ask() + tell() pair.

A tuner runs once per window on the device it tunes, so its step time is pure overhead. Each
tuner climbs a convex bowl over a Xavier-NX-shaped space (25 CPU x 15 GPU frequencies x 16
batch sizes); the table gives the median and 95th percentile step time and, as a sanity check
on what was timed, the mean cost of the last tenth of the windows (1.0 is the optimum). Each
window also reports an arrival rate that steps between 8 and 24 req/s every 100 windows, with
Poisson noise, and its batch count and busy time, so tuners that follow the load (EcoGD's
change test and level memory) and model batch time (EcoGD's capacity guard) run that code too.

    python benchmarks/bench_tuners.py [--steps 2000] [--bayes-steps 200] [--tuners ecogd,grid]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import statistics
import time

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners import TUNERS, Bayesian, make_tuner

SIZES = (25, 15, 16)
OPTIMUM = (7, 9, 5)


def nx_space() -> SearchSpace:
    return SearchSpace.of(
        *(Knob(n, tuple(range(s))) for n, s in zip((CPU, GPU, BATCH), SIZES, strict=True))
    )


def bowl(config: Config) -> float:
    x, y, z = ((c - o) / (n - 1) for c, o, n in zip(config, OPTIMUM, SIZES, strict=True))
    return 1.0 + 10 * x * x + 6 * y * y + 5 * z * z + 4 * x * y


def window_metrics(step: int, rng: random.Random) -> dict[str, float]:  # before the ask
    """A 20 s window's arrival rate, 8 or 24 req/s in turns of 100 windows, Poisson noise."""
    rate = 8.0 if (step // 100) % 2 == 0 else 24.0
    arrivals = max(1.0, rng.gauss(rate * 20.0, math.sqrt(rate * 20.0)))
    return {"arrival_rate": arrivals / 20.0, "arrivals": arrivals}


def batch_figures(config: Config, arrivals: float) -> dict[str, float]:
    """The window's batches and busy time, so EcoGD's batch-time model is fitted every step:
    batches of the configured size taking longer at lower clocks."""
    size = config[-1] + 1
    seconds = (0.004 + 0.02 * size) * (
        2.0 - 0.5 * sum(c / (n - 1) for c, n in zip(config[:2], SIZES[:2], strict=True))
    )
    batches = max(1.0, arrivals / size)
    return {"requests": arrivals, "batches": batches, "busy_s": batches * seconds}


def measure(name: str, steps: int) -> dict[str, float]:
    """Times ``steps`` ask+tell pairs; the cost function itself is outside the timed region."""
    tuner = make_tuner(name, nx_space(), seed=0)
    rng = random.Random(0)
    times, costs = [], []
    for step in range(steps):
        metrics = window_metrics(step, rng)
        start = time.perf_counter()
        config = tuner.ask()
        mid = time.perf_counter()
        cost = bowl(config)
        metrics.update(batch_figures(config, metrics["arrivals"]))
        resume = time.perf_counter()
        tuner.tell(config, cost, metrics)
        end = time.perf_counter()
        times.append((mid - start) + (end - resume))
        costs.append(cost)
    times.sort()
    tail = costs[-max(1, steps // 10) :]
    return {
        "steps": steps,
        "median_us": statistics.median(times) * 1e6,
        "p95_us": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))] * 1e6,
        "tail_cost": statistics.fmean(tail),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per tuner")
    parser.add_argument("--bayes-steps", type=int, default=200, help="steps for the GP tuner")
    parser.add_argument("--tuners", default="", help="comma-separated names (default: all)")
    args = parser.parse_args(argv)

    names = [n for n in args.tuners.split(",") if n] or [
        n
        for n, cls in TUNERS.items()
        if n == cls.name  # skip aliases
    ]
    print(
        f"{datetime.date.today().isoformat()}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, space {nx_space().describe()}\n"
    )
    print("| tuner | steps | median µs/step | p95 µs/step | mean cost, last 10% |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        steps = args.bayes_steps if TUNERS[name] is Bayesian else args.steps
        r = measure(name, steps)
        print(
            f"| {name} | {r['steps']} | {r['median_us']:,.1f} | {r['p95_us']:,.1f} "
            f"| {r['tail_cost']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
