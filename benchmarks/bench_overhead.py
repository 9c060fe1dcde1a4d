"""Per-request overhead: ``ecoserve serve`` against the plain endpoint on the no-op model.

On ``builtin:noop`` the model costs nothing and a batch saves nothing, so what each server
answers per second is what its request path costs. Both servers run at once (each idle
while the other is measured), and the closed-loop runs alternate between them
(plain, ecoserve, plain, ...), ``--repeats`` times: on a shared, noisy box the ratio within
one pair of runs holds better than either rate does. Printed: every run, then the median
and range of each server's rate and of the per-pair ratio. ``--reference PATH`` adds a third
server, the daemon as the checkout at PATH has it (``PYTHONPATH=PATH``), to the same rounds:
a change to the request path is then measured against what it replaces, in the same run.

Besides the rates, the server process's CPU time (user + system) per request answered is
read from the kernel around each run: on a box where other work takes the cores, the rate
moves with that work, while the CPU a request costs the server moves much less.

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

import psutil
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
    p.add_argument("--reference", type=Path, default=None, help="another checkout's daemon too")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    body, ctype = bodies(args.model, args.body)
    t = args.torch_threads
    labels = ["plain", "ecoserve"] + (["reference"] if args.reference else [])
    ports = {label: free_port() for label in labels}
    extra = args.ecoserve_args.split()
    cmds = {
        "plain": (plain_cmd(args.model, ports["plain"], t), "/healthz"),
        "ecoserve": (ecoserve_cmd(args.model, ports["ecoserve"], t, extra), "/readyz"),
    }
    if args.reference:
        if not (args.reference / "ecoserve").is_dir():
            p.error(f"--reference {args.reference} holds no ecoserve package")
        ref = ecoserve_cmd(args.model, ports["reference"], t, extra)
        cmds["reference"] = (["env", f"PYTHONPATH={args.reference.resolve()}", *ref], "/readyz")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        procs = {}
        for label, (cmd, ready) in cmds.items():
            log = args.logs / f"bench_overhead_{label}.log"
            procs[label] = psutil.Process(
                stack.enter_context(server(cmd, ports[label], ready, log)).pid
            )
        for i in range(args.repeats):
            for label in labels:
                raw = build_request(ports[label], body, ctype)
                load = closed_loop(
                    label, ports[label], raw, args.concurrency, args.duration, args.warmup
                )
                before = procs[label].cpu_times()
                result = asyncio.run(load)
                after = procs[label].cpu_times()
                used = (after.user - before.user) + (after.system - before.system)
                cpu_us = 1e6 * used / max(1, result.sent)
                row = result.row() | {"repeat": i, "server_cpu_us_per_request": round(cpu_us, 1)}
                rows.append(row)
                rates[label].append(result.rps)
                cpu[label].append(cpu_us)
                print(json.dumps(row), flush=True)
    summary: dict[str, object] = {f"{x}_req_per_s": spread(rates[x]) for x in labels}
    summary |= {f"{x}_cpu_us_per_request": spread(cpu[x]) for x in labels}
    for label in labels[1:]:
        pairs = zip(rates[label], rates["plain"], strict=True)
        summary[f"ratio_{label}_to_plain"] = spread([x / pl for x, pl in pairs if pl > 0])
    summary["load_average"] = os.getloadavg()
    print(json.dumps(summary), flush=True)
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        text = json.dumps({"args": meta, "summary": summary, "runs": rows}, indent=1, default=str)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
