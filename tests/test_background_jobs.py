"""Background jobs: the shipped jobs train and infer, resume exactly, checkpoint atomically,
survive a SIGKILL, and a failing step pauses the job with its reason."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ecoserve.background import (
    FunctionJob,
    JobNotRunnable,
    JobRunner,
    StepCost,
    StepResult,
    background_job,
    step_cost,
)
from ecoserve.background import checkpoint as ckpt_module
from ecoserve.background.batch_inference import BatchInference
from ecoserve.background.checkpoint import (
    Checkpoint,
    CheckpointError,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ecoserve.background.digits_finetune import DigitsFinetune
from ecoserve.background.runner import CHECKPOINT_FILE
from ecoserve.background.specs import BUILTIN_JOBS, _builtin_factories, load_job
from ecoserve.background.step_cost import DIGITS_FINETUNE_LARGE, DIGITS_FINETUNE_SMALL
from ecoserve.models.digits import load_digits_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def warm_imports() -> None:
    """The first digits split imports scikit-learn and the first optimizer imports torch's
    compiler stack (seconds each): paid once, in setup, not by whichever test runs first."""
    DigitsFinetune()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on one thread, as a background job shares a board: fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Micro-batches that do not divide the update group, so resumes land mid-group.
MICROS = (5, 8, 3, 16, 7)


def run(job: Any, steps: int, first: int = 0) -> list[float]:
    """Losses of ``steps`` steps, cycling through MICROS from position ``first``."""
    return [job.step(MICROS[(first + i) % len(MICROS)]).loss for i in range(steps)]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """A state as a checkpoint file would give it back (serialised, checked, unpickled)."""
    data = encode_checkpoint(Checkpoint(job="j", step=1, state=state))
    path = Path(os.environ["STATE_DIRECTORY"]) / "roundtrip.ckpt"
    path.write_bytes(data)
    return dict(load_checkpoint(path).state)


# --- the digits fine-tune -------------------------------------------------------------------


def test_finetune_held_out_accuracy_rises_as_it_trains() -> None:
    job = DigitsFinetune(epochs=1, eval_every=5, seed=0)
    accuracies = []
    while True:
        result = job.step(32)
        if "accuracy" in result.metric:
            accuracies.append(result.metric["accuracy"])
        if result.done:
            break
    assert len(accuracies) >= 8
    assert accuracies[0] < 0.7  # a fresh head starts far from trained
    assert accuracies[-1] > 0.85
    assert max(accuracies[-3:]) > accuracies[0] + 0.2
    assert job.describe()["accuracy"] == accuracies[-1]


def test_finetune_updates_do_not_depend_on_the_micro_batch() -> None:
    whole, pieces = DigitsFinetune(seed=3), DigitsFinetune(seed=3)
    whole.step(32)  # one update group in one step
    for m in (5, 8, 3, 16):  # the same group in four micro-batches (the last is clipped)
        pieces.step(m)
    assert whole.updates == pieces.updates == 1
    for a, b in zip(whole.model.parameters(), pieces.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("model", ["small", "large"])
def test_finetune_resumes_bit_identically_from_its_state(model: str) -> None:
    """Handed over through a checkpoint's bytes after every step (mid-group, mid-evaluation),
    the job gives the same losses, metrics and weights as one never stopped."""
    options = {"model": model, "seed": 1, "eval_every": 1}
    reference = DigitsFinetune(**options)
    expected = [reference.step(MICROS[i % len(MICROS)]) for i in range(30)]
    assert any(r.items == 0 for r in expected)  # evaluation steps were crossed

    jobs = (DigitsFinetune(**options), DigitsFinetune(**options))
    seen = []
    for i in range(30):
        current, other = jobs[i % 2], jobs[(i + 1) % 2]
        seen.append(current.step(MICROS[i % len(MICROS)]))
        torch.manual_seed(i)  # serving touching the global generator must not matter
        other.load_state_dict(roundtrip(current.state_dict()))

    assert [(r.loss, dict(r.metric)) for r in seen] == [(r.loss, dict(r.metric)) for r in expected]
    for a, b in zip(reference.model.parameters(), jobs[0].model.parameters()):
        assert torch.equal(a, b)


def test_finetune_evaluates_in_slices_sized_by_the_micro_batch() -> None:
    job = DigitsFinetune(eval_every=1)
    assert job.step(32).items == 32 and job.eval_pos == 0  # an update: evaluation is due
    slices = []
    while job.eval_pos is not None:
        before = job.eval_pos
        result = job.step(8)
        assert result.items == 0 and result.loss is None
        slices.append((job.eval_pos or 450) - before)
    assert slices == [16] * 28 + [2]
    assert result.metric == {"accuracy": job.evaluate()}


def test_finetune_leaves_the_global_random_generator_alone() -> None:
    job = DigitsFinetune(model="large")  # dropout draws random numbers
    state = torch.get_rng_state()
    run(job, 3)
    assert torch.equal(state, torch.get_rng_state())


def test_finetune_refuses_another_runs_state_and_changes_nothing() -> None:
    small = DigitsFinetune(batch_size=16)
    run(small, 2)
    other = DigitsFinetune(batch_size=32)
    before = [p.clone() for p in other.model.parameters()]
    with pytest.raises(ValueError, match="batch_size=16"):
        other.load_state_dict(small.state_dict())
    with pytest.raises(ValueError, match="not a digits-finetune state"):
        other.load_state_dict({"options": dict(other.options)})
    assert all(torch.equal(a, b) for a, b in zip(before, other.model.parameters()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "huge"}, "model='huge'"),
        ({"init": "random"}, "init='random'"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 1.5}, "epochs=1.5"),
    ],
)
def test_finetune_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re_escape(message)):
        DigitsFinetune(**options)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_finetune_exports_weights_the_model_loader_reads(tmp_path: Path) -> None:
    from ecoserve.models.digits import count_correct, load_digits_model

    job = DigitsFinetune(epochs=1, export=tmp_path / "tuned.pt")
    while not job.step(32).done:
        pass
    model = load_digits_model("small", weights=tmp_path / "tuned.pt")
    split = load_digits_split()
    assert count_correct(model, split.x_test, split.y_test) / 450 == job.accuracy


# --- checkpoints ----------------------------------------------------------------------------


def test_a_crash_between_temp_write_and_replace_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, Checkpoint(job="j", step=5, state={"w": torch.arange(3)}))

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut before the rename")

    monkeypatch.setattr(ckpt_module.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(path, Checkpoint(job="j", step=9, state={"w": torch.arange(4)}))
    monkeypatch.undo()
    kept = load_checkpoint(path, job="j")
    assert kept.step == 5 and torch.equal(kept.state["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def test_a_killed_writers_temporary_file_is_removed_and_the_old_checkpoint_used(
    tmp_path: Path,
) -> None:
    job = counter_job()
    runner = JobRunner(job, tmp_path, checkpoint_every=2)
    for _ in range(3):
        runner.run_step(1)
    half = tmp_path / f".{CHECKPOINT_FILE}.tmp-killed"
    half.write_bytes(encode_checkpoint(Checkpoint("counter", 3, {"n": 3}))[:40])
    again = JobRunner(counter_job(), tmp_path, checkpoint_every=2)
    assert not half.exists()
    assert again.steps == 2 and again.job.state == {"n": 2}


def corrupt(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: b"PK\x03\x04 a zip file", "not an ecoserve background-job checkpoint"),
        (lambda data: data[:-10], "truncated"),
        (corrupt, "checksum does not match"),
        (lambda data: data.replace(b'"version": 1', b'"version": 7'), "format version 7"),
        (lambda data: data.replace(b'"job": "counter"', b'"job": "other"'), "of job 'other'"),
        (lambda data: data.split(b"\n", 1)[0] + b"\n{not json\n", "header is not JSON"),
    ],
)
def test_a_bad_checkpoint_is_refused_set_aside_and_the_job_starts_afresh(
    tmp_path: Path, mangle: Any, message: str
) -> None:
    path = tmp_path / CHECKPOINT_FILE
    good = encode_checkpoint(Checkpoint(job="counter", step=4, state={"n": 4}))
    path.write_bytes(mangle(good))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, job="counter")
    runner = JobRunner(counter_job(), tmp_path)
    assert runner.steps == 0 and runner.job.state == {"n": 0}
    assert message in str(runner.describe()["note"])
    assert (tmp_path / f"{CHECKPOINT_FILE}.rejected").read_bytes() == mangle(good)
    assert not path.exists()


def test_a_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    data = encode_checkpoint(Checkpoint(job="j", step=1, state={"x": Evil()}))
    (tmp_path / "evil.ckpt").write_bytes(data)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.ckpt")


# --- the runner -----------------------------------------------------------------------------


def counter_job(fail_at: int | None = None, nan_at: int | None = None) -> FunctionJob:
    """A job that counts its steps; it can raise or give a NaN loss at a given count."""

    def step(micro_batch: int, state: dict[str, Any]) -> float:
        if state["n"] + 1 == fail_at:
            raise RuntimeError("disk on fire")
        if state["n"] + 1 == nan_at:
            return math.nan
        state["n"] += 1
        return 1.0 / state["n"]

    return FunctionJob(step, "counter", {"n": 0})


def test_runner_checkpoints_every_n_steps_and_at_stop(tmp_path: Path) -> None:
    runner = JobRunner(counter_job(), tmp_path, checkpoint_every=3)
    written = [runner.run_step(2).checkpointed for _ in range(7)]
    assert written == [False, False, True, False, False, True, False]
    assert runner.checkpoint_step == 6
    runner.stop()
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).step == 7
    with pytest.raises(JobNotRunnable, match="stopped"):
        runner.run_step(1)
    status = runner.describe()
    json.dumps(status)
    assert status["steps"] == 7 and status["items"] == 14 and status["checkpoint_step"] == 7
    again = JobRunner(counter_job(), tmp_path)
    assert again.steps == 7 and again.job.state == {"n": 7}
    assert "resumed from the checkpoint at step 7" in str(again.note)


def test_a_runner_killed_without_stop_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    expected = run(DigitsFinetune(), 16)
    runner = JobRunner(DigitsFinetune(), tmp_path, checkpoint_every=5)
    seen = [runner.run_step(MICROS[i % len(MICROS)]).loss for i in range(12)]
    del runner  # no stop(): as after a SIGKILL, only the checkpoint at step 10 remains
    again = JobRunner(DigitsFinetune(), tmp_path, checkpoint_every=5)
    assert again.steps == 10
    rest = [again.run_step(MICROS[i % len(MICROS)]).loss for i in range(10, 16)]
    assert seen[:10] + rest == expected


def test_a_nan_loss_pauses_the_job_until_resumed(tmp_path: Path) -> None:
    runner = JobRunner(counter_job(nan_at=3), tmp_path, checkpoint_every=1)
    runner.run_step(1)
    runner.run_step(1)
    outcome = runner.run_step(1)
    assert not outcome.ran and outcome.paused
    assert outcome.reason == "step 3 gave a non-finite loss (nan)"
    assert runner.describe()["paused"] is True
    assert runner.describe()["reason"] == outcome.reason
    assert not runner.runnable
    with pytest.raises(JobNotRunnable, match="non-finite loss"):
        runner.run_step(1)
    assert runner.steps == 2 and runner.loss == 0.5
    runner.resume()
    assert runner.runnable and runner.describe()["reason"] is None


def test_an_exception_pauses_the_job_and_stop_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    runner = JobRunner(counter_job(fail_at=4), tmp_path, checkpoint_every=2)
    for _ in range(3):
        runner.run_step(1)
    outcome = runner.run_step(1)
    assert outcome.paused and outcome.reason == "step 4 raised RuntimeError: disk on fire"
    assert runner.checkpoint() is False  # a failed job's state never replaces a good one
    runner.stop()
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).step == 2


def test_resume_with_rollback_reloads_the_last_checkpoint(tmp_path: Path) -> None:
    runner = JobRunner(counter_job(fail_at=4), tmp_path, checkpoint_every=2)
    for _ in range(4):
        runner.run_step(1)
    assert runner.paused
    runner.resume(rollback=True)
    assert runner.steps == 2 and runner.job.state == {"n": 2} and not runner.paused


def test_a_digits_nan_pauses_without_touching_the_jobs_state(tmp_path: Path) -> None:
    job = DigitsFinetune()
    runner = JobRunner(job, tmp_path)
    runner.run_step(8)
    with torch.no_grad():
        next(job.model.parameters()).fill_(math.nan)
    cursor = job.cursor
    outcome = runner.run_step(8)
    assert outcome.paused and "non-finite loss" in str(outcome.reason)
    assert job.cursor == cursor and runner.steps == 1


@pytest.mark.parametrize(
    ("returned", "reason"),
    [("oops", "returned str; return a StepResult"), (StepResult(items=1), None)],
)
def test_what_a_step_function_returns(returned: Any, reason: str | None) -> None:
    runner = JobRunner(FunctionJob(lambda m, s: returned, "f"))
    outcome = runner.run_step(4)
    assert outcome.ran is (reason is None)
    if reason is not None:
        assert reason in str(outcome.reason)


def test_a_step_is_never_entered_twice_and_an_interrupt_leaves_the_runner_usable() -> None:
    runner: JobRunner

    def reentrant(micro_batch: int, state: dict[str, Any]) -> None:
        runner.run_step(1)  # e.g. a second driver thread asking while a step runs

    runner = JobRunner(FunctionJob(reentrant, "reentrant"))
    outcome = runner.run_step(1)
    assert "already running a step" in str(outcome.reason)

    def interrupted(micro_batch: int, state: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    runner = JobRunner(FunctionJob(interrupted, "interrupted"))
    with pytest.raises(KeyboardInterrupt):
        runner.run_step(1)
    assert runner.runnable and not runner.paused


def test_runner_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="checkpoint_every=0"):
        JobRunner(counter_job(), None, checkpoint_every=0)
    runner = JobRunner(counter_job())
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="micro_batch="):
            runner.run_step(bad)  # type: ignore[arg-type]


def test_a_checkpoint_that_cannot_be_written_pauses_the_job(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    runner = JobRunner(counter_job(), blocked, checkpoint_every=1)
    outcome = runner.run_step(1)
    assert outcome.paused and "checkpoint after step 1 failed" in str(outcome.reason)


# --- batch inference ------------------------------------------------------------------------


@pytest.fixture()
def npy_folder(tmp_path: Path) -> Path:
    """23 digits test images: 11 single-item files and 3 stacks of 4."""
    x = load_digits_split().x_test.numpy()
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(11):
        np.save(folder / f"a{i:02d}.npy", x[i])
    for k in range(3):
        np.save(folder / f"b{k}.npy", x[11 + 4 * k : 15 + 4 * k])
    return folder


def infer_all(source: str, output: Path, micro: int, workers: int = 0) -> bytes:
    job = BatchInference(output=output, source=source, loader_workers=workers)
    runner = JobRunner(job)
    while runner.runnable:
        runner.run_step(micro)
    runner.stop()
    return output.read_bytes()


def test_batch_inference_over_digits_matches_the_shipped_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    job = BatchInference(output=out)
    runner = JobRunner(job)
    while runner.runnable:
        runner.run_step(100)
    assert runner.done and runner.items == 450 and runner.steps == 5
    assert runner.metric["accuracy"] == pytest.approx(440 / 450)  # weights/README.md
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item"] for r in lines] == list(range(450))
    assert sum(r["prediction"] == r["label"] for r in lines) == 440


def test_batch_inference_resumes_without_redoing_or_skipping_items(
    tmp_path: Path, npy_folder: Path
) -> None:
    reference = infer_all(str(npy_folder), tmp_path / "ref.jsonl", micro=3)
    out = tmp_path / "out.jsonl"
    state = tmp_path / "state"
    job = BatchInference(output=out, source=str(npy_folder))
    runner = JobRunner(job, state, checkpoint_every=2)
    for _ in range(5):
        runner.run_step(3)
    assert job._out is not None
    job._out.write(b'{"item": 15, "torn write' + b"x" * 20000)  # killed mid-line
    job._out.close()  # step 5's lines reached the file, its checkpoint never did
    assert out.read_bytes().count(b"\n") == 15
    del runner, job
    again = JobRunner(BatchInference(output=out, source=str(npy_folder)), state)
    assert again.steps == 4
    while again.runnable:
        again.run_step(3)
    again.stop()
    assert out.read_bytes() == reference
    items = [json.loads(line)["item"] for line in out.read_text().splitlines()]
    assert items == list(range(23))


def test_batch_inference_loader_workers_give_the_same_output(
    tmp_path: Path, npy_folder: Path
) -> None:
    serial = infer_all(str(npy_folder), tmp_path / "a.jsonl", micro=7)
    threaded = infer_all(str(npy_folder), tmp_path / "b.jsonl", micro=7, workers=3)
    assert serial == threaded
    first = json.loads(serial.splitlines()[11])
    assert first["file"] == "b0.npy" and first["row"] == 0


def test_batch_inference_will_not_overwrite_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "precious.jsonl"
    out.write_text("keep me\n")
    runner = JobRunner(BatchInference(output=out))
    outcome = runner.run_step(10)
    assert outcome.paused and "already exists" in str(outcome.reason)
    assert out.read_text() == "keep me\n"
    infer_all_overwrite = BatchInference(output=out, overwrite=True)
    infer_all_overwrite.step(10)
    infer_all_overwrite.close()
    assert out.read_text().count("\n") == 10


def test_batch_inference_refuses_a_checkpoint_whose_output_was_cut(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    runner = JobRunner(BatchInference(output=out), tmp_path / "state", checkpoint_every=1)
    runner.run_step(10)
    runner.stop()
    out.write_text("")
    again = JobRunner(BatchInference(output=out), tmp_path / "state")
    assert again.steps == 0 and "changed outside the job" in str(again.note)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs output=PATH"),
        ({"output": "o.jsonl", "source": "/no/such/folder"}, "neither 'digits-test'"),
        ({"output": "o.jsonl", "loader_workers": -1}, "loader_workers=-1"),
        ({"output": "o.jsonl", "model": "builtin:nope"}, "unknown built-in model"),
    ],
)
def test_batch_inference_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re_escape(message)):
        BatchInference(**options)


# --- specs ----------------------------------------------------------------------------------


FACTORY_MODULE = """
from ecoserve.background import FunctionJob, StepResult, background_job

class Job:
    name = "custom"
    def __init__(self, size: int = 1, scale: float = 1.0) -> None:
        self.size, self.scale = size, scale
    def step(self, micro_batch: int) -> StepResult:
        return StepResult(items=micro_batch * self.size)
    def state_dict(self) -> dict:
        return {}
    def load_state_dict(self, state) -> None:
        pass
    def describe(self) -> dict:
        return {"size": self.size, "scale": self.scale}

@background_job(state={"n": 0})
def counting(micro_batch, state):
    state["n"] += micro_batch

def not_a_job_factory():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture()
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_jobs.py").write_text(textwrap.dedent(FACTORY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_jobs"


def test_load_job_builtins_with_string_options(tmp_path: Path) -> None:
    assert set(BUILTIN_JOBS) == set(_builtin_factories()) == {"digits-finetune", "batch-infer"}
    job = load_job("builtin:digits-finetune", epochs="2", lr="0.005", init="shipped")
    assert isinstance(job, DigitsFinetune)
    assert job.options["epochs"] == 2 and job.options["lr"] == 0.005
    infer = load_job("builtin:batch-infer", output=str(tmp_path / "o.jsonl"), loader_workers="2")
    assert isinstance(infer, BatchInference) and infer.loader_workers == 2


def test_load_job_module_factory_and_decorated_function(factory_module: str) -> None:
    job = load_job(f"{factory_module}:Job", size="3")
    assert job.name == "custom" and job.step(2).items == 6
    first = load_job(f"{factory_module}:counting")
    first.step(5)
    assert first.name == "counting" and first.state_dict() == {"n": 5}
    assert load_job(f"{factory_module}:counting").state_dict() == {"n": 0}  # a fresh copy


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("", {}, "spec is empty"),
        ("digits", {}, "not understood; use builtin:NAME"),
        ("builtin:nope", {}, "choose one of builtin:digits-finetune, builtin:batch-infer"),
        ("builtin:digits-finetune", {"speed": 3}, "takes no option 'speed'; it takes: model"),
        ("builtin:digits-finetune", {"epochs": "many"}, "option epochs='many'"),
        ("builtin:digits-finetune", {"lr": "inf"}, "expected a finite number"),
        ("builtin:digits-finetune", {"model": "huge"}, "cannot start background job"),
        ("no_such_module_xyz:make", {}, "cannot import 'no_such_module_xyz'"),
        ("{mod}:missing", {}, "has no attribute 'missing'"),
        ("{mod}:not_a_job_factory", {}, "gave int, which is not a background job: it lacks"),
        ("{mod}:NOT_CALLABLE", {}, "neither a background job nor a factory"),
        ("{mod}:counting", {"x": 1}, "takes no options"),
    ],
)
def test_bad_specs_are_refused_with_the_fix(
    factory_module: str, spec: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re_escape(message)):
        load_job(spec.format(mod=factory_module), **options)


def test_background_job_decorator_defaults() -> None:
    @background_job
    def tick(micro_batch: int, state: dict[str, Any]) -> StepResult:
        return StepResult(items=micro_batch, metric={"m": 1.0})

    assert tick.name == "tick" and tick.step(3).items == 3
    with pytest.raises(TypeError, match="returned str"):
        FunctionJob(lambda m, s: "x", "bad").step(1)


# --- step costs -----------------------------------------------------------------------------


def test_step_cost_interpolates_the_measured_table() -> None:
    rows = DIGITS_FINETUNE_SMALL.rows
    for m, mean_s, p99_s, per_item in rows:
        assert step_cost(m) == mean_s
        assert DIGITS_FINETUNE_SMALL.worst_seconds(m) == p99_s >= mean_s
        assert DIGITS_FINETUNE_SMALL.seconds_per_item(m) == per_item
    (m0, s0, *_), (m1, s1, *_) = rows[-2], rows[-1]
    assert step_cost((m0 + m1) // 2) == pytest.approx(
        s0 + (s1 - s0) * ((m0 + m1) // 2 - m0) / (m1 - m0)
    )
    assert step_cost(10 * m1) == step_cost(m1)  # a step never takes more than an update group
    assert DIGITS_FINETUNE_LARGE.seconds(32) > DIGITS_FINETUNE_SMALL.seconds(32)
    assert step_cost(32, "large") == DIGITS_FINETUNE_LARGE.seconds(32)


def test_largest_micro_batch_keeps_the_worst_step_under_the_bound() -> None:
    cost = StepCost(
        job="made-up",
        rows=((1, 1.0, 2.0, 1.0), (4, 2.0, 5.0, 0.5), (8, 3.0, 9.0, 0.4)),
        measured="by hand",
    )
    assert cost.worst_seconds(2) == 3.0
    fixed, per_item = cost.linear_fit()
    assert fixed == pytest.approx(57 / 74) and per_item == pytest.approx(21 / 74)
    assert StepCost(job="one", rows=((4, 2.0, 3.0, 0.5),), measured="").linear_fit() == (2.0, 0.0)
    assert cost.largest_micro_batch(5.0) == 4
    assert cost.largest_micro_batch(100.0) == 8
    assert cost.largest_micro_batch(100.0, limit=3) == 3
    assert cost.largest_micro_batch(1.9) == 0
    slow = cost.scaled(2.0)
    assert slow.seconds(4) == 4.0 and slow.largest_micro_batch(5.0) == 1
    for small in (DIGITS_FINETUNE_SMALL, DIGITS_FINETUNE_LARGE):
        bound = small.worst_seconds(8)
        best = small.largest_micro_batch(bound)
        assert best >= 1 and all(small.worst_seconds(m) <= bound for m in range(1, best + 1))
    with pytest.raises(ValueError, match="micro_batch=0"):
        step_cost(0)
    with pytest.raises(ValueError, match="model='medium'"):
        step_cost(4, "medium")
    with pytest.raises(ValueError, match="bound_s=-1"):
        cost.largest_micro_batch(-1)
    with pytest.raises(ValueError, match="rising"):
        StepCost(job="x", rows=((4, 1.0, 1.0, 1.0), (2, 1.0, 1.0, 1.0)), measured="")


# --- a real SIGKILL -------------------------------------------------------------------------

WORKER = """
import sys
from ecoserve.background.runner import JobRunner
from ecoserve.background.specs import load_job

state_dir, last = sys.argv[1], int(sys.argv[2])
runner = JobRunner(load_job("builtin:digits-finetune", epochs=100), state_dir, checkpoint_every=5)
print("start", runner.steps, flush=True)
while runner.steps < last:
    outcome = runner.run_step(8)
    print(outcome.step, repr(outcome.loss), flush=True)
"""


def worker(tmp_path: Path, last: int) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "state"), str(last)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_a_sigkilled_daemon_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    first = worker(tmp_path, last=10**6)
    assert first.stdout is not None
    losses: dict[int, str] = {}
    assert first.stdout.readline().split() == ["start", "0"]
    while len(losses) < 13:
        step, loss = first.stdout.readline().split()
        losses[int(step)] = loss
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = worker(tmp_path, last=16)
    out, _ = second.communicate(timeout=120)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["start", "10"]  # the checkpoint every 5 steps: 10, not 13
    resumed = {int(step): loss for step, loss in lines[1:]}
    assert sorted(resumed) == list(range(11, 17))
    for step in (11, 12, 13):
        assert resumed[step] == losses[step]  # the same step, the same bits


# --- the floors -----------------------------------------------------------------------------


def lint_copy(tmp_path: Path, edits: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over a copy of the tree with a line appended to some modules."""
    import shutil

    for name in ("ecoserve", "tuners", "devices", "twins", "traces", "eco_edge_infer"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for module, line in edits.items():
        with (tmp_path / module).open("a") as fh:
            fh.write(f"\n{line}  # noqa: E402\n")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--config",
            str(tmp_path / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_drivers_may_hold_a_runner_but_the_runner_may_not_load_a_model(tmp_path: Path) -> None:
    drivers = {
        "ecoserve/runtime/driver.py": "import ecoserve.background.runner",
        "ecoserve/sim/driver.py": "import ecoserve.background.step_cost",
    }
    kept = lint_copy(tmp_path / "kept", drivers)
    assert kept.returncode == 0, kept.stdout
    broken = lint_copy(
        tmp_path / "broken",
        {**drivers, "ecoserve/background/runner.py": "import ecoserve.models.digits"},
    )
    assert broken.returncode != 0
    assert "ecoserve.background.runner is not allowed to import ecoserve.models" in broken.stdout
