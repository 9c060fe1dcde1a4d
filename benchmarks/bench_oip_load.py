"""Load from the real Triton clients: throughput and latency over HTTP and gRPC by concurrency.

One ``ecoserve serve --grpc-port`` daemon; closed-loop clients (each sends its next request
when the last is answered) at each ``--concurrency`` level, for ``--duration`` seconds after
``--warmup``, through:

- ``tritonclient.http.aio`` (Open Inference Protocol over HTTP, binary tensor data),
- ``tritonclient.grpc.aio`` (the same protocol over gRPC),
- the project's own ``/v1/infer`` with a ``.npy`` body, from ``bench_http``'s raw client,

all with the same model and the same item. The Triton clients cost client-side CPU too: on a
2-core box the client and the daemon share the cores, so compare rows of one run.

    python benchmarks/bench_oip_load.py --out bench_oip_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from bench_http import (
    HOST,
    Result,
    bodies,
    build_request,
    closed_loop,
    ecoserve_cmd,
    free_port,
    no_collector_pauses,
    server,
)

from ecoserve.models.loader import load_model


async def client_loop(
    label: str,
    send: Callable[[], Awaitable[None]],
    concurrency: int,
    duration: float,
    warmup: float,
) -> Result:
    result = Result(label)
    start = time.perf_counter()
    t_from, t_to = start + warmup, start + warmup + duration

    async def worker() -> None:
        while (t0 := time.perf_counter()) < t_to:
            try:
                await send()
                status = 200
            except Exception:  # the client raises InferenceServerException for any failure
                status = 500
            t1 = time.perf_counter()
            if t0 >= t_from and t1 <= t_to:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.latencies.append(t1 - t0)

    with no_collector_pauses():
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = duration
    return result


async def triton_load(
    protocol: str, address: str, model: str, item: np.ndarray, c: int, d: float, w: float
) -> Result:
    """``c`` closed-loop clients through Triton's asyncio client for ``protocol``."""
    if protocol == "http":
        import tritonclient.http.aio as client_module
        from tritonclient.http import InferInput

        client = client_module.InferenceServerClient(address, conn_limit=max(100, c))
    else:
        import tritonclient.grpc.aio as client_module
        from tritonclient.grpc import InferInput

        client = client_module.InferenceServerClient(address)
    tensor = InferInput("input", [1, *item.shape], "FP32")
    tensor.set_data_from_numpy(item[None])  # binary tensor data over HTTP, raw bytes over gRPC

    async def send() -> None:
        (await client.infer(model, [tensor])).as_numpy("output")

    try:
        return await client_loop(f"oip-{protocol} c={c}", send, c, d, w)
    finally:
        await client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:cnn")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--ecoserve-args", default="--device none --max-wait-s 0.005")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    item = load_model(args.model).example_item().numpy()
    name = args.model.rsplit(":", 1)[-1]
    port, grpc_port = free_port(), free_port()
    cmd = ecoserve_cmd(
        args.model,
        port,
        args.torch_threads,
        [*args.ecoserve_args.split(), "--grpc-port", str(grpc_port)],
    )
    body, ctype = bodies(args.model, "npy")
    raw = build_request(port, body, ctype)
    rows: list[dict[str, object]] = []
    with server(cmd, port, "/readyz", args.logs / "bench_oip_load.log"):
        d, w = args.duration, args.warmup
        for c in levels:
            for load in (
                triton_load("http", f"{HOST}:{port}", name, item, c, d, w),
                triton_load("grpc", f"{HOST}:{grpc_port}", name, item, c, d, w),
                closed_loop(f"v1-npy c={c}", port, raw, c, d, w),
            ):
                row = asyncio.run(load).row()
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
