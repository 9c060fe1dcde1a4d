"""Seconds per step of the digits fine-tune at several micro-batch sizes, on this machine.

The simulator needs a background step's duration without running one; this measures it. For
each micro-batch size the job runs a warm-up, then timed steps, each timed alone and run
exactly as the daemon runs them: forward and backward of a micro-batch, Adam's update on the
steps that complete an update group, and, every ``eval_every`` updates, the evaluation steps
that classify slices of the held-out images. It prints the mean and 99th-percentile seconds
per step and the seconds per training image (time over images) of the least-disturbed of
``--repeats`` runs, and the rows ``ecoserve/background/step_cost.py`` records. It also times
one forward pass against one forward and backward pass per image, the ratio behind
``EVAL_ITEMS_PER_ITEM``, and, with the same clock in the same process, the serving model
``builtin:cnn`` at batches 1-16: the reference the replay scales the job's cost to a board
twin by (``ecoserve.sim.background.board_scale``; the rows ``SERVING_REFERENCE`` records).

The default clock is the stepping thread's CPU time (``time.thread_time``) with one torch
thread, where every computation runs in that thread: on a machine other processes share, it
counts the step's own work and not the time the scheduler gave to others, which elapsed time
(``--clock wall``) would add.

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
from collections.abc import Callable
from pathlib import Path

import torch

from ecoserve.background.digits_finetune import DigitsFinetune
from ecoserve.background.step_cost import SERVING_REFERENCE
from ecoserve.models.loader import load_model

SIZES = (1, 2, 4, 8, 16, 32)
SERVING_SIZES = (1, 2, 4, 8, 16)


Clock = Callable[[], float]


def time_steps(
    job: DigitsFinetune, micro_batch: int, cycles: int, clock: Clock
) -> tuple[list[float], int]:
    """Seconds of each step at ``micro_batch`` over ``cycles`` whole evaluation cycles (so the
    mean weighs training and evaluation steps as a long run does), and the training images
    they took. Untimed steps first run up to the end of an evaluation (the warm-up)."""
    while "accuracy" not in job.step(micro_batch).metric:
        pass
    times = []
    items = 0
    done = 0
    while done < cycles:
        t0 = clock()
        result = job.step(micro_batch)
        times.append(clock() - t0)
        items += result.items
        done += "accuracy" in result.metric
    return times, items


def forward_share(job: DigitsFinetune, clock: Clock, repeats: int = 50) -> float:
    """Seconds of a forward pass over 128 images over those of forward and backward."""
    x, y = job._x[:128], job._y[:128]
    fwd, both = [], []
    for _ in range(repeats):
        t0 = clock()
        with torch.no_grad():
            job.model(x)
        t1 = clock()
        torch.nn.functional.cross_entropy(job.model(x), y).backward()
        t2 = clock()
        fwd.append(t1 - t0)
        both.append(t2 - t1)
    job.model.zero_grad(set_to_none=True)
    return statistics.median(fwd) / statistics.median(both)


def serving_batch_times(
    clock: Clock, sizes: tuple[int, ...] = SERVING_SIZES, rounds: int = 15, calls: int = 20
) -> dict[int, float]:
    """Median seconds of one batch of the serving reference model per batch size; rounds
    interleave the sizes, so a slow spell of a shared machine hits them alike."""
    model = load_model(SERVING_REFERENCE.spec)
    times: dict[int, list[float]] = {b: [] for b in sizes}
    with torch.inference_mode():
        for _ in range(rounds):
            for b in sizes:
                batch = torch.stack([model.example_item()] * b)
                for _ in range(3):
                    model.batch_fn(batch)
                t0 = clock()
                for _ in range(calls):
                    model.batch_fn(batch)
                times[b].append((clock() - t0) / calls)
    return {b: statistics.median(v) for b, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=("small", "large"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--cycles",
        type=int,
        default=4,
        help="timed evaluation cycles (eval_every updates) per size",
    )
    parser.add_argument(
        "--clock",
        choices=("thread", "wall"),
        default="thread",
        help="thread: this thread's CPU time (steady on a shared machine; one torch thread "
        "only); wall: elapsed time",
    )
    parser.add_argument("--repeats", type=int, default=3, help="keep the fastest of these")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.threads, args.cycles, args.repeats, *args.sizes) < 1:
        parser.error("--threads, --cycles, --repeats and --sizes must be >= 1")
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread misses the time of other torch threads; use --clock wall")
    clock: Clock = time.thread_time if args.clock == "thread" else time.perf_counter

    torch.set_num_threads(args.threads)
    job = DigitsFinetune(model=args.model, epochs=10**6)
    rows = []
    for size in args.sizes:
        # the least-disturbed of a few repeats: other processes only ever add time
        runs = [time_steps(job, size, args.cycles, clock) for _ in range(args.repeats)]
        times, items = min(runs, key=lambda run: sum(run[0]) / run[1])
        rows.append(
            {
                "micro_batch": size,
                "mean_s": statistics.fmean(times),
                "median_s": statistics.median(times),
                "p99_s": statistics.quantiles(times, n=100)[98],
                "max_s": max(times),
                "s_per_item": sum(times) / items,
            }
        )
    share = forward_share(job, clock)
    serving = serving_batch_times(clock)

    print(
        f"digits-finetune model={args.model} threads={args.threads} torch={torch.__version__} "
        f"cpu={platform.processor() or platform.machine()} cycles/size={args.cycles} "
        f"(eval every 10 updates of 32), fastest of {args.repeats}, clock={args.clock}"
    )
    print("| micro-batch | mean ms/step | median ms | p99 ms | max ms | ms per image |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['micro_batch']} | {r['mean_s'] * 1e3:.3f} | {r['median_s'] * 1e3:.3f} | "
            f"{r['p99_s'] * 1e3:.3f} | {r['max_s'] * 1e3:.3f} | {r['s_per_item'] * 1e3:.4f} |"
        )
    print(f"forward / (forward + backward) per image, 128 images: {share:.3f}")
    print(
        "rows for step_cost.py (micro_batch, mean_s, p99_s, s_per_item): "
        + repr(
            tuple(
                (
                    r["micro_batch"],
                    *(float(f"{r[k]:.4g}") for k in ("mean_s", "p99_s", "s_per_item")),
                )
                for r in rows
            )
        )
    )
    print(
        f"serving reference {SERVING_REFERENCE.spec}, median ms per batch: "
        + ", ".join(f"{b}: {t * 1e3:.3f}" for b, t in serving.items())
    )
    print(
        "batch_s for SERVING_REFERENCE: "
        + repr(tuple((b, float(f"{t:.4g}")) for b, t in serving.items()))
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "clock": args.clock,
                    "torch": torch.__version__,
                    "rows": rows,
                    "forward_share": share,
                    "serving_reference": {str(b): t for b, t in serving.items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
