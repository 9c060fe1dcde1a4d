"""Decorator overhead per request against calling the function directly.

Batch 1: one caller, batch size pinned to 1 (``min_batch=max_batch=1``): overhead =
median decorated call time - median direct call time of the same function on a batch of 1.
Batch 16, batch size pinned to 16: (a) one thread hands 16 items over together with
``submit`` and each item's latency is timed; (b) 16 caller threads are released together
behind a barrier (this also times the interpreter waking 16 threads, an artefact of
thread-based load). Overhead = median per-item time - median direct call time of the
function on a batch of 16. The device is virtual at its maximum frequencies with the fixed
tuner, so no time is added by the twin and the figure is the engine's own.

    python benchmarks/bench_decorator.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

import eco_edge_infer


def work(batch: torch.Tensor) -> torch.Tensor:
    return batch * 2.0


def direct_time(batch: int, rounds: int) -> float:
    x = torch.ones(batch, 8)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        work(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decorated(batch: int):
    return eco_edge_infer.inference_method(
        device="virtual:xavier-nx",
        tuner="fixed",
        min_batch=batch,
        max_batch=batch,
        max_wait_s=0.5,
        window_requests=10_000,
        warmup_requests=0,
    )(work)


def batch1(rounds: int) -> list[float]:
    fn = decorated(1)
    item = torch.ones(8)
    with fn:
        for _ in range(200):
            fn(item)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - t0)
    return times


def batch16(rounds: int) -> list[float]:
    fn = decorated(16)
    item = torch.ones(8)
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def caller() -> None:
        local = []
        for _ in range(rounds):
            barrier.wait()
            t0 = time.perf_counter()
            fn(item)
            local.append(time.perf_counter() - t0)
        with lock:
            times.extend(local)

    with fn:
        threads = [threading.Thread(target=caller) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return times


def batch16_submit(rounds: int) -> list[float]:
    """16 items handed over together by one thread (``submit``); each item's own latency."""
    fn = decorated(16)
    item = torch.ones(8)
    times: list[float] = []
    with fn:
        for _ in range(rounds):
            t0 = time.perf_counter()
            futures = [fn.submit(item) for _ in range(16)]
            done = []
            for f in futures:
                f.result()
                done.append(time.perf_counter() - t0)
            times.extend(done)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    cases = (
        ("1, one caller", 1, batch1),
        ("16, one thread submits 16", 16, batch16_submit),
        ("16, 16 caller threads", 16, batch16),
    )
    for label, batch, run in cases:
        rounds = args.rounds if batch == 1 else max(args.rounds // 10, 50)
        direct = direct_time(batch, 2000)
        calls = sorted(run(rounds))
        med = statistics.median(calls)
        p90 = calls[int(0.9 * (len(calls) - 1))]
        rows.append((label, direct, med, med - direct, p90 - direct))
    print(
        "| batch | direct fn (µs) | decorated call median (µs) | overhead median (µs) | overhead p90 (µs) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for label, direct, med, over, over90 in rows:
        print(
            f"| {label} | {direct * 1e6:.1f} | {med * 1e6:.1f} | {over * 1e6:.1f} | {over90 * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
