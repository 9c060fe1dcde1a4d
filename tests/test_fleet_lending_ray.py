"""Lent boards train one data-parallel job on Ray; a recalled board leaves at a step boundary.

The replicas' own behaviour is tested without a cluster; the job on three virtual boards
(Ray custom resources on one node) is slow: ``pytest -m slow``. Skipped without Ray.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

try:
    import ray

    from ecoserve.rayfleet.lending import FleetLender, LentTraining, Replica
except Exception as exc:  # not installed, or installed against other protobuf/grpc versions
    pytest.skip(f"Ray is not usable here: {exc}", allow_module_level=True)
from ecoserve.background.data_parallel import LendSettings  # noqa: E402

BOARDS = ("xavier-nx-0", "xavier-nx-1", "nano-0")


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


def test_a_job_whose_data_cannot_be_sharded_is_refused() -> None:
    with pytest.raises(ValueError, match="lend.job"):
        LentTraining(LendSettings(job="tests.test_background_jobs:counter_job"))
    with pytest.raises(ValueError):
        LentTraining(LendSettings(options={"batch_size": 0}))


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
def test_three_lent_boards_train_one_job_and_a_recalled_board_leaves(tmp_path: Path) -> None:
    ray.init(
        num_cpus=2,
        resources={f"board_{b}": 1 for b in BOARDS},
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        settings = LendSettings(group_size=2, k=4, eval_every=4, options={"lr": 0.02})
        training = LentTraining(settings, state_dir=tmp_path)
        started = time.monotonic()
        for board in BOARDS:
            training.lend(board)
        st = wait_step(training, 18, 120)
        assert st["error"] is None, st["error"]
        assert st["members"] == sorted(BOARDS)
        assert st["groups"] == [["nano-0", "xavier-nx-0"], ["xavier-nx-1"]]
        t_three = time.monotonic() - started

        # recalled mid-cycle: it leaves at the next boundary after a global average
        left = training.recall("xavier-nx-1")
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
    assert steps["nano-0"] == steps["xavier-nx-0"] == final["step"]
    assert final["accuracy"] > final["accuracy_start"] + 0.2, final["evaluations"]
    assert final["checkpoint_step"] == final["step"] and (tmp_path / "lend.ckpt").exists()
    print(
        f"accuracy {final['accuracy_start']:.3f} -> {final['accuracy']:.3f} over "
        f"{final['step']} steps; 3 boards {recall_step / t_three:.1f} steps/s (with start), "
        f"2 boards {(final['step'] - recall_step) / t_two:.1f} steps/s; "
        f"step {final['step_s'] * 1e3:.1f} ms, average {final['sync_s'] * 1e3:.1f} ms; "
        f"evaluations {[(int(e['step']), round(e['accuracy'], 3)) for e in final['evaluations']]}"
    )
    # the next start resumes where the checkpoint left off
    resumed = LentTraining(settings, state_dir=tmp_path)
    assert resumed.status()["step"] == final["step"]
    assert resumed.status()["steps_by_board"] == steps


@pytest.mark.slow
async def test_the_fleet_lender_lends_and_recalls_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    ray.init(
        num_cpus=2, resources={"board_nano-0": 1}, include_dashboard=False, log_to_driver=False
    )
    try:
        lender = FleetLender(LentTraining(LendSettings(), state_dir=tmp_path))
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
