"""Highest request rate each server sustains with p99 under a target, open loop, side by side.

Serving systems are compared at the load they can carry while meeting a latency objective,
not at one overload point. For each server in turn (same model, same box, same client),
open-loop arrivals at a fixed rate are sent for ``--duration`` seconds after ``--warmup``;
the rate grows by ``--step`` while the run passes, then one bisection between the last pass
and the first failure refines it. A run passes when every request was answered 200, the
answered rate is at least 95% of the offered rate (no backlog), and p99 latency, counted from
each request's scheduled send time, is within ``--p99-ms``.

Servers: ``ecoserve serve`` with EcoGD tuning the batch size, ``ecoserve serve --tuner fixed``
(largest batch, the timer only: batching without tuning), ``benchmarks/plain_server.py`` (a
FastAPI endpoint calling the model per request) and, when Ray is installed,
``benchmarks/ray_server.py`` (Ray Serve with ``@serve.batch``). All with one torch thread.

    python benchmarks/bench_serving.py --out bench_serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bench_http import (
    HERE,
    Result,
    bodies,
    build_request,
    ecoserve_cmd,
    free_port,
    open_loop,
    plain_cmd,
    server,
)


def ray_cmd(model: str, port: int, threads: int, max_batch: int, wait_s: float) -> list[str]:
    return [
        sys.executable, str(HERE / "ray_server.py"), "--model", model, "--port", str(port),
        "--torch-threads", str(threads), "--max-batch", str(max_batch),
        "--batch-wait-s", str(wait_s),
    ]  # fmt: skip


def passes(result: Result, rate: float, p99_ms: float) -> bool:
    answered_all = set(result.statuses) <= {200}
    return answered_all and result.rps >= 0.95 * rate and result.pct(99) <= p99_ms


def sustained_rate(
    label: str,
    run_at: Callable[[float], Result],
    start: float,
    step: float,
    p99_ms: float,
    max_steps: int,
) -> tuple[float, list[dict[str, object]]]:
    """The highest passing rate found by growing, then one bisection; every run's row."""
    rows: list[dict[str, object]] = []
    best, failed, rate = 0.0, None, start
    for _ in range(max_steps):
        result = run_at(rate)
        ok = passes(result, rate, p99_ms)
        rows.append(result.row() | {"server": label, "offered": round(rate, 1), "pass": ok})
        print(json.dumps(rows[-1]), flush=True)
        if not ok:
            failed = rate
            break
        best, rate = rate, rate * step
    if failed is not None and best > 0:
        mid = (best + failed) / 2
        result = run_at(mid)
        ok = passes(result, mid, p99_ms)
        rows.append(result.row() | {"server": label, "offered": round(mid, 1), "pass": ok})
        print(json.dumps(rows[-1]), flush=True)
        best = mid if ok else best
    return best, rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:cnn")
    p.add_argument("--p99-ms", type=float, default=100.0)
    p.add_argument("--start", type=float, default=50.0, help="first offered rate (req/s)")
    p.add_argument("--step", type=float, default=1.3, help="rate factor between runs")
    p.add_argument("--max-steps", type=int, default=18)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-s", type=float, default=0.005)
    p.add_argument("--servers", default="ecoserve-ecogd,ecoserve-fixed,plain,ray")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    body, ctype = bodies(args.model, "npy")
    t, batching = (
        args.torch_threads,
        ["--max-batch", str(args.max_batch), "--max-wait-s", str(args.max_wait_s)],
    )
    servers: dict[str, tuple[Callable[[int], list[str]], str]] = {
        "ecoserve-ecogd": (lambda port: ecoserve_cmd(args.model, port, t, ["--device", "none", *batching]), "/readyz"),
        "ecoserve-fixed": (lambda port: ecoserve_cmd(args.model, port, t, ["--device", "none", "--tuner", "fixed", *batching]), "/readyz"),
        "plain": (lambda port: plain_cmd(args.model, port, t), "/healthz"),
        "ray": (lambda port: ray_cmd(args.model, port, t, args.max_batch, args.max_wait_s), "/v1/infer"),
    }  # fmt: skip
    chosen = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(servers))
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {sorted(servers)}")
    if "ray" in chosen and importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install 'ray[serve]'): skipping Ray Serve", flush=True)
        chosen.remove("ray")
    summary: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    for label in chosen:
        make, ready = servers[label]
        port = free_port()
        raw = build_request(port, body, ctype)

        def run_at(rate: float, label: str = label, port: int = port, raw: bytes = raw) -> Result:
            load = open_loop(
                label, port, raw, rate, args.duration, args.warmup, args.max_connections
            )
            return asyncio.run(load)

        with server(make(port), port, ready, args.logs / f"bench_serving_{label}.log"):
            best, runs = sustained_rate(
                label, run_at, args.start, args.step, args.p99_ms, args.max_steps
            )
        summary[label] = round(best, 1)
        rows.extend(runs)
    print(json.dumps({"sustained_req_per_s": summary}), flush=True)
    if "plain" in summary and summary["plain"] > 0:
        for label, rate in summary.items():
            print(f"{label}: {rate:.0f} req/s = {rate / summary['plain']:.2f}x plain", flush=True)
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        args.out.write_text(
            json.dumps({"args": meta, "sustained": summary, "runs": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
