"""Replay a trace against a live daemon as a real HTTP client (``--mode real``).

Open loop: request ``i`` is sent at ``t0 + arrival[i]`` whatever happened to the earlier
ones, as real clients do; a closed loop would slow down with the server and hide its
queueing. It is bounded: at most ``concurrency`` requests are in flight, and an arrival that
finds the bound reached is counted as dropped instead of being queued in the client (which
would shift every later arrival). Latency is measured from the scheduled arrival time to
the response, so client-side lateness counts against the server, as a user would see it.

The daemon's own window reports (``GET /v1/status``) supply the costs and energy, so the
record has the same fields as a simulated one; the oracles need the twin and are left out.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecoserve.replay.report import RunRecord, WindowSeries, make_record
from traces import Trace


@dataclass(frozen=True)
class RealReplayConfig:
    url: str = "http://127.0.0.1:8000"
    concurrency: int = 256
    timeout_s: float = 30.0
    alpha: float = 0.5


@dataclass(frozen=True)
class RequestBody:
    content: bytes
    content_type: str


def load_input(path: Path | None, shape: str = "3,32,32") -> RequestBody:
    """The body every request sends: a .json/.npy file, or zeros of ``shape`` as JSON."""
    if path is None:
        dims = tuple(int(x) for x in str(shape).split(",") if x.strip())
        zeros = np.zeros(dims, dtype=np.float32).tolist()
        return RequestBody(json.dumps({"input": zeros}).encode(), "application/json")
    data = path.read_bytes()
    if path.suffix.lower() == ".npy":
        return RequestBody(data, "application/octet-stream")
    doc = json.loads(data)
    if not (isinstance(doc, dict) and ("input" in doc or "inputs" in doc)):
        doc = {"input": doc}
    return RequestBody(json.dumps(doc).encode(), "application/json")


@dataclass
class ClientResult:
    latencies: np.ndarray  # NaN where the request failed or was dropped
    statuses: dict[str, int]
    windows: list[dict[str, Any]]
    wall_s: float
    tuner: str = "daemon"


async def _status(client: Any, windows: int) -> dict[str, Any]:
    try:
        r = await client.get("/v1/status", params={"windows": windows})
        return r.json() if r.status_code == 200 else {}
    except Exception:  # the report still has the client-side figures
        return {}


#: Seconds between two calls of a real replay's ``progress``.
PROGRESS_EVERY_S = 1.0

Progress = Callable[[float, dict[str, int]], None]


async def replay_async(
    trace: Trace, body: RequestBody, cfg: RealReplayConfig, progress: Progress | None = None
) -> ClientResult:
    """Send the trace's requests at their times; collect latencies and the daemon's windows.

    ``progress`` is told the seconds of trace sent so far and the answers counted, about once
    a second: a real replay lasts as long as its trace.
    """
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    arrivals = np.asarray(trace.arrivals, dtype=np.float64)
    latencies = np.full(len(arrivals), np.nan)
    statuses: dict[str, int] = {}
    limits = httpx.Limits(
        max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
    )
    headers = {"Content-Type": body.content_type}

    def count(key: str) -> None:
        statuses[key] = statuses.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=cfg.url, timeout=cfg.timeout_s, limits=limits) as client:
        before = await _status(client, 0)
        closed_before = int(before.get("windows_closed", 0) or 0)
        in_flight = 0
        loop = asyncio.get_running_loop()

        async def one(i: int, due: float) -> None:
            nonlocal in_flight
            try:
                r = await client.post("/v1/infer", content=body.content, headers=headers)
                if r.status_code == 200:
                    latencies[i] = loop.time() - due
                count(str(r.status_code))
            except httpx.HTTPError as exc:
                count(type(exc).__name__)
            finally:
                in_flight -= 1

        t0 = loop.time() + 0.05
        tasks = []
        wall0 = time.perf_counter()
        told = -math.inf
        for i, a in enumerate(arrivals.tolist()):
            due = t0 + a
            if progress is not None and a - told >= PROGRESS_EVERY_S:
                told = a
                progress(a, dict(statuses))
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= cfg.concurrency:
                count("dropped_client_bound")
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(i, due)))
        if tasks:
            await asyncio.gather(*tasks)
        if progress is not None:
            progress(trace.duration, dict(statuses))
        wall = time.perf_counter() - wall0
        after = await _status(client, 256)
    windows = [w for w in after.get("windows", []) if int(w.get("index", -1)) >= closed_before]
    tuner = after.get("tuner", {}).get("name") or before.get("tuner", {}).get("name") or "daemon"
    return ClientResult(latencies, statuses, windows, wall, str(tuner))


def replay_real(
    trace: Trace,
    body: RequestBody,
    cfg: RealReplayConfig,
    label: str | None = None,
    console: Any = None,
    progress: Progress | None = None,
) -> tuple[RunRecord, WindowSeries, dict[str, Any]]:
    """Run the replay and summarise it as a record like the simulator's."""
    result = asyncio.run(replay_async(trace, body, cfg, progress))
    tuning = [w for w in result.windows if w.get("phase") == "tuning"]
    costs = np.array([float(w["cost"]) for w in tuning])
    served_w = sum(int(w["requests"]) for w in result.windows)
    energy_w = sum(float(w["energy_j"]) for w in result.windows)
    lat = result.latencies[~np.isnan(result.latencies)]
    per_request = energy_w / served_w if served_w else math.nan
    accounting = str(result.windows[-1].get("accounting", "active")) if result.windows else ""
    last_values = result.windows[-1].get("values", {}) if result.windows else {}
    record = make_record(
        workload=label or trace.name,
        tuner=result.tuner,
        seed=0,
        mode="real",
        device=cfg.url,
        accounting=accounting,
        alpha=cfg.alpha,
        costs=costs,
        latencies=lat,
        energy_j=per_request * len(lat),
        requests=len(trace),
        rejected=len(trace) - len(lat),
        static_cost=math.nan,
        dynamic_cost=math.nan,
        virtual_s=trace.duration,
        wall_s=result.wall_s,
        final_config=last_values,
    )
    series = WindowSeries(
        workload=record.workload,
        tuner=record.tuner,
        seed=0,
        end_s=[float(w["end"]) - float(tuning[0]["start"]) for w in tuning] if tuning else [],
        cost=[float(c) for c in costs],
        energy_per_request_j=[float(w["energy_per_request_j"]) for w in tuning],
        latency_s=[float(w["latency_mean_s"]) for w in tuning],
    )
    meta = {
        "mode": "real",
        "url": cfg.url,
        "trace": trace.describe(),
        "statuses": result.statuses,
        "daemon_windows": len(result.windows),
        "tuning_windows": len(tuning),
        "accounting": accounting,
        "title": f"real replay against {cfg.url}",
    }
    if console is not None:
        console.print(f"responses: {result.statuses}; daemon windows: {len(result.windows)}")
    return record, series, meta
