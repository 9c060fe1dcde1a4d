"""The live harvest benchmark's job runner: a background job stepped in its own process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_harvest_live import (  # noqa: E402
    Arm,
    JobCounts,
    job_main,
    markdown,
    medians,
    parse_options,
    replay,
    run_job,
    with_ratios,
)

from ecoserve.background.job import StepResult  # noqa: E402
from ecoserve.background.specs import load_job  # noqa: E402


class Scripted:
    """A job whose steps return the given results (or raise the given exception)."""

    name = "scripted"

    def __init__(self, results: list[StepResult | Exception]) -> None:
        self.results = results
        self.calls: list[int] = []

    def step(self, micro_batch: int) -> StepResult:
        self.calls.append(micro_batch)
        result = self.results[len(self.calls) - 1]
        if isinstance(result, Exception):
            raise result
        return result


def test_the_digits_finetune_runs_a_few_steps() -> None:
    job = load_job("builtin:digits-finetune", **parse_options(["batch_size=8"]))
    counts = run_job(job, micro_batch=64, should_stop=lambda: False, max_steps=4)
    assert counts.job == "digits-finetune"
    assert counts.steps == 4 and counts.items == 32  # a step is at most one update group
    assert counts.loss is not None and np.isfinite(counts.loss)
    assert not counts.done and counts.error is None and counts.wall_s > 0


def test_counts_items_accuracy_and_stops_when_done_or_asked() -> None:
    job = Scripted(
        [
            StepResult(items=5, loss=1.0),
            StepResult(items=0, metric={"accuracy": 0.5}),
            StepResult(items=3, loss=0.5, done=True),
            StepResult(items=99),
        ]
    )
    counts = run_job(job, micro_batch=7, should_stop=lambda: False)
    assert (counts.steps, counts.items, counts.accuracy, counts.loss) == (3, 8, 0.5, 0.5)
    assert counts.done and job.calls == [7, 7, 7]
    asked = run_job(Scripted([StepResult(items=1)] * 3), 1, should_stop=lambda: True)
    assert asked.steps == 0


def test_a_failing_step_ends_the_run_with_its_reason() -> None:
    raised = run_job(Scripted([StepResult(items=2), RuntimeError("disk full")]), 4, lambda: False)
    assert raised.steps == 1 and raised.items == 2
    assert raised.error == "RuntimeError: disk full"
    nan = run_job(Scripted([StepResult(items=2, loss=float("nan"))]), 4, lambda: False)
    assert nan.steps == 0 and nan.error is not None and "non-finite" in nan.error


def test_bad_options_and_specs_are_named() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["epochs"])
    assert parse_options(["epochs = 3", "lr=0.1"]) == {"epochs": "3", "lr": "0.1"}


def test_the_runner_command_prints_ready_then_its_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--nice", "0", "--max-steps", "3", "--option", "batch_size=4", "--wait-go"]
    assert job_main(argv, stdin=io.StringIO("go\n")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["ready"] == "digits-finetune"
    counts = json.loads(lines[-1])
    assert counts["steps"] == 3 and counts["items"] == 12


def test_the_runner_command_refuses_an_unknown_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert job_main(["--nice", "0", "--spec", "builtin:nope"]) == 2
    assert "unknown built-in background job 'nope'" in capsys.readouterr().err


def test_replay_sends_every_arrival_and_times_from_the_schedule() -> None:
    """The open-loop sender against a tiny local HTTP server answering every request."""
    import asyncio

    async def main() -> Any:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        srv = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        raw = b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        offsets = np.array([0.0, 0.01, 0.02, 0.1, 0.2, 0.21])
        try:
            return await replay("t", port, raw, offsets, warmup_s=0.05, conns=2)
        finally:
            srv.close()

    result = asyncio.run(main())
    assert result.sent == 6 and result.unfinished == 0
    assert result.statuses == {200: 3}  # the three due after the 50 ms warm-up
    assert all(0 <= t < 1.0 for t in result.latencies)


def arm(name: str, p99: float, n: int, items: int = 0) -> Arm:
    return Arm(name, 1.0, p99, 10, 10, 0, 0, 0, items, None, 3.0, 9.0, 1.0, 1.5, round=n)


def test_ratios_are_per_round_and_medians_per_arm() -> None:
    rows = [arm("alone", 10.0, 0), arm("slot", 12.0, 0, 100), arm("alone", 40.0, 1)]
    rows.append(arm("slot", 20.0, 1, 300))
    with_ratios(rows)
    assert [r.p99_x for r in rows] == [1.0, 1.2, 1.0, 0.5]
    summary = medians(rows)
    assert [r.arm for r in summary] == ["alone", "slot"] and summary[1].round == -1
    assert summary[1].p99_x == pytest.approx(0.85) and summary[1].bg_items == 200
    table = markdown(rows + summary)
    assert table.count("\n") == 7 and "| median | slot | 1.00 | 16.00 | 0.85 | 10 |" in table
    assert JobCounts("x").steps == 0


@pytest.mark.slow
def test_the_runner_as_a_process_runs_at_nice_19_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "bench_harvest_live.py"), "job", "--wait-go"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = json.loads(proc.stdout.readline())
    assert ready["niceness"] == min(19, os.nice(0) + 19)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["job"] == "digits-finetune"
