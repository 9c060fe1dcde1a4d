"""Per-request overhead: ``ecoserve serve`` against the plain endpoint on the no-op model.

On ``builtin:noop`` the model costs nothing and a batch saves nothing, so what each server
answers per second is what its request path costs. Both servers run at once (each idle
while the other is measured), and the closed-loop runs alternate between them
(plain, ecoserve, plain, ...), ``--repeats`` times: on a shared, noisy box the ratio within
one pair of runs holds better than either rate does. Printed: every run, then the median
and range of each server's rate and of the per-pair ratio.

    python benchmarks/bench_overhead.py --repeats 5 --out bench_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path

from bench_http import (
    bodies,
    build_request,
    closed_loop,
    ecoserve_cmd,
    free_port,
    plain_cmd,
    server,
)


def spread(values: list[float]) -> dict[str, float]:
    """Median, lowest and highest: what a noisy box allows one to say of several runs."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:noop")
    p.add_argument("--body", choices=("json", "npy"), default="json")
    p.add_argument("--repeats", type=int, default=5, help="pairs of runs")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--ecoserve-args", default="--device none --max-wait-s 0.005")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    body, ctype = bodies(args.model, args.body)
    t = args.torch_threads
    ports = {"plain": free_port(), "ecoserve": free_port()}
    cmds = {
        "plain": (plain_cmd(args.model, ports["plain"], t), "/healthz"),
        "ecoserve": (
            ecoserve_cmd(args.model, ports["ecoserve"], t, args.ecoserve_args.split()),
            "/readyz",
        ),
    }
    rates: dict[str, list[float]] = {"plain": [], "ecoserve": []}
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        for label, (cmd, ready) in cmds.items():
            log = args.logs / f"bench_overhead_{label}.log"
            stack.enter_context(server(cmd, ports[label], ready, log))
        for i in range(args.repeats):
            for label in ("plain", "ecoserve"):
                raw = build_request(ports[label], body, ctype)
                load = closed_loop(
                    label, ports[label], raw, args.concurrency, args.duration, args.warmup
                )
                result = asyncio.run(load)
                row = result.row() | {"repeat": i}
                rows.append(row)
                rates[label].append(result.rps)
                print(json.dumps(row), flush=True)
    ratios = [e / pl for e, pl in zip(rates["ecoserve"], rates["plain"], strict=True) if pl > 0]
    summary = {
        "plain_req_per_s": spread(rates["plain"]),
        "ecoserve_req_per_s": spread(rates["ecoserve"]),
        "ratio_ecoserve_to_plain": spread(ratios),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary), flush=True)
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        args.out.write_text(json.dumps({"args": meta, "summary": summary, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
