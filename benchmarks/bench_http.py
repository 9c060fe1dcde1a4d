"""HTTP serving benchmark: ``ecoserve serve`` against a plain FastAPI endpoint, same run.

Both servers run as subprocesses on 127.0.0.1, one at a time; the load comes from this
process over raw keep-alive HTTP/1.1 connections (a minimal asyncio client: a general
client such as httpx would spend more CPU than the server it measures, on a 2-core box).

1. no-op model, closed loop (``--concurrency`` clients back to back): requests/s, p50, p99.
2. ``builtin:cnn``: the plain endpoint's batch-1 capacity (closed loop), then an open loop
   at ``--overload`` times that rate against both servers: sustained requests/s and the
   latency from each request's scheduled send time (client-side queueing included, so a
   server that falls behind shows it).

    python benchmarks/bench_http.py --duration 10

Everything is bounded: ``--duration`` seconds per phase, at most ``--max-connections``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    label: str
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    unfinished: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")

    def row(self) -> dict[str, object]:
        return {
            "run": self.label,
            "req_per_s": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 2),
            "p99_ms": round(self.pct(99), 2),
            "ok": len(self.latencies),
            "statuses": self.statuses,
            "unfinished": self.unfinished,
        }


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one request; a kept-alive connection the server closed meanwhile is reopened
        once (as HTTP clients do), and a failure is answered as status 0, never lost."""
        for attempt in (1, 2):
            reused = self.writer is not None
            try:
                return await self._exchange(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.close()
                if not (reused and attempt == 1):
                    return 0
        return 0

    async def _exchange(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"content-length:")
        length = int(lower[i + 15 : lower.index(b"\r\n", i)]) if i >= 0 else 0
        await self.reader.readexactly(length)
        if b"connection: close" in lower:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(port: int, body: bytes, content_type: str) -> bytes:
    return (
        f"POST /v1/infer HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@contextlib.contextmanager
def no_collector_pauses() -> Iterator[None]:
    """The load generator's own garbage collection off while it measures.

    This process imports torch (to build request bodies), so a full collection takes
    about 100 ms; during a run it would delay sends and receives and be charged to the
    server being measured.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def closed_loop(
    label: str, port: int, raw: bytes, concurrency: int, duration: float, warmup: float
) -> Result:
    result = Result(label)
    start = time.perf_counter()
    t_from, t_to = start + warmup, start + warmup + duration

    async def worker() -> None:
        conn = Connection(port)
        try:
            while (t0 := time.perf_counter()) < t_to:
                status = await conn.request(raw)
                t1 = time.perf_counter()
                result.sent += 1  # every request, warm-up included: the server's work
                if t0 >= t_from and t1 <= t_to:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.latencies.append(t1 - t0)
        finally:
            conn.close()

    with no_collector_pauses():
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = duration
    return result


async def open_loop(
    label: str, port: int, raw: bytes, rate: float, duration: float, warmup: float, conns: int
) -> Result:
    """Requests scheduled at a fixed rate; latency counts from the scheduled send time."""
    result = Result(label)
    queue: asyncio.Queue[float] = asyncio.Queue()
    start = time.perf_counter()
    t_from, t_to = start + warmup, start + warmup + duration

    async def worker() -> None:
        conn = Connection(port)
        try:
            while True:
                scheduled = await queue.get()
                status = await conn.request(raw)
                done = time.perf_counter()
                if scheduled >= t_from and done <= t_to:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.latencies.append(done - scheduled)
        finally:
            conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    k = 0
    with no_collector_pauses():
        while (now := time.perf_counter()) < t_to:
            due = start + k / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            queue.put_nowait(due)
            k += 1
    result.unfinished = queue.qsize()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    result.sent = k
    result.seconds = duration
    return result


@contextlib.contextmanager
def server(cmd: list[str], port: int, ready_path: str, log: Path):
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log}")
            try:
                with socket.create_connection((HOST, port), timeout=1) as s:
                    s.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"server never became ready; see {log}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ecoserve_cmd(model: str, port: int, threads: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "ecoserve", "serve", "--model", model, "--host", HOST,
        "--port", str(port), "--max-queue", "4096", "--torch-threads", str(threads), *extra,
    ]  # fmt: skip


def plain_cmd(model: str, port: int, threads: int) -> list[str]:
    return [
        sys.executable, str(HERE / "plain_server.py"), "--model", model, "--port", str(port),
        "--torch-threads", str(threads),
    ]  # fmt: skip


def bodies(model: str, fmt: str) -> tuple[bytes, str]:
    from ecoserve.models.loader import load_model

    item = load_model(model).example_item().numpy()
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, item)
        return buf.getvalue(), "application/octet-stream"
    return json.dumps({"input": item.tolist()}).encode(), "application/json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    p.add_argument("--max-connections", type=int, default=256, help="open-loop connections")
    p.add_argument("--overload", type=float, default=2.0, help="CNN rate / plain capacity")
    p.add_argument("--torch-threads", type=int, default=1, help="for both servers")
    p.add_argument("--cnn-body", choices=("npy", "json"), default="npy")
    p.add_argument(
        "--ecoserve-args",
        default="--device none --max-wait-s 0.005",
        help="extra flags for ecoserve serve",
    )
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = p.parse_args()
    extra = args.ecoserve_args.split()
    rows: list[dict[str, object]] = []

    def run(label: str, cmd: list[str], port: int, ready: str, load: Coroutine) -> Result:
        with server(cmd, port, ready, args.logs / f"bench_http_{label}.log"):
            result = asyncio.run(load)
        rows.append(result.row())
        print(json.dumps(result.row()), flush=True)
        return result

    d, w, c, t = args.duration, args.warmup, args.concurrency, args.torch_threads
    # 1. no-op, closed loop
    body, ctype = bodies("builtin:noop", "json")
    for label, make in (
        ("plain-noop", lambda port: plain_cmd("builtin:noop", port, t)),
        ("ecoserve-noop", lambda port: ecoserve_cmd("builtin:noop", port, t, extra)),
    ):
        port = free_port()
        raw = build_request(port, body, ctype)
        ready = "/healthz" if label.startswith("plain") else "/readyz"
        run(label, make(port), port, ready, closed_loop(label, port, raw, c, d, w))

    # 2. CNN: plain batch-1 capacity, then both at `overload` x that rate
    body, ctype = bodies("builtin:cnn", args.cnn_body)
    port = free_port()
    raw = build_request(port, body, ctype)
    cap = run(
        "plain-cnn-capacity",
        plain_cmd("builtin:cnn", port, t),
        port,
        "/healthz",
        closed_loop("plain-cnn-capacity", port, raw, c, d, w),
    ).rps
    rate = args.overload * cap
    for label, make in (
        ("plain-cnn-open", lambda port: plain_cmd("builtin:cnn", port, t)),
        ("ecoserve-cnn-open", lambda port: ecoserve_cmd("builtin:cnn", port, t, extra)),
    ):
        port = free_port()
        raw = build_request(port, body, ctype)
        ready = "/healthz" if label.startswith("plain") else "/readyz"
        conns = args.max_connections
        run(
            f"{label}@{rate:.0f}rps",
            make(port),
            port,
            ready,
            open_loop(f"{label}@{rate:.0f}rps", port, raw, rate, d, w, conns),
        )
    if args.out:
        meta = vars(args) | {"out": str(args.out), "logs": str(args.logs)}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
