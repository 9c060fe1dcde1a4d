"""``JobRunner``: what a driver holds to run a background job one step at a time.

Both drivers (the daemon's runtime and the virtual-time simulator) decide *when* a step runs
and measure its time and energy; the runner owns everything else about the job: counting
steps, keeping the last metric, checkpointing every N steps and at stop, resuming from the
state folder when it is built, and containing failures. A step that raises, returns a
non-finite loss or cannot be checkpointed pauses the job with the reason, and the runner
refuses further steps until ``resume()``; nothing escapes into the serving path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecoserve.background.checkpoint import (
    Checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    set_aside,
)
from ecoserve.background.job import BackgroundJob, StepResult

#: The checkpoint's file name inside ``--state-dir`` (beside the daemon's other state files).
CHECKPOINT_FILE = "background-job.ckpt"
DEFAULT_CHECKPOINT_EVERY = 50


class JobNotRunnable(RuntimeError):
    """``run_step`` on a job that is paused, done, stopped or already mid-step."""


@dataclass(frozen=True)
class StepOutcome:
    """What ``run_step`` did: the step's figures, or why the job is now paused.

    ``ran``: the step completed and counts (False when it failed and paused the job).
    ``step``: steps completed so far. ``metric``: this step's metric (empty if it measured
    none; the runner keeps the last one). ``checkpointed``: a checkpoint was written after it.
    """

    ran: bool
    step: int
    items: int = 0
    loss: float | None = None
    metric: Mapping[str, float] = field(default_factory=dict)
    checkpointed: bool = False
    done: bool = False
    paused: bool = False
    reason: str | None = None


def _finite_metric(metric: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metric.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


class JobRunner:
    """Runs ``job`` step by step, checkpointing into ``state_dir`` (None: no checkpoints).

    A checkpoint left in ``state_dir`` by an earlier run of the same job (a clean stop, a
    crash, a SIGKILL) is loaded here, so the job continues from its last checkpoint. One that
    is corrupt, of another job or of another format is set aside (renamed, never deleted)
    and the job starts afresh; ``describe()["note"]`` says what happened.
    """

    def __init__(
        self,
        job: BackgroundJob,
        state_dir: str | Path | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every={checkpoint_every!r}: must be a whole number >= 1")
        self.job = job
        self.name = job.name
        self.checkpoint_every = checkpoint_every
        self.path = Path(state_dir) / CHECKPOINT_FILE if state_dir is not None else None
        self.steps = 0
        self.items = 0
        self.checkpoint_step: int | None = None
        self.metric: dict[str, float] = {}
        self.loss: float | None = None
        self.done = False
        self.paused = False
        self.reason: str | None = None
        self.stopped = False
        self.note: str | None = None
        self._lock = threading.Lock()
        self._stepping = False
        if self.path is not None:
            remove_stale_temporaries(self.path)
            if self.path.exists():
                self._resume_from_file(self.path)

    def _resume_from_file(self, path: Path) -> None:
        try:
            ckpt = load_checkpoint(path, job=self.name)
            self.job.load_state_dict(ckpt.state)
        except Exception as exc:  # a corrupt file or a state the job refuses: start afresh
            try:
                aside = set_aside(path)
                where = f"set aside as {aside.name}"
            except OSError as err:
                where = f"and could not be set aside ({err})"
            self.note = f"checkpoint refused: {exc}; {where}; the job starts afresh"
            return
        self._adopt(ckpt)
        self.note = f"resumed from the checkpoint at step {ckpt.step}"

    def _adopt(self, ckpt: Checkpoint) -> None:
        self.steps = self.checkpoint_step = ckpt.step
        self.items = ckpt.items
        self.metric = dict(ckpt.metric)
        self.done = ckpt.done

    @property
    def runnable(self) -> bool:
        """Whether ``run_step`` would run a step now (the engine's slot asks this first)."""
        return not (self.paused or self.done or self.stopped or self._stepping)

    def _refusal(self) -> str | None:
        if self.stopped:
            return f"background job {self.name} is stopped"
        if self.paused:
            return f"background job {self.name} is paused ({self.reason}); call resume()"
        if self.done:
            return f"background job {self.name} is done"
        if self._stepping:
            return f"background job {self.name} is already running a step"
        return None

    def _pause(self, reason: str) -> StepOutcome:
        with self._lock:
            self.paused, self.reason = True, reason
            return StepOutcome(ran=False, step=self.steps, paused=True, reason=reason)

    def run_step(self, micro_batch: int) -> StepOutcome:
        """Run one step of at most ``micro_batch`` items; checkpoint when one is due (its write
        is part of that call's time).

        Raises JobNotRunnable if the job is paused, done, stopped or mid-step, and ValueError
        for a micro-batch below 1; a failure of the job itself never raises: it pauses.
        """
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: must be a whole number >= 1")
        with self._lock:
            refusal = self._refusal()
            if refusal is not None:
                raise JobNotRunnable(refusal)
            self._stepping = True
        try:
            return self._step(micro_batch)
        finally:
            with self._lock:
                self._stepping = False

    def _step(self, micro_batch: int) -> StepOutcome:
        number = self.steps + 1
        try:
            result = self.job.step(micro_batch)
        except Exception as exc:
            return self._pause(f"step {number} raised {type(exc).__name__}: {exc}")
        if not isinstance(result, StepResult):
            return self._pause(f"step {number} returned {type(result).__name__}, not a StepResult")
        if result.loss is not None and not math.isfinite(result.loss):
            return self._pause(f"step {number} gave a non-finite loss ({result.loss})")
        metric = _finite_metric(result.metric)
        with self._lock:
            self.steps = number
            self.items += result.items
            self.loss = result.loss
            self.done = result.done
            if metric:
                self.metric = metric
        checkpointed = False
        if self.path is not None and (number % self.checkpoint_every == 0 or result.done):
            failure = self._write()
            if failure is not None:
                return self._pause(f"checkpoint after step {number} failed: {failure}")
            checkpointed = True
        return StepOutcome(
            ran=True,
            step=number,
            items=result.items,
            loss=result.loss,
            metric=metric,
            checkpointed=checkpointed,
            done=result.done,
        )

    def _write(self) -> str | None:
        """Write a checkpoint of the job as it is now; the failure's text, or None."""
        assert self.path is not None
        try:
            state = self.job.state_dict()
            ckpt = Checkpoint(
                job=self.name,
                step=self.steps,
                state=state,
                metric=self.metric,
                items=self.items,
                done=self.done,
            )
            save_checkpoint(self.path, ckpt)
        except Exception as exc:  # a state that cannot be saved, a full disk, no permission
            return f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.checkpoint_step = self.steps
        return None

    def checkpoint(self) -> bool:
        """Checkpoint now, unless there is no state folder or the job is paused (its state
        may be what failed, and must not replace the last good checkpoint). A failure pauses
        the job. Returns whether a checkpoint was written."""
        if self.path is None or self.paused or self._stepping:
            return False
        failure = self._write()
        if failure is not None:
            self._pause(f"checkpoint at step {self.steps} failed: {failure}")
            return False
        return True

    def stop(self) -> None:
        """Checkpoint what is new (not a paused job's state) and release the job's files and
        threads. The runner refuses steps afterwards; a new runner on the same state folder
        resumes."""
        if self.stopped:
            return
        if self.path is not None and not self.paused and self.steps != self.checkpoint_step:
            self.checkpoint()
        close = getattr(self.job, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # closing must not stop the daemon's own shutdown
                self.note = f"closing the job failed: {type(exc).__name__}: {exc}"
        self.stopped = True

    def resume(self, rollback: bool = False) -> None:
        """Let a paused job run again: where it stopped, or, with ``rollback``, from the last
        checkpoint (for a step that may have left the job half-updated).

        Raises JobNotRunnable if ``rollback`` finds no usable checkpoint; the job stays paused.
        """
        if not self.paused:
            return
        if rollback:
            if self.path is None or not self.path.exists():
                raise JobNotRunnable(
                    f"background job {self.name} has no checkpoint to roll back to"
                )
            try:
                ckpt = load_checkpoint(self.path, job=self.name)
                self.job.load_state_dict(ckpt.state)
            except Exception as exc:  # a corrupt file or a state the job refuses
                raise JobNotRunnable(f"cannot roll back {self.name}: {exc}") from exc
            with self._lock:
                self._adopt(ckpt)
        with self._lock:
            self.paused, self.reason = False, None

    def describe(self) -> dict[str, Any]:
        """JSON-ready status: the job, progress, last checkpoint and metric, pause reason."""
        try:
            detail = self.job.describe()
        except Exception as exc:  # a status page must not fail with the job
            detail = {"error": f"{type(exc).__name__}: {exc}"}
        with self._lock:
            return {
                "job": self.name,
                "steps": self.steps,
                "items": self.items,
                "checkpoint_step": self.checkpoint_step,
                "checkpoint_every": self.checkpoint_every,
                "state_dir": None if self.path is None else str(self.path.parent),
                "metric": dict(self.metric),
                "loss": self.loss,
                "paused": self.paused,
                "reason": self.reason,
                "done": self.done,
                "stopped": self.stopped,
                "note": self.note,
                "detail": detail,
            }
