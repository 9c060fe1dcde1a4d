"""Where a ``/v1/infer`` request's time goes inside the daemon: cProfile over a closed loop.

The daemon runs under ``python -m cProfile`` (the event loop and the handlers are on its
main thread, so the profile sees every request's Python work), is loaded for ``--duration``
seconds by the raw client of ``bench_http.py``, then stopped with SIGTERM, which drains it
and lets cProfile write its file. The functions are printed by their own time and their
cumulative time, per request.

    python benchmarks/profile_infer.py --model builtin:noop --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import sys
from pathlib import Path

from bench_http import HOST, bodies, build_request, closed_loop, free_port, server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:noop")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--body", choices=("json", "npy"), default="json")
    p.add_argument("--top", type=int, default=35, help="functions printed per ordering")
    p.add_argument(
        "--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "infer.prof"
    )
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    port = free_port()
    cmd = [
        sys.executable, "-m", "cProfile", "-o", str(args.out), "-m", "ecoserve", "serve",
        "--model", args.model, "--host", HOST, "--port", str(port), "--device", "none",
        "--max-queue", "4096", "--torch-threads", "1", "--max-wait-s", "0.005",
    ]  # fmt: skip
    body, ctype = bodies(args.model, args.body)
    raw = build_request(port, body, ctype)
    with server(cmd, port, "/readyz", args.logs / "profile_infer.log") as proc:
        load = closed_loop("profile", port, raw, args.concurrency, args.duration, args.warmup)
        result = asyncio.run(load)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print(result.row(), flush=True)
    stats = pstats.Stats(str(args.out))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
