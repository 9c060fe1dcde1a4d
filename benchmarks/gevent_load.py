"""A second, independent open-loop load generator: gevent greenlets and geventhttpclient.

``bench_http.py``'s client is this project's own asyncio code; a figure that only it shows
could be an artefact of it. This one shares none of it: gevent's libev loop instead of
asyncio, geventhttpclient's connection pool and HTTP parser (the client locust's
``FastHttpUser`` runs on) instead of the hand-written one. It schedules request ``k`` at
``start + k / rate`` whatever the server does (open loop), runs each in a greenlet of its
own on one of ``--connections`` keep-alive connections, and counts each latency from its
scheduled time, so a request that waited for a free connection is charged its wait.
Requests scheduled during ``--warmup`` and those finishing after the window are not counted,
as in ``bench_http.open_loop``; ``unfinished`` counts the requests still in flight or
waiting for a connection when the window closes.

It runs as its own process (gevent and asyncio are not mixed) and prints one JSON object.
Needs ``pip install geventhttpclient`` (which brings gevent).

    python benchmarks/gevent_load.py --port 8101 --body body.npy \\
        --content-type application/octet-stream --rate 400 --duration 6 --warmup 3
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/infer")
    p.add_argument("--body", type=Path, required=True, help="file holding the request body")
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    args = p.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1:
        p.error("--rate and --duration must be positive, --connections at least 1")
    try:
        body = args.body.read_bytes()
    except OSError as exc:
        p.error(f"cannot read --body: {exc}")

    import gevent
    import numpy as np
    from gevent.pool import Group
    from geventhttpclient import HTTPClient

    client = HTTPClient(
        args.host,
        args.port,
        concurrency=args.connections,
        connection_timeout=args.timeout,
        network_timeout=args.timeout,
    )
    headers = {"Content-Type": args.content_type}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    t_from, t_to = start + args.warmup, start + args.warmup + args.duration

    def one(scheduled: float) -> None:
        try:
            response = client.post(args.path, body=body, headers=headers)
            response.read()
            response.release()
            status = response.status_code
        except Exception:  # refused, reset or timed out: counted as status 0, never lost
            status = 0
        done = time.perf_counter()
        if scheduled >= t_from and done <= t_to:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append(done - scheduled)

    group = Group()
    gc.collect()
    gc.disable()  # no collector pause inside the window, charged to the server
    k = 0
    while (now := time.perf_counter()) < t_to:
        due = start + k / args.rate
        if due > now:
            gevent.sleep(due - now)
            continue
        group.spawn(one, due)
        k += 1
    unfinished = len(group)
    group.kill(block=True, timeout=5)
    client.close()
    gc.enable()

    def pct(q: float) -> float:  # as bench_http.Result.pct computes it
        return float(np.percentile(latencies, q)) * 1e3 if latencies else float("nan")

    print(
        json.dumps(
            {
                "sent": k,
                "ok": len(latencies),
                "req_per_s": len(latencies) / args.duration,
                "p50_ms": pct(50),
                "p99_ms": pct(99),
                "statuses": statuses,
                "unfinished": unfinished,
                "latencies_s": latencies,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
