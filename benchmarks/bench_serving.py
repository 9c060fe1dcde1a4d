"""Highest request rate each server sustains with p99 under a target, open loop, side by side.

Serving systems are compared at the load they can carry while meeting a latency objective,
not at one overload point. For each server in turn (same model, same box, same client),
open-loop arrivals at a fixed rate are sent for ``--duration`` seconds after ``--warmup``.
A run passes when every request was answered 200, the answered rate is at least 95% of the
offered rate (no backlog), and p99 latency, counted from each request's scheduled send
time, is within ``--p99-ms``.

One latency spike must not decide a figure, in either direction:

- each rate is run ``--repeats`` times and passes only if every repeat passes (a lucky
  quiet window cannot carry a rate the server does not hold);
- the rate grows by ``--step`` and the ramp does not stop at the first failing rate: it
  goes on for ``--patience`` more rates, so one spike at one rate does not end the search
  (and when ``--start`` itself fails, the rates step down from it until one holds); the
  sustained rate is the highest rate whose repeats all passed, refined ``--refine`` times by
  bisection towards the lowest failing rate above it;
- each fresh server is first sent ``--settle`` seconds of load at ``--start``, unscored and
  the same for every server, so a tuner's opening scan or a first call's set-up is not
  charged to the first rate (whose failure would leave the ramp only the rates below it);
- the whole search is done ``--runs`` times, a fresh server each time, the servers'
  order alternating between runs; reported are the median and the range over runs, and the
  ratio to the plain endpoint within each run (its median and range).

Two load generators, chosen with ``--generator``: ``asyncio`` (``bench_http.open_loop``, a
lean raw-socket client of this project) and ``gevent`` (``gevent_load.py``: gevent and
geventhttpclient, sharing no code with the first), so a figure is not an artefact of one.

Servers: ``ecoserve serve`` with EcoGD tuning the batch size, ``ecoserve serve --tuner fixed``
(largest batch, the timer only: batching without tuning), ``benchmarks/plain_server.py`` (a
FastAPI endpoint calling the model per request, with the daemon's codec and collector
treatment) and, when Ray is installed, ``benchmarks/ray_server.py`` (Ray Serve with
``@serve.batch``, access log off). All with one torch thread. ``null``
(``benchmarks/null_server.py``, answers at once and runs no model) is not in the default
list: its rate is the load generator's own ceiling on the box, which every server's figure
must sit well below for the figure to be the server's.

    python benchmarks/bench_serving.py --runs 3 --out bench_serving.json
    python benchmarks/bench_serving.py --runs 3 --generator gevent --out bench_serving_gevent.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench_http import (
    HERE,
    HOST,
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
    repeats: int = 1,
    patience: int = 0,
    refine: int = 1,
) -> tuple[float, list[dict[str, object]]]:
    """The highest rate at which every one of ``repeats`` runs passed; every run's row.

    The ramp goes on ``patience`` rates past a failing one (a pass there counts); if not
    even the first rate held, rates step down from it until one does. Then the gap between
    the best rate and the lowest failing rate above it is bisected ``refine`` times. A
    rate's repeats stop at its first failure: one is enough to fail it.
    """
    rows: list[dict[str, object]] = []

    def holds(rate: float) -> bool:
        for i in range(repeats):
            result = run_at(rate)
            ok = passes(result, rate, p99_ms)
            row = result.row() | {"server": label, "offered": round(rate, 1), "repeat": i}
            rows.append(row | {"pass": ok})
            print(json.dumps(rows[-1]), flush=True)
            if not ok:
                return False
        return True

    best, failed_above, misses, rate = 0.0, None, 0, start
    for _ in range(max_steps):
        if holds(rate):
            best, failed_above, misses = rate, None, 0
        else:
            failed_above = rate if failed_above is None else failed_above
            misses += 1
            if misses > patience:
                break
        rate *= step
    if best <= 0:  # even the first rate failed: step down until one holds
        rate = start / step
        for _ in range(max_steps):
            if holds(rate):
                best = rate
                break
            failed_above, rate = rate, rate / step
    for _ in range(refine):
        if failed_above is None or best <= 0:
            break
        mid = (best + failed_above) / 2
        if holds(mid):
            best = mid
        else:
            failed_above = mid
    return best, rows


def gevent_run(
    label: str, port: int, body: Path, ctype: str, rate: float, args: argparse.Namespace
) -> Result:
    """One open-loop run by ``gevent_load.py`` (its own process), as a ``Result``."""
    cmd = [
        sys.executable, str(HERE / "gevent_load.py"), "--host", HOST, "--port", str(port),
        "--body", str(body), "--content-type", ctype, "--rate", str(rate),
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--connections", str(args.max_connections),
    ]  # fmt: skip
    limit = args.warmup + args.duration + 60
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"gevent_load.py failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(
        label,
        sent=int(data["sent"]),
        latencies=list(data["latencies_s"]),
        statuses={int(k): int(v) for k, v in data["statuses"].items()},
        seconds=args.duration,
        unfinished=int(data["unfinished"]),
    )


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:cnn")
    p.add_argument("--p99-ms", type=float, default=100.0)
    p.add_argument("--start", type=float, default=100.0, help="first offered rate (req/s)")
    p.add_argument("--step", type=float, default=1.3, help="rate factor between rates")
    p.add_argument("--max-steps", type=int, default=18)
    p.add_argument("--repeats", type=int, default=2, help="runs per rate; all must pass")
    p.add_argument("--patience", type=int, default=1, help="failing rates the ramp goes past")
    p.add_argument("--refine", type=int, default=2, help="bisections after the ramp")
    p.add_argument("--runs", type=int, default=3, help="whole searches, a fresh server each")
    p.add_argument("--generator", choices=("asyncio", "gevent"), default="asyncio")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds of load at --start sent to each fresh server before its search, unscored "
        "(a tuner's opening scan, a JIT's first calls), the same for every server",
    )
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-s", type=float, default=0.005)
    p.add_argument("--servers", default="ecoserve-ecogd,ecoserve-fixed,plain,ray")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    if min(args.repeats, args.runs, args.max_steps) < 1 or args.patience < 0 or args.refine < 0:
        p.error("--repeats, --runs and --max-steps must be >= 1; --patience, --refine >= 0")
    if args.settle < 0:
        p.error("--settle must be >= 0 seconds")
    if args.step <= 1 or args.start <= 0:
        p.error("--step must be above 1 and --start above 0")
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
        "null": (lambda port: [sys.executable, str(HERE / "null_server.py"), "--port", str(port)], "/v1/infer"),
    }  # fmt: skip
    chosen = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(servers))
    if unknown:
        p.error(f"unknown server(s) {unknown}; choose from {sorted(servers)}")
    if "ray" in chosen and importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install 'ray[serve]'): skipping Ray Serve", flush=True)
        chosen.remove("ray")
    if args.generator == "gevent" and importlib.util.find_spec("geventhttpclient") is None:
        p.error("--generator gevent needs geventhttpclient: pip install geventhttpclient")
    body_file = Path(tempfile.mkstemp(prefix="bench_serving_", suffix=".body")[1])
    body_file.write_bytes(body)
    sustained: dict[str, list[float]] = {label: [] for label in chosen}
    rows: list[dict[str, object]] = []
    load_before = os.getloadavg()
    try:
        for run in range(args.runs):
            for label in chosen if run % 2 == 0 else chosen[::-1]:
                make, ready = servers[label]
                port = free_port()
                raw = build_request(port, body, ctype)

                def run_at(
                    rate: float, label: str = label, port: int = port, raw: bytes = raw
                ) -> Result:
                    if args.generator == "gevent":
                        return gevent_run(label, port, body_file, ctype, rate, args)
                    load = open_loop(
                        label, port, raw, rate, args.duration, args.warmup, args.max_connections
                    )
                    return asyncio.run(load)

                log = args.logs / f"bench_serving_{label}_{run}.log"
                with server(make(port), port, ready, log):
                    if args.settle > 0:
                        asyncio.run(
                            open_loop(
                                label, port, raw, args.start, args.settle, 0.0, args.max_connections
                            )
                        )
                    best, runs = sustained_rate(
                        label, run_at, args.start, args.step, args.p99_ms, args.max_steps,
                        args.repeats, args.patience, args.refine,
                    )  # fmt: skip
                sustained[label].append(round(best, 1))
                rows.extend(r | {"run": run} for r in runs)
                print(json.dumps({"run": run, "server": label, "sustained": round(best, 1)}))
    finally:
        body_file.unlink(missing_ok=True)
    summary: dict[str, object] = {label: spread(v) for label, v in sustained.items()}
    ratios: dict[str, dict[str, float]] = {}
    if "plain" in sustained and min(sustained["plain"]) > 0:
        for label, values in sustained.items():
            ratios[label] = spread(
                [v / pl for v, pl in zip(values, sustained["plain"], strict=True)]
            )
    print(json.dumps({"sustained_req_per_s": summary, "ratio_to_plain": ratios}), flush=True)
    for label, values in sustained.items():
        ratio = ratios.get(label)
        shown = (
            ""
            if ratio is None
            else f" = {ratio['median']:.2f}x plain ({ratio['min']:.2f}-{ratio['max']:.2f})"
        )
        print(
            f"{label}: median {statistics.median(values):.0f} req/s of {values}{shown}", flush=True
        )
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        loads = {"before": load_before, "after": os.getloadavg()}
        args.out.write_text(
            json.dumps(
                {"args": meta, "sustained": sustained, "summary": summary, "ratio_to_plain": ratios,
                 "load_average": loads, "runs": rows},
                indent=1,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
