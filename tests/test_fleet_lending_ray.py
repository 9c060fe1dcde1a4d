"""Lent boards train one data-parallel job on Ray; a recalled board leaves at a step boundary.

The replicas' own behaviour is tested without a cluster; the job on three virtual boards
(Ray custom resources on one node) is slow: ``pytest -m slow``. Skipped without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ecoserve.background.data_parallel import LendSettings
from ecoserve.rayfleet.config import FleetSettings, parse_boards
from ecoserve.rayfleet.ingress import FleetService
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tensors import TensorSpec

try:
    import ray

    from ecoserve.rayfleet.lending import FleetLender, LentTraining, Replica

    NO_RAY = ""
except Exception as exc:  # not installed, or installed against other protobuf/grpc versions
    NO_RAY = f"Ray is not usable here: {exc}"
needs_ray = pytest.mark.skipif(bool(NO_RAY), reason=NO_RAY)

BOARDS = ("xavier-nx-0", "xavier-nx-1", "nano-0")


class Board:
    """A board client of the ingress that serves at 100 req/s and parks when told."""

    def __init__(self) -> None:
        self.parked = False

    async def infer(self, items: list[Any]) -> list[Any]:
        return items

    async def stats(self) -> dict[str, Any]:
        return {"ready": True, "parked": self.parked, "busy_rate_rps": 100.0,
                "joules_per_request": 0.1}  # fmt: skip

    async def park(self) -> None:
        self.parked = True

    async def unpark(self) -> None:
        self.parked = False


class Lender:
    """Records what the ingress asks of the lent job."""

    def __init__(self, fail: bool = False) -> None:
        self.lent: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.closed = False

    def is_lent(self, board: str) -> bool:
        return board in self.lent

    async def lend(self, board: str) -> None:
        self.calls.append(("lend", board))
        if self.fail:
            raise RuntimeError("no Ray node offers it")
        self.lent.add(board)

    async def recall(self, board: str) -> None:
        self.calls.append(("recall", board))
        self.lent.discard(board)

    def status(self) -> dict[str, Any]:
        return {"members": sorted(self.lent)}

    async def close(self) -> None:
        self.closed = True


def fleet_with(lender: Lender) -> tuple[FleetService, list[str]]:
    boards = parse_boards("xavier-nx:3")
    for b in boards:
        object.__setattr__(b, "park_command", "bmc-off {board}")
        object.__setattr__(b, "unpark_command", "bmc-on {board}")
    commands: list[str] = []

    async def command(cmd: str) -> int:
        commands.append(cmd)
        return 0

    clock = iter(range(1000))
    svc = FleetService(
        FleetSettings(boards=boards, park_after_s=0.0),
        ServeSettings(),
        TensorSpec((2,), torch.float32),
        {b.name: Board() for b in boards},
        command=command,
        clock=lambda: float(next(clock)),
        lender=lender,
    )
    return svc, commands


async def test_the_ingress_lends_parked_boards_and_recalls_them_before_serving() -> None:
    lender = Lender()
    svc, commands = fleet_with(lender)
    await svc.tick()  # no traffic: two boards parked, lent instead of powered off
    await svc.settle()
    assert len(lender.lent) == 2 and commands == []
    assert svc.status()["lending"] == {"members": sorted(lender.lent)}
    lent = set(lender.lent)
    svc.arrivals = 500  # every board is needed again
    await svc.tick()
    await svc.settle()
    assert {b for op, b in lender.calls if op == "recall"} == lent and not lender.lent
    assert commands == []  # never powered off, so never powered on
    await svc.close()
    assert lender.closed


async def test_a_board_that_cannot_be_lent_is_parked_as_before() -> None:
    lender = Lender(fail=True)
    svc, commands = fleet_with(lender)
    await svc.tick()
    await svc.settle()
    assert len(lender.calls) == 2 and sorted(commands) == sorted(
        f"bmc-off {b}" for _, b in lender.calls
    )
    await svc.close()


def test_the_fleet_config_refuses_bad_values_before_ray_starts(tmp_path: Path) -> None:
    fleet = FleetSettings.from_args({"boards": "nano:1", "lend": {"group_size": 2, "k": 4}})
    assert fleet.lend == {"group_size": 2, "k": 4}
    with pytest.raises(ValueError, match="lend: unknown key"):
        FleetSettings.from_args({"boards": "nano:1", "lend": {"group": 2}})
    with pytest.raises(ValueError, match="wake_ramp_s='abc': expected a number"):
        FleetSettings.from_args({"boards": "nano:1", "wake_ramp_s": "abc"})
    # the job and its options are built when the settings are read, before Ray starts
    with pytest.raises(ValueError, match="lend.job='builtin:nope'.*unknown built-in"):
        FleetSettings.from_args({"boards": "nano:1", "lend": {"job": "builtin:nope"}})
    with pytest.raises(ValueError, match="takes no option 'zzz'"):
        FleetSettings.from_args({"boards": "nano:1", "lend": {"options": {"zzz": 3}}})
    with pytest.raises(ValueError, match="needs a job whose data it can shard"):
        FleetSettings.from_args(
            {
                "boards": "nano:1",
                "lend": {"job": "builtin:batch-infer", "options": {"output": str(tmp_path / "o")}},
            }
        )


def start_ray(*boards: str) -> None:
    """A local Ray cluster of its own (never one already running here) offering each board's
    resource."""
    ray.init(
        address="local",
        num_cpus=2,
        resources={f"board_{b}": 1 for b in boards},
        include_dashboard=False,
        log_to_driver=False,
    )


@pytest.fixture(scope="module")
def digits_loaded() -> Iterator[None]:
    """The shipped jobs, scikit-learn and the digits data imported once (seconds on a busy
    machine); the torch threads a replica sets put back after."""
    from ecoserve.background.specs import load_job

    load_job("builtin:digits-finetune")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@needs_ray
@pytest.mark.usefixtures("digits_loaded")
def test_replicas_on_their_own_batches_diverge_and_one_average_makes_them_equal() -> None:
    options = {"eval_every": 1_000_000}
    a = Replica("a", "builtin:digits-finetune", options)
    b = Replica("b", "builtin:digits-finetune", options)
    assert all(
        torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values())
    )  # same seed: same start
    ra, rb = a.step(0), b.step(1)
    assert ra["items"] == rb["items"] == 32 and not ra["done"]
    assert a.job.updates == b.job.updates == 1
    ta, tb = a.tensors(), b.tensors()
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)
    mean = a.mean(None, ta, tb)
    a.adopt(mean)
    b.adopt(mean)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values()))
    # a batch past the last epoch: the job is done, nothing trained
    epochs = int(a.job.options["epochs"])
    assert a.step(epochs * a.per_epoch)["done"]


@needs_ray
def test_a_job_whose_data_cannot_be_sharded_is_refused() -> None:
    with pytest.raises(ValueError, match="lend.job"):
        LentTraining(LendSettings(job="tests.test_background_jobs:counter_job"))
    with pytest.raises(ValueError):
        LentTraining(LendSettings(options={"batch_size": 0}))


@needs_ray
def test_recalling_a_board_that_is_not_lent_names_the_members() -> None:
    training = LentTraining()
    with pytest.raises(ValueError, match="not in the job"):
        training.recall("nano-0")
    assert not training.is_lent("nano-0")
    assert training.stop()["step"] == 0


def wait_step(training: LentTraining, step: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = training.status()
        if st["step"] >= step or st["error"] or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


@pytest.mark.slow
@needs_ray
def test_three_lent_boards_train_one_job_and_a_recalled_board_leaves(tmp_path: Path) -> None:
    start_ray(*BOARDS)
    try:
        settings = LendSettings(group_size=2, k=4, eval_every=4, options={"lr": 0.02})
        training = LentTraining(settings, state_dir=tmp_path)
        started = time.monotonic()
        for board in BOARDS:
            training.lend(board)
        first = wait_step(training, 2, 120)
        t_first, step_first = time.monotonic(), first["step"]
        st = wait_step(training, 18, 120)
        assert st["error"] is None, st["error"]
        assert st["members"] == sorted(BOARDS)
        assert st["groups"] == [["nano-0", "xavier-nx-0"], ["xavier-nx-1"]]
        t_three = time.monotonic() - t_first
        three_steps = st["step"] - step_first

        # recalled mid-cycle: it leaves at the next boundary after a global average
        asked = time.monotonic()
        left = training.recall("xavier-nx-1")
        t_recall = time.monotonic() - asked
        after = training.status()
        assert left["board"] == "xavier-nx-1" and left["steps"] >= 18
        assert after["members"] == ["nano-0", "xavier-nx-0"]
        assert not training.is_lent("xavier-nx-1") and training.is_lent("nano-0")
        recall_step = left["step"]
        begun = time.monotonic()
        st = wait_step(training, recall_step + 18, 120)
        t_two = time.monotonic() - begun
        assert st["error"] is None, st["error"]
        final = training.stop()
    finally:
        ray.shutdown()
    steps = final["steps_by_board"]
    assert steps["xavier-nx-1"] == left["steps"]  # no step after it left
    for board in ("nano-0", "xavier-nx-0"):  # the two that stayed took every step since
        assert steps[board] - after["steps_by_board"][board] == final["step"] - after["step"]
    assert final["accuracy"] > final["accuracy_start"] + 0.2, final["evaluations"]
    assert final["checkpoint_step"] == final["step"] and (tmp_path / "lend.ckpt").exists()
    print(
        f"accuracy {final['accuracy_start']:.3f} -> {final['accuracy']:.3f} over "
        f"{final['step']} steps; boards up after {t_first - started:.1f} s; 3 boards "
        f"{three_steps / t_three:.1f} steps/s, recall took {t_recall * 1e3:.0f} ms, 2 boards {(final['step'] - recall_step) / t_two:.1f} steps/s; "
        f"step {final['step_s'] * 1e3:.1f} ms, average {final['sync_s'] * 1e3:.1f} ms; "
        f"evaluations {[(int(e['step']), round(e['accuracy'], 3)) for e in final['evaluations']]}"
    )
    # the next start resumes where the checkpoint left off
    resumed = LentTraining(settings, state_dir=tmp_path)
    assert resumed.status()["step"] == final["step"]
    assert resumed.status()["steps_by_board"] == steps


@pytest.mark.slow
@needs_ray
async def test_the_fleet_lender_lends_and_recalls_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    start_ray("nano-0")
    try:
        lender = FleetLender(LentTraining(LendSettings(), state_dir=tmp_path))
        with pytest.raises(ValueError, match="no live Ray node offers resource 'board_ghost'"):
            await lender.lend("ghost")  # the ingress then parks it as it would without lending
        await lender.lend("nano-0")
        assert lender.is_lent("nano-0")
        wait_step(lender.training, 3, 60)
        await lender.recall("nano-0")
        await lender.recall("nano-0")  # not lent any more: logged, never raised
        assert not lender.is_lent("nano-0")
        st = lender.status()
        assert st["members"] == [] and st["step"] >= 3 and not st["error"]
        await lender.close()
    finally:
        ray.shutdown()
    assert (tmp_path / "lend.ckpt").exists()


@pytest.mark.slow
@needs_ray
def test_a_board_recalled_while_its_replica_starts_leaves_at_once(tmp_path: Path) -> None:
    start_ray("nano-0")
    try:
        training = LentTraining(LendSettings(), state_dir=tmp_path)
        training.lend("nano-0")
        deadline = time.monotonic() + 30
        while training.status()["members"] != ["nano-0"] and time.monotonic() < deadline:
            time.sleep(0.005)  # the boundary made it a member: its replica starts now
        events = [(e["board"], e["event"]) for e in training.status()["events"]]
        assert ("nano-0", "joined") not in events  # a fresh worker takes seconds to import
        asked = time.monotonic()
        left = training.recall("nano-0", timeout_s=60)
        took = time.monotonic() - asked
        st = training.status()
        assert left["steps"] == 0 and st["steps_by_board"].get("nano-0", 0) == 0
        assert st["members"] == [] and st["error"] is None
        events = [(e["board"], e["event"]) for e in st["events"]]
        assert ("nano-0", "left") in events and ("nano-0", "joined") not in events
        # lent again, it starts and trains as a board never recalled does
        training.lend("nano-0")
        st = wait_step(training, 2, 120)
        assert st["error"] is None and st["members"] == ["nano-0"], st
        training.stop()
    finally:
        ray.shutdown()
    print(f"recalled while starting: left {took * 1e3:.0f} ms after the recall")


@pytest.mark.slow
@needs_ray
def test_a_member_recalled_while_another_board_starts_leaves_without_waiting(
    tmp_path: Path,
) -> None:
    start_ray("nano-0", "nano-1")
    try:
        training = LentTraining(LendSettings(), state_dir=tmp_path)
        training.lend("nano-0")
        assert wait_step(training, 3, 120)["error"] is None
        training.lend("nano-1")
        deadline = time.monotonic() + 30
        while "nano-1" not in training.status()["members"] and time.monotonic() < deadline:
            time.sleep(0.005)  # the boundary made it a member: its replica starts now
        left = training.recall("nano-0", timeout_s=60)
        st = training.status()
        events = [(e["board"], e["event"]) for e in st["events"]]
        # nano-0 left before nano-1 was up (without waiting for its start and a step)
        assert ("nano-0", "left") in events, events
        if ("nano-1", "joined") in events:
            assert events.index(("nano-0", "left")) < events.index(("nano-1", "joined"))
        assert left["steps"] == st["steps_by_board"]["nano-0"] == left["step"]
        # nano-1 goes on from where nano-0 was
        st = wait_step(training, left["step"] + 3, 120)
        assert st["error"] is None and st["members"] == ["nano-1"], st
        assert st["steps_by_board"]["nano-1"] == st["step"] - left["step"]
        final = training.stop()
    finally:
        ray.shutdown()
    assert final["checkpoint_step"] == final["step"]
