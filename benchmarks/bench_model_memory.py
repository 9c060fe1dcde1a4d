"""Six models under a memory budget that holds three: every request answered, swaps reported.

One ``ecoserve serve --model-repository`` daemon over six models written from the built-in
ones (TorchScript and ONNX). A first daemon with a roomy budget measures each model's
resident size (``/v1/status`` ``memory``); the second runs with ``--memory-budget`` set to
hold the three largest and calls the models one request at a time in two orders: ``cycle``
(each in turn, ``--rounds`` times: least-recently-used eviction's worst case, every call a
swap-in) and ``hot`` (every other call to one model, the rest in turn). Reported: requests answered,
swap-ins (``ecoserve_model_loads_total`` less the loads at start), the load time the
daemon measured, and the latency of requests that swapped in against those that did not.

    python benchmarks/bench_model_memory.py --out bench_model_memory.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_http import HOST, free_port, server

from ecoserve.models.repository_export import write_model

#: name -> (built-in model, format, item shape)
MODELS = {
    "m1_cnn": ("cnn", "pytorch", (3, 32, 32)),
    "m2_transformer": ("transformer", "pytorch", (32, 64)),
    "m3_digits_large": ("digits-large", "onnxruntime", (1, 8, 8)),
    "m4_cnn_onnx": ("cnn", "onnxruntime", (3, 32, 32)),
    "m5_digits_small": ("digits-small", "pytorch", (1, 8, 8)),
    "m6_transformer_onnx": ("transformer", "onnxruntime", (32, 64)),
}


def daemon_cmd(repo: Path, port: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "ecoserve", "serve", "--model-repository", str(repo),
        "--host", HOST, "--port", str(port), "--no-baseline-at-start", *extra,
    ]  # fmt: skip


def loads(metrics: str) -> dict[str, float]:
    found = re.findall(r'ecoserve_model_loads_total\{model="([^"]+)"\} ([0-9.e+]+)', metrics)
    return {m: float(v) for m, v in found}


def call(client: httpx.Client, url: str, name: str) -> tuple[int, float]:
    shape = MODELS[name][2]
    body = {"input": np.zeros(shape, np.float32).tolist()}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/infer?model={name}", json=body, timeout=60)
    return r.status_code, time.perf_counter() - t0


def _spread(latencies: list[float]) -> dict[str, float | int | None]:
    if not latencies:
        return {"n": 0, "p50": None, "max": None}
    return {
        "n": len(latencies),
        "p50": round(1e3 * float(np.median(latencies)), 2),
        "max": round(1e3 * max(latencies), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ecoserve-memory-"))
    repo = work / "repository"
    for name, (builtin, fmt, _) in MODELS.items():
        write_model(repo, name, builtin, fmt, max_batch_size=8)  # type: ignore[arg-type]

    port = free_port()
    with server(daemon_cmd(repo, port, []), port, "/healthz", work / "roomy.log"):
        memory = httpx.get(f"http://{HOST}:{port}/v1/status").json()["memory"]
    sizes = {m["name"]: int(m["bytes"] or m["device_bytes"] or 0) for m in memory["models"]}
    three = sorted(sizes.values(), reverse=True)[:3]
    budget = sum(three) + min(sizes.values()) // 2  # the three largest fit, a fourth does not

    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = daemon_cmd(repo, port, ["--memory-budget", str(budget)])
    rows: list[dict[str, Any]] = []
    with server(cmd, port, "/healthz", work / "budget.log"), httpx.Client() as client:
        names = list(MODELS)
        orders = {
            "cycle": names * args.rounds,
            "hot": [n for rest in names[1:] * args.rounds for n in (names[0], rest)],
        }
        for pattern, order in orders.items():
            for name in order:
                seen = loads(client.get(url + "/metrics").text).get(name, 0.0)
                status, latency = call(client, url, name)
                swapped = loads(client.get(url + "/metrics").text).get(name, 0.0) > seen
                rows.append(
                    {"pattern": pattern, "model": name, "status": status,
                     "latency_s": latency, "swap_in": swapped}
                )  # fmt: skip
        status_doc = client.get(url + "/v1/status").json()
    summary: dict[str, object] = {"sizes_bytes": sizes, "budget_bytes": budget}
    for pattern in orders:
        mine = [r for r in rows if r["pattern"] == pattern]
        swap_lat = [float(r["latency_s"]) for r in mine if r["swap_in"]]
        kept_lat = [float(r["latency_s"]) for r in mine if not r["swap_in"]]
        summary[pattern] = {
            "requests": len(mine),
            "answered": sum(1 for r in mine if r["status"] == 200),
            "swap_ins": len(swap_lat),
            "latency_ms_swap_in": _spread(swap_lat),
            "latency_ms_resident": _spread(kept_lat),
        }
    summary["load_s_total_by_model"] = {
        n: m["load_s_total"] for n, m in status_doc["models"].items()
    }
    summary["loads_by_model"] = {n: m["loads"] for n, m in status_doc["models"].items()}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
