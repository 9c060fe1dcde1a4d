"""Seconds per step of the digits fine-tune at several micro-batch sizes, on this machine.

The simulator needs a background step's duration without running one; this measures it. For
each micro-batch size the job runs a warm-up, then timed steps (each timed alone with
``perf_counter``: forward, backward, and, on the steps that complete an update group, Adam's
update and every ``eval_every`` updates the held-out evaluation, exactly as the daemon runs
them). It prints the table, the held-out evaluation's own cost, and the least-squares line
``seconds = fixed + per_item * micro_batch`` through the mean step times, as
``ecoserve/background/step_cost.py`` records them.

    python benchmarks/bench_background_step.py                      # small model, 1 thread
    python benchmarks/bench_background_step.py --model large --threads 2
    python benchmarks/bench_background_step.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ecoserve.background.digits_finetune import DigitsFinetune

SIZES = (1, 2, 4, 8, 16, 32)


def time_steps(job: DigitsFinetune, micro_batch: int, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` timed steps at ``micro_batch`` (after ``warmup`` steps)."""
    for _ in range(warmup):
        job.step(micro_batch)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        job.step(micro_batch)
        times.append(time.perf_counter() - t0)
    return times


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=("small", "large"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=640, help="timed steps per size")
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 2 or any(s < 1 for s in args.sizes):
        parser.error("--threads and --sizes must be >= 1 and --steps >= 2")

    torch.set_num_threads(args.threads)
    job = DigitsFinetune(model=args.model, epochs=10**6)
    rows = []
    for size in args.sizes:
        times = time_steps(job, size, args.steps, args.warmup)
        q = statistics.quantiles(times, n=100)
        rows.append(
            {
                "micro_batch": size,
                "mean_s": statistics.fmean(times),
                "median_s": statistics.median(times),
                "p99_s": q[98],
                "max_s": max(times),
            }
        )
    evals = []
    for _ in range(20):
        t0 = time.perf_counter()
        job.evaluate()
        evals.append(time.perf_counter() - t0)
    eval_s = statistics.median(evals)
    fixed, per_item = fit_line([r["micro_batch"] for r in rows], [r["mean_s"] for r in rows])

    print(
        f"digits-finetune model={args.model} threads={args.threads} torch={torch.__version__} "
        f"cpu={platform.processor() or platform.machine()} steps/size={args.steps}"
    )
    print("| micro-batch | mean ms | median ms | p99 ms | max ms | mean ms/item |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["micro_batch"]
        print(
            f"| {m} | {r['mean_s'] * 1e3:.3f} | {r['median_s'] * 1e3:.3f} | "
            f"{r['p99_s'] * 1e3:.3f} | {r['max_s'] * 1e3:.3f} | {r['mean_s'] * 1e3 / m:.4f} |"
        )
    print(f"held-out evaluation (450 images): {eval_s * 1e3:.3f} ms")
    print(f"fit: seconds = {fixed:.3e} + {per_item:.3e} * micro_batch")
    print(
        "table for step_cost.py: "
        + repr(tuple((r["micro_batch"], round(r["mean_s"], 7)) for r in rows))
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "torch": torch.__version__,
                    "rows": rows,
                    "eval_s": eval_s,
                    "fixed_s": fixed,
                    "per_item_s": per_item,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
