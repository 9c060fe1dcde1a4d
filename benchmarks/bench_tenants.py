"""Isolation on a shared board: tenant A bursts to 5x its share while tenant B keeps its rate.

One ``ecoserve serve --model-repository --tenants`` daemon serves one model to two tenants of
equal share. The model is a Python-backend entry point that takes ``BASE_S + PER_ITEM_S`` per
item of a batch (a board of known speed; the device is ``none`` and the batch size is held at
8, so the board's throughput is ``X = 8 / (BASE_S + 8 PER_ITEM_S)``; a closed-loop run of
one tenant is reported beside it). Then, open loop at fixed rates with the tenants' tokens:

- ``alone``: B at ``--b-share`` of its fair part of X (X/2), for ``--duration`` seconds;
- ``burst``: B as before, and A at ``--burst`` times its fair part (5x by default).

Reported: B's p99 in each phase and their ratio (target <= 1.2), B's refusals (target 0),
A's requests answered and refused (429). Requests are one item each.

    python benchmarks/bench_tenants.py --out bench_tenants.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_http import HOST, Result, closed_loop, free_port, open_loop, server

BASE_S, PER_ITEM_S, BATCH = 0.020, 0.002, 8
BOARD = f'''
import time


def board(batch):
    """A board of known speed: {BASE_S} s per batch and {PER_ITEM_S} s per item."""
    time.sleep({BASE_S} + {PER_ITEM_S} * len(batch))
    return batch * 1.0
'''
CONFIG = f"""
backend: "python"
max_batch_size: {BATCH}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
parameters {{ key: "entry_point" value {{ string_value: "tenants_board:board" }} }}
"""
TOKENS = {"a": "tenant-a-token-0123456789", "b": "tenant-b-token-0123456789"}


def raw_request(port: int, token: str) -> bytes:
    body = b'{"input": [0.0, 1.0, 2.0, 3.0]}'
    return (
        f"POST /v1/infer?model=shared HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def p99(result: Result) -> float:
    return round(result.pct(99), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--b-share", type=float, default=0.5, help="B's rate, as a part of X/2")
    ap.add_argument("--burst", type=float, default=5.0, help="A's rate, in multiples of X/2")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ecoserve-tenants-"))
    (work / "tenants_board.py").write_text(BOARD)
    model = work / "repository" / "shared"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    tenants = work / "tenants.toml"
    tenants.write_text(
        "".join(
            f'[tenants.{name}]\ntoken = "{token}"\nmodels = ["shared"]\nshare = 1.0\n\n'
            for name, token in TOKENS.items()
        )
    )
    os.environ["PYTHONPATH"] = os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")])
    port = free_port()
    cmd = [
        sys.executable, "-m", "ecoserve", "serve", "--model-repository", str(work / "repository"),
        "--tenants", str(tenants), "--host", HOST, "--port", str(port), "--device", "none",
        "--min-batch", str(BATCH), "--max-batch", str(BATCH), "--max-queue", "4096",
        "--max-connections", "2048",
    ]  # fmt: skip
    a, b = raw_request(port, TOKENS["a"]), raw_request(port, TOKENS["b"])
    with server(cmd, port, "/healthz", work / "daemon.log"):
        full = asyncio.run(closed_loop("saturated", port, b, 64, 8.0, 2.0))
        x = BATCH / (BASE_S + PER_ITEM_S * BATCH)  # the board's throughput by construction
        fair = x / 2
        b_rate, a_rate = args.b_share * fair, args.burst * fair
        alone = asyncio.run(open_loop("B alone", port, b, b_rate, args.duration, args.warmup, 64))

        async def both() -> tuple[Result, Result]:
            return await asyncio.gather(
                open_loop("B", port, b, b_rate, args.duration, args.warmup, 64),
                open_loop("A", port, a, a_rate, args.duration, args.warmup, 256),
            )

        b_burst, a_burst = asyncio.run(both())
    summary = {
        "throughput_rps": round(x, 1),
        "closed_loop_one_tenant": full.row(),
        "b_rate_rps": round(b_rate, 1),
        "a_rate_rps": round(a_rate, 1),
        "b_p99_alone_ms": p99(alone),
        "b_p99_burst_ms": p99(b_burst),
        "b_p99_ratio": round(b_burst.pct(99) / alone.pct(99), 3),
        "b_refused": sum(n for s, n in b_burst.statuses.items() if s != 200),
        "b_statuses": b_burst.statuses,
        "a_answered_rps": round(a_burst.rps, 1),
        "a_statuses": a_burst.statuses,
        "a_unfinished": a_burst.unfinished,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
