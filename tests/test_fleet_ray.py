"""The fleet on a local Ray cluster: three virtual boards, a load that falls and rises.

Slow (a Ray cluster and a Serve application start in about 15 s): ``pytest -m slow``.
Skipped when Ray Serve is not installed (``pip install 'ecoserve[fleet]'``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

try:
    import ray
    from ray import serve

    from ecoserve.rayfleet.app import build_fleet
except Exception as exc:  # not installed, or installed against other protobuf/grpc versions
    pytest.skip(f"Ray Serve is not usable here: {exc}", allow_module_level=True)
from ecoserve.rayfleet.config import FleetSettings  # noqa: E402

BODY = {"input": [[[0.5] * 32] * 32] * 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(url: str, rate: float, seconds: float, codes: list[int], lock: threading.Lock) -> None:
    """Send ``rate`` requests per second for ``seconds`` from a few threads; keep each status."""

    def one() -> None:
        try:
            with httpx.Client(timeout=60) as c:
                code = c.post(f"{url}/v1/infer", json=BODY).status_code
        except httpx.HTTPError:
            code = -1
        with lock:
            codes.append(code)

    with ThreadPoolExecutor(16) as pool:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            pool.submit(one)
            n += 1
            time.sleep(max(0.0, start + n / rate - time.monotonic()))


def status(url: str) -> dict:
    return httpx.get(f"{url}/v1/status", timeout=10).json()


def wait_for(predicate, timeout_s: float, url: str) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while True:
        st = status(url)
        if predicate(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.25)


def test_three_virtual_boards_park_when_idle_wake_on_load_and_restore(tmp_path: Path) -> None:
    fleet = FleetSettings.from_args(
        {
            "boards": "xavier-nx:2,nano:1",
            "period_s": 0.5,
            "park_after_s": 2.0,
            # a small share of each board's busy rate, so that the test's load needs all three
            "capacity_share": 0.02,
            "state_dir": str(tmp_path),
            "serve": {
                "window_requests": 16,
                "warmup_requests": 4,
                "window_seconds": 1.0,
                "max_batch": 8,
            },
        }
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=2, resources={b.resource: 1 for b in fleet.boards}, include_dashboard=False)
    codes: list[int] = []
    lock = threading.Lock()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_fleet(fleet), name="fleet-test", route_prefix="/")
        st = wait_for(lambda s: s["ready"], 60, url)
        assert st["ready"], st

        load(url, 40.0, 4.0, codes, lock)  # busy: every board serves
        busy = status(url)
        assert sum(b["state"] == "serving" for b in busy["boards"].values()) == 3, busy

        # idle: all but one board parked at minimum clocks
        def parked(s: dict) -> bool:  # the boards' own reports lag the policy by one period
            down = [b for b in s["boards"].values() if b["state"] == "parked"]
            return len(down) == 2 and all(b.get("parked") for b in down)

        idle = wait_for(parked, 20, url)
        assert idle["counts"]["parked"] == 2, idle
        for b in idle["boards"].values():
            if b["state"] == "parked":
                assert b["parked"] and set(b["pinned"]) == {"cpu_freq_hz", "gpu_freq_hz"}

        # busy again: the parked boards are woken; one replica is killed under the load
        killed: list[str] = []
        killer = threading.Timer(2.5, kill_serving_board, args=(url, killed))
        killer.start()
        load(url, 40.0, 6.0, codes, lock)
        killer.join()
        woken = wait_for(lambda s: s["counts"]["serving"] >= 2, 20, url)
        events = [(e["board"], e["event"]) for e in woken["events"]]
        parked_boards = {n for n, e in events if e == "park"}
        assert parked_boards and all((n, "wake") in events for n in parked_boards), events
        assert killed, "no serving board to kill"
        print(f"killed {killed[0]}; requests moved to other boards: {woken['requests_moved']}")
        tuned = [b for b in woken["boards"].values() if (b.get("windows_closed") or 0) >= 2]
        assert tuned, "no board's tuner closed a window"
        assert any(b.get("tuner_phase") not in (None, "baseline") for b in tuned)
    finally:
        serve.shutdown()
        ray.shutdown()
    # every request answered, none lost to the parked boards or the killed replica
    assert codes and all(c == 200 for c in codes), sorted(set(codes))
    records = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.shutdown.json")}
    assert len(records) == 3, records.keys()
    assert all(r["restored"] for r in records.values()), records


def kill_serving_board(url: str, killed: list[str]) -> None:
    """Kill the Ray actor of a serving board's replica (Serve starts a new one)."""
    st = status(url)
    board = next(n for n, b in st["boards"].items() if b["state"] == "serving")
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if f"#board-{board}#" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
            killed.append(board)
            return
