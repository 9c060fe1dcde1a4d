"""The fleet on a local Ray cluster: three virtual boards, a load that falls and rises.

Two ways of parking: at minimum clocks (the replicas stay up), and powered off, where each
board is a Ray node of its own that a fake BMC removes from the cluster on the park command
and adds back on the unpark command, so a parked board's replica is gone until it is woken.

Slow (a Ray cluster and a Serve application start in about 15 s): ``pytest -m slow``.
Skipped when Ray Serve is not installed (``pip install 'ecoserve[fleet]'``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

try:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

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
            # spare capacity 20 times the rate, so that the test's load needs all three boards
            "headroom": 20.0,
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


class FakeBmc:
    """Powers boards off and on: the park command removes a board's Ray node, unpark adds it.

    The fleet's commands (run by the ingress, in its own process) drop a file in ``inbox``,
    named by the time it was run; :meth:`poll` carries them out in that order on the cluster
    and times each node's join. It runs in the
    test's main thread: Ray starts a node's processes only from there.
    """

    def __init__(self, cluster: Cluster, inbox: Path, nodes: dict[str, Any]) -> None:
        self.cluster, self.inbox, self.nodes = cluster, inbox, nodes
        self.joins: dict[str, list[float]] = {}
        self.errors: list[str] = []

    def poll(self) -> None:
        for path in sorted(self.inbox.iterdir()):
            _, verb, board = path.name.split("-", 2)
            path.unlink()
            try:
                if verb == "off" and board in self.nodes:
                    self.cluster.remove_node(self.nodes.pop(board))
                elif verb == "on" and board not in self.nodes:
                    t0 = time.monotonic()
                    self.nodes[board] = self.cluster.add_node(
                        num_cpus=0, resources={f"board_{board}": 1}
                    )
                    self.cluster.wait_for_nodes()
                    self.joins.setdefault(board, []).append(time.monotonic() - t0)
            except Exception as exc:  # reported by the test
                self.errors.append(f"{verb} {board}: {exc!r}")

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float, url: str) -> dict:
        """Carry out commands until the fleet's status satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for _ in range(5):
                self.poll()
                time.sleep(0.1)
            st = status(url)
            if predicate(st) or time.monotonic() > deadline:
                return st


def steady_load(
    url: str, rate: float, stop: threading.Event, codes: list[int], lock: threading.Lock
) -> threading.Thread:
    """``rate`` requests per second from a thread of its own until ``stop`` is set."""

    def run() -> None:
        while not stop.is_set():
            load(url, rate, 1.0, codes, lock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_powered_off_boards_are_unreachable_and_woken_through_ray_as_load_rises(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "bmc"
    inbox.mkdir()
    names = {"xavier-nx-0": "xavier-nx", "xavier-nx-1": "xavier-nx", "nano-0": "nano"}
    boards = [
        {
            "name": name,
            "kind": kind,
            "wake_s": 5.0,
            "boot_timeout_s": 120.0,
            "park_command": f"touch {inbox}/$(date +%s%N)-off-{{board}}",
            "unpark_command": f"touch {inbox}/$(date +%s%N)-on-{{board}}",
        }
        for name, kind in names.items()
    ]
    fleet = FleetSettings.from_args(
        {
            "boards": boards,
            "period_s": 0.5,
            "park_after_s": 2.0,
            "headroom": 20.0,  # the test's 40 req/s needs all three boards
            "stats_timeout_s": 2.0,
            "ingress_resource": "fleet_head",
            "state_dir": str(tmp_path / "state"),
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
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"fleet_head": 1}},
    )
    nodes = {n: cluster.add_node(num_cpus=0, resources={f"board_{n}": 1}) for n in names}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False)
    bmc = FakeBmc(cluster, inbox, nodes)
    codes: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(build_fleet(fleet), name="fleet-off", route_prefix="/")
        assert bmc.wait_for(lambda s: s["ready"], 120, url)["ready"]
        # busy: every board serves and measures its capacity and energy per request (until
        # then they are alike, and the policy's order among them is only their names)
        loader = steady_load(url, 40.0, stop, codes, lock)
        bmc.wait_for(lambda s: False, 4.0, url)
        stop.set()
        loader.join()
        stop.clear()

        # idle: two boards parked and powered off; their replicas are gone, so they are off
        off = bmc.wait_for(lambda s: s["counts"]["off"] == 2, 60, url)
        Path(os.environ.get("FLEET_RAY_REPORT", tmp_path / "report.json")).write_text(
            json.dumps([off, bmc.joins, bmc.errors], indent=1, default=str)
        )
        assert off["counts"]["off"] == 2 and off["counts"]["dead"] == 0, (off, bmc.errors)
        gone = {n for n, b in off["boards"].items() if b["state"] == "off"}
        assert gone.isdisjoint(bmc.nodes), (gone, bmc.nodes)

        # load: every request answered while the two boards boot (node join, replica, model)
        loader = steady_load(url, 40.0, stop, codes, lock)

        def up(s: dict) -> bool:
            timings = s["wake_timings"]
            return s["counts"]["serving"] == 3 and all(
                timings.get(n, {}).get("first_request_s") is not None for n in gone
            )

        st = bmc.wait_for(up, 150, url)
        time.sleep(2.0)  # the woken boards serve under the load a while
        stop.set()
        loader.join()
        st = status(url)
        report = (st["counts"], st["wake_timings"], st["events"], bmc.joins, bmc.errors)
        Path(os.environ.get("FLEET_RAY_REPORT", tmp_path / "report.json")).write_text(
            json.dumps(report, indent=1, default=str)
        )
        assert st["counts"]["serving"] == 3, report
        events = [(e["board"], e["event"]) for e in st["events"]]
        assert all((n, "wake") in events and (n, "up") in events for n in gone), report
        assert not st["wake_failures"] and not bmc.errors, report
        for n in gone:
            timing = st["wake_timings"][n]
            assert timing["placement_s"] is not None and timing["load_s"] is not None, timing
            assert st["boards"][n]["served"] > 0  # the new replica serves
            print(f"wake {n}: node join {bmc.joins.get(n)} s, {json.dumps(timing)}")
        for n, b in st["boards"].items():
            print(
                f"capacity {n} ({b['kind']}): {b['capacity_rps']:.1f} req/s, "
                f"batch line {b.get('batch_line_s')}"
            )
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    assert codes and all(c == 200 for c in codes), sorted(set(codes))
