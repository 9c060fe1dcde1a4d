"""The fleet's ingress and board engine without Ray: routing, failover, parking, HTTP API."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from ecoserve.core.fleet import BoardState
from ecoserve.rayfleet.board import BoardService
from ecoserve.rayfleet.config import FleetSettings, parse_boards
from ecoserve.rayfleet.ingress import FleetService, fleet_app
from ecoserve.server.service import ServiceError
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tensors import TensorSpec
from twins.fitted import load_twin


class FakeBoard:
    """A board client that answers ``2 * x``, or fails as told."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.served = 0
        self.fail: Exception | None = None
        self.stats_fail = False
        self.stats_delay = 0.0
        self.powered = True
        self.parked = False
        self.calls: list[str] = []

    async def infer(self, items: list[Any]) -> list[Any]:
        if not self.powered:
            raise ConnectionError("board is powered off")
        if self.fail is not None:
            raise self.fail
        self.served += len(items)
        return [x * 2 for x in items]

    async def stats(self) -> dict[str, Any]:
        await asyncio.sleep(self.stats_delay)
        if self.stats_fail or not self.powered:
            raise ConnectionError("node gone")
        return {
            "ready": True,
            "parked": self.parked,
            "batch_line_s": [0.0, 1 / 60],  # 60 req/s within the 250 ms target
            "max_batch": 16,
            "joules_per_request": 0.1,
            "energy_j": 5.0,
        }

    async def park(self) -> None:
        if not self.powered:
            raise ConnectionError("board is powered off")
        self.parked = True
        self.calls.append("park")

    async def unpark(self) -> None:
        if not self.powered:
            raise ConnectionError("board is powered off")
        self.parked = False
        self.calls.append("unpark")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(policy: str = "consolidation", n: int = 3, **extra: Any) -> tuple[FleetService, dict]:
    fleet = FleetSettings(
        boards=parse_boards(f"xavier-nx:{n}"), policy=policy, park_after_s=0.0, **extra
    )
    clients = {b.name: FakeBoard(b.name) for b in fleet.boards}
    commands: list[str] = []

    async def command(cmd: str) -> int:
        commands.append(cmd)
        return 0

    svc = FleetService(
        fleet,
        ServeSettings(),
        TensorSpec((2,), torch.float32),
        clients,
        command=command,
        clock=Clock(),
    )
    return svc, {"clients": clients, "commands": commands}


def test_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown fleet setting"):
        FleetSettings.from_args({"boards": "nano:1", "polcy": "all-on"})
    with pytest.raises(ValueError, match="KIND:COUNT"):
        parse_boards("nano:two")
    with pytest.raises(ValueError, match="board name"):
        parse_boards([{"name": "bad name!"}])
    boards = parse_boards("xavier-nx:2,nano:1")
    assert [b.resource for b in boards] == [
        "board_xavier-nx-0",
        "board_xavier-nx-1",
        "board_nano-0",
    ]
    assert boards[2].device_spec == "virtual:nano"


async def test_a_failing_board_s_request_is_moved_and_the_board_taken_out() -> None:
    svc, env = make("all-on")
    await svc.tick()
    clients = env["clients"]
    clients["xavier-nx-0"].fail = RuntimeError("actor died")
    out = [await svc.infer([torch.tensor([1.0, 2.0])]) for _ in range(6)]
    assert all(torch.equal(o[0], torch.tensor([2.0, 4.0])) for o in out)
    assert svc.moved == 1 and "xavier-nx-0" in svc.failed
    assert clients["xavier-nx-0"].served == 0
    clients["xavier-nx-0"].stats_fail = True
    await svc.tick()
    assert svc.policy.state["xavier-nx-0"] is BoardState.DEAD
    assert "xavier-nx-0" not in svc.router.weights
    clients["xavier-nx-0"].fail = None  # restarted by Ray: answers again
    clients["xavier-nx-0"].stats_fail = False
    await svc.tick()
    assert svc.policy.state["xavier-nx-0"] is BoardState.SERVING
    assert "xavier-nx-0" in svc.router.weights


async def test_a_full_board_hands_over_but_a_bad_request_is_not_retried() -> None:
    svc, env = make("all-on", n=2)
    await svc.tick()
    env["clients"]["xavier-nx-0"].fail = ServiceError(503, "queue full", "rejected")
    for _ in range(4):
        await svc.infer([1.0])
    assert env["clients"]["xavier-nx-1"].served == 4
    env["clients"]["xavier-nx-1"].fail = ServiceError(422, "bad shape", "invalid")
    with pytest.raises(ServiceError) as err:
        await svc.infer([1.0])
    assert err.value.status == 422  # whichever board it tried first


async def test_idle_boards_are_parked_with_the_operator_command_and_woken_on_load() -> None:
    svc, env = make(n=3)
    for b in svc.boards.values():
        object.__setattr__(b, "park_command", "bmc-off {board}")
        object.__setattr__(b, "unpark_command", "bmc-on {board}")
    await svc.tick()  # no traffic: one board stays, two are parked
    await svc.settle()
    parked = [n for n, c in env["clients"].items() if c.calls == ["park"]]
    assert len(parked) == 2
    assert sorted(env["commands"]) == sorted(f"bmc-off {n}" for n in parked)
    clock = svc.clock
    clock.t += 1.0
    svc.arrivals = 250  # 250 req/s: the capacity of three boards of 60 req/s is needed
    await svc.tick()
    await svc.settle()
    assert all(c.calls == ["park", "unpark"] for n, c in env["clients"].items() if n in parked)
    assert {f"bmc-on {n}" for n in parked} <= set(env["commands"])
    assert len(svc.router.weights) == 3


async def test_the_daemon_s_routes_serve_the_fleet() -> None:
    svc, env = make("all-on", n=2)
    await svc.tick()
    app = fleet_app(svc)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as c:
        r = await c.post("/v1/infer", json={"input": [1.0, 2.0]})
        assert r.status_code == 200 and r.json()["output"] == [2.0, 4.0]
        r = await c.post("/v1/infer", json={"input": [1.0, 2.0, 3.0]})
        assert r.status_code == 422  # the daemon's own shape check
        status = (await c.get("/v1/status")).json()
        assert set(status["boards"]) == {"xavier-nx-0", "xavier-nx-1"}
        assert status["boards"]["xavier-nx-0"]["state"] == "serving"
        metrics = (await c.get("/metrics")).text
        assert 'ecoserve_fleet_boards{state="serving"} 2.0' in metrics
        assert "ecoserve_requests_total" in metrics
        assert (await c.get("/v2/health/ready")).status_code == 200
        body = {
            "inputs": [
                {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
            ]
        }
        r = await c.post("/v2/models/cnn/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        r = await c.get("/v2/models/cnn/stats")
        assert r.json()["model_stats"][0]["inference_stats"]["success"]["count"] == 1


async def test_board_service_parks_at_minimum_clocks_and_restores_at_close(tmp_path: Path) -> None:
    settings = ServeSettings(
        device="virtual:nano",
        window_requests=8,
        warmup_requests=2,
        window_seconds=1.0,
        max_batch=4,
        torch_threads=1,
        watchdog_s=None,
    )
    board = BoardService("nano-0", settings, str(tmp_path))
    await board.start()
    try:
        item = board.service.model.example_item()
        out = await board.infer([item, item])
        assert len(out) == 2
        pinned = await board.park()
        knobs = {k.name: k.values[0] for k in board.device.actuator.knobs()}
        assert pinned == knobs and board.device.actuator.current() == knobs
        await board.infer([item])  # a parked board still answers what it was sent
        await board.unpark()
        st = board.stats()
        assert st["pinned"] == {}
        # its batch times, from which the ingress estimates its capacity: at least the Nano
        # twin's own (a virtual board runs at its twin's pace)
        t0, t1 = st["batch_line_s"]
        assert t0 + t1 >= 0.9 * load_twin("nano").batch_time(1, load_twin("nano").max_freqs())
        assert st["max_batch"] == 4 and st["load_s"] > 0 and st["start_s"] > 0
        assert st["created_at"] <= time.time()
    finally:
        record = await board.close()
    assert record["restored"] and record["served"] == 3
    saved = json.loads((tmp_path / "nano-0.shutdown.json").read_text())
    assert saved["final"] == saved["initial"]


def test_cli_fleet_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecoserve.cli import main

    assert main(["fleet", "--boards", "nano:x"]) == 2
    assert "KIND:COUNT" in capsys.readouterr().err
    bad = tmp_path / "fleet.toml"
    bad.write_text('boards = "nano:1"\npolcy = "all-on"\n')
    assert main(["fleet", "--config", str(bad)]) == 2
    assert "unknown fleet setting" in capsys.readouterr().err
    bad.write_text("boards = [")
    assert main(["fleet", "--config", str(bad)]) == 2
    assert "--config" in capsys.readouterr().err


def test_a_board_s_refusal_survives_the_trip_to_the_ingress() -> None:
    """Ray pickles a replica's exception: a board's 503 must arrive as a 503, not a crash."""
    import pickle

    err = pickle.loads(
        pickle.dumps(ServiceError(503, "queue full", "rejected", {"Retry-After": "1"}))
    )
    assert (err.status, err.detail, err.outcome, err.headers) == (
        503,
        "queue full",
        "rejected",
        {"Retry-After": "1"},
    )


def make_powered(
    n: int = 3, boot_s: float = 0.05, boot_timeout_s: float = 2.0, **extra: Any
) -> tuple[FleetService, dict[str, FakeBoard], list[str]]:
    """A fleet whose park command powers a board off: it answers nothing until powered on.

    ``bmc-on`` powers the board on ``boot_s`` later (its boot), as a BMC would.
    """
    boards = tuple(
        replace(
            b,
            park_command="bmc-off {board}",
            unpark_command="bmc-on {board}",
            boot_timeout_s=boot_timeout_s,
            wake_s=30.0,
        )
        for b in parse_boards(f"xavier-nx:{n}")
    )
    fleet = FleetSettings(boards=boards, park_after_s=0.0, period_s=0.2, **extra)
    clients = {b.name: FakeBoard(b.name) for b in boards}
    commands: list[str] = []

    async def power_on(board: FakeBoard) -> None:
        await asyncio.sleep(boot_s)
        board.powered = True

    async def command(cmd: str) -> int:
        commands.append(cmd)
        verb, name = cmd.split()
        if verb == "bmc-off":
            clients[name].powered = False
        elif boot_s >= 0:
            asyncio.get_running_loop().create_task(power_on(clients[name]))
        return 0

    svc = FleetService(
        fleet,
        ServeSettings(),
        TensorSpec((2,), torch.float32),
        clients,
        command=command,
        clock=Clock(),
    )
    return svc, clients, commands


async def parked_off(svc: FleetService) -> list[str]:
    """Idle until two of three boards are parked and powered off; their names."""
    await svc.tick()
    await svc.settle()
    svc.clock.t += 1.0
    await svc.tick()  # the parked boards no longer answer
    return [n for n, st in svc.policy.state.items() if st is BoardState.OFF]


async def test_powered_off_boards_are_off_not_dead_and_woken_when_load_rises() -> None:
    svc, clients, commands = make_powered(boot_s=0.05)
    off = await parked_off(svc)
    assert len(off) == 2 and all(not clients[n].powered for n in off)
    assert svc.status()["counts"]["off"] == 2 and svc.status()["counts"]["dead"] == 0
    svc.clock.t += 1.0
    svc.arrivals = 250  # three boards of 60 req/s are needed
    await svc.tick()
    await asyncio.sleep(0.01)  # the wakes run beside the policy loop; the boot takes 0.05 s
    assert {f"bmc-on {n}" for n in off} <= set(commands)
    assert all(svc.policy.state[n] is BoardState.WAKING for n in off)
    # requests while they boot go to the board that serves; none is sent to a booting one
    out = await asyncio.gather(*(svc.infer([torch.tensor([1.0, 2.0])]) for _ in range(40)))
    assert len(out) == 40 and svc.moved == 0
    await svc.settle()
    assert all(svc.policy.state[n] is BoardState.SERVING for n in off)
    assert len(svc.router.weights) == 3
    out = await asyncio.gather(*(svc.infer([torch.tensor([1.0, 2.0])]) for _ in range(60)))
    assert all(torch.equal(o[0], torch.tensor([2.0, 4.0])) for o in out)
    assert all(clients[n].served > 0 for n in off) and svc.moved == 0
    assert [e["event"] for e in svc.events].count("up") == 2


async def test_a_board_that_does_not_boot_in_time_is_marked_failed_and_reported() -> None:
    svc, clients, _ = make_powered(boot_s=-1.0, boot_timeout_s=0.3)  # bmc-on does nothing
    off = await parked_off(svc)
    svc.clock.t += 1.0
    svc.arrivals = 250
    await svc.tick()
    await svc.settle()
    assert all(svc.policy.state[n] is BoardState.DEAD for n in off)
    assert set(svc.status()["wake_failures"]) == set(off)
    assert [e["board"] for e in svc.events if e["event"] == "wake-failed"] == off
    assert len(svc.router.weights) == 1  # the one board left still serves


async def test_when_the_only_serving_board_dies_a_parked_one_is_woken_for_the_request() -> None:
    svc, clients, commands = make_powered(boot_s=0.05)
    off = await parked_off(svc)
    (up,) = set(clients) - set(off)
    clients[up].fail = RuntimeError("actor died")
    out = await asyncio.gather(*(svc.infer([torch.tensor([1.0, 2.0])]) for _ in range(10)))
    assert len(out) == 10 and clients[up].served == 0
    woken = [n for n in off if clients[n].served]
    assert len(woken) == 1  # one wake, shared by the waiting requests
    assert f"bmc-on {woken[0]}" in commands and clients[woken[0]].calls[-1] == "unpark"
    assert svc.policy.state[woken[0]] is BoardState.SERVING


async def test_a_parked_board_is_not_sent_requests_before_its_wake() -> None:
    """Parked at minimum clocks (it answers): the fallback wakes it before using it."""
    svc, env = make(n=2)
    await svc.tick()
    await svc.settle()
    (parked,) = [n for n, st in svc.policy.state.items() if st is BoardState.PARKED]
    (up,) = set(env["clients"]) - {parked}
    env["clients"][up].fail = RuntimeError("actor died")
    await svc.infer([1.0])
    assert env["clients"][parked].calls == ["park", "unpark"]
    assert svc.policy.state[parked] is BoardState.SERVING


async def test_a_policy_step_does_not_wait_on_a_slow_stats_call() -> None:
    svc, env = make("all-on", n=2, period_s=0.2, stats_timeout_s=0.6)
    slow = env["clients"]["xavier-nx-1"]
    slow.stats_delay = 0.15  # longer than the step waits (half a period), shorter than 0.6 s
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await svc.tick()
    assert loop.time() - t0 < 0.15
    assert "xavier-nx-1" not in svc.board_stats  # not in yet, and not taken out either
    assert svc.policy.state["xavier-nx-1"] is BoardState.SERVING
    await asyncio.sleep(0.1)
    await svc.tick()
    assert svc.board_stats["xavier-nx-1"]["ready"]  # the answer, carried to the next step
    slow.stats_delay = 10.0  # hangs
    await svc.tick()
    await svc.tick()
    assert svc.policy.state["xavier-nx-1"] is BoardState.SERVING
    await asyncio.sleep(0.7)
    t0 = loop.time()
    await svc.tick()
    assert loop.time() - t0 < 0.15
    assert svc.policy.state["xavier-nx-1"] is BoardState.DEAD
    await svc.close()


def test_the_old_policy_name_still_works_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    fleet = FleetSettings.from_args({"boards": "nano:2", "policy": "ray-rule"})
    assert fleet.policy == "ray-autoscale"
    assert "deprecated" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown fleet policy"):
        FleetSettings.from_args({"boards": "nano:2", "policy": "oracle"})


def test_a_virtual_board_runs_at_its_twin_s_speed_not_the_host_s() -> None:
    """A host that computes a batch in 1 ms still waits out the twin's own batch time."""
    from twins.virtual_device import VirtualDevice

    def batch_s(kind: str, twin_pace: bool) -> tuple[float, float]:
        twin = load_twin(kind)
        device = VirtualDevice(twin, clock=lambda: 0.0, twin_pace=twin_pace)
        device.begin_batch(8)
        extra = device.end_batch(8, 0.001)
        device.batch_done()
        return 0.001 + extra, twin.batch_time(8, twin.max_freqs())

    nano, nano_twin = batch_s("nano", twin_pace=True)
    orin, orin_twin = batch_s("orin", twin_pace=True)
    assert nano == pytest.approx(nano_twin) and orin == pytest.approx(orin_twin)
    assert nano > 3 * orin  # the twins' ranking, whatever the host
    assert batch_s("nano", twin_pace=False)[0] == pytest.approx(0.001)  # relative stretch only


def test_a_fleet_board_on_a_virtual_device_runs_at_twin_pace() -> None:
    board = BoardService("nano-0", ServeSettings(device="virtual:nano", torch_threads=1))
    assert board.device.board.twin_pace  # type: ignore[attr-defined]


async def test_a_board_s_capacity_is_the_highest_rate_within_the_target_from_its_batches() -> None:
    svc, env = make("all-on", n=2, slo_s=0.25)
    await svc.tick()
    # 60 req/s: batches of up to 7 at 1/60 s per item finish within 125 ms
    assert svc.policy.boards["xavier-nx-0"].capacity_rps == pytest.approx(60.0)
    slow = env["clients"]["xavier-nx-1"]

    async def slow_stats() -> dict[str, Any]:
        return {"ready": True, "batch_line_s": [0.2, 0.01], "joules_per_request": 0.1}

    slow.stats = slow_stats  # type: ignore[method-assign]
    svc.clock.t += 1.0
    await svc.tick()
    # not one item within the target: the lowest capacity, the last board asked to serve
    assert svc.policy.boards["xavier-nx-1"].capacity_rps == 1.0
    assert svc.router.weights["xavier-nx-0"] > 0.98
    svc.fleet = replace(svc.fleet, slo_s=0.1)  # a tighter target: smaller batches, less
    svc.clock.t += 1.0
    await svc.tick()
    assert svc.policy.boards["xavier-nx-0"].capacity_rps == pytest.approx(60.0)
    svc.fleet = replace(svc.fleet, slo_s=0.02)
    svc.clock.t += 1.0
    await svc.tick()
    assert svc.policy.boards["xavier-nx-0"].capacity_rps == 1.0


def test_the_old_capacity_share_setting_is_ignored_with_a_line_saying_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = FleetSettings.from_args({"boards": "nano:1", "capacity_share": "0.3", "slo_s": "0.1"})
    err = capsys.readouterr().err
    assert "capacity_share" in err and "deprecated" in err and "slo_s" in err
    assert fleet.params.slo_s == 0.1
    with pytest.raises(ValueError, match="slo_s"):
        FleetSettings.from_args({"boards": "nano:1", "slo_s": "0"})


def test_each_board_s_tuner_keeps_the_fleet_s_latency_target() -> None:
    from ecoserve.rayfleet.config import board_settings

    fleet = FleetSettings.from_args({"boards": "nano:1", "slo_s": 0.2})
    settings = board_settings(fleet, fleet.boards[0])
    assert (settings.slo_latency_s, settings.slo_percentile) == (0.2, 99.0)
    own = FleetSettings.from_args(
        {"boards": "nano:1", "serve": {"slo_latency_s": 0.5, "slo_percentile": 95.0}}
    )
    assert board_settings(own, own.boards[0]).slo_latency_s == 0.5


async def test_each_wake_is_timed_from_the_command_to_the_first_answered_request() -> None:
    svc, clients, _ = make_powered(boot_s=0.05)
    off = await parked_off(svc)
    svc.clock.t += 1.0
    svc.arrivals = 250
    await svc.tick()
    await svc.settle()
    timings = svc.status()["wake_timings"]
    assert set(timings) == set(off)
    for n in off:
        t = timings[n]
        assert t["command_s"] is not None and t["answer_s"] is not None
        assert t["command_s"] <= t["answer_s"] <= t["up_s"]
        assert "first_request_s" not in t  # nothing sent to it yet
    svc.clock.t += 0.5
    for _ in range(40):  # a woken board's share starts at a tenth of its capacity's
        await svc.infer([torch.tensor([1.0, 2.0])])
    timings = svc.status()["wake_timings"]
    assert all(timings[n]["first_request_s"] == pytest.approx(0.5) for n in off)
