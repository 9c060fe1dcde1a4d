"""A face's background job: its runner, the engine's slot policy for it, and its figures.

``ecoserve serve --background SPEC`` (or the decorator's ``background=``) gives a job (``builtin:digits-finetune``,
``builtin:batch-infer`` or ``package.module:factory``). The engine decides when a step runs
(``ecoserve.core.harvest``: no serving batch due, a quiet gap predicted, the step sized to
``--background-max-delay-s``); the runtime runs it in its worker thread and meters it like a
batch; this object holds the ``JobRunner`` that steps, checkpoints and resumes the job.

Checkpoints live in ``<restore dir>/background/<job>/`` (``--restore-dir``, which
``--state-dir`` still names): a start with the same folder resumes from the last
checkpoint, after a SIGKILL too, and a clean stop writes one. A job that fails (an
exception, a NaN loss) is paused with the reason; serving never sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devices.restore_record import default_restore_dir
from ecoserve.background.job import BackgroundJob
from ecoserve.background.runner import JobRunner, StepOutcome
from ecoserve.background.specs import load_job
from ecoserve.core.harvest import HarvestPolicy, HarvestSettings, slot_space
from ecoserve.core.knobs import Knob
from tuners.registry import make_tuner

log = logging.getLogger("ecoserve.server")


class BackgroundWork:
    """One job for the daemon's idle time: runner, slot policy, figures for status/metrics."""

    def __init__(
        self,
        spec: str | BackgroundJob,
        restore_dir: str | None,
        *,
        tuner: str = "ecogd",
        seed: int = 0,
        checkpoint_every: int = 50,
        max_delay_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        job = load_job(spec) if isinstance(spec, str) else spec
        root = Path(restore_dir) if restore_dir else default_restore_dir()
        self.folder = root / "background" / job.name
        self.spec = spec if isinstance(spec, str) else job.name
        self.runner = JobRunner(job, self.folder, checkpoint_every=checkpoint_every)
        self.settings = HarvestSettings(max_delay_s=max_delay_s)
        self.tuner = tuner
        self.seed = seed
        self.policy: HarvestPolicy | None = None
        self._clock = clock
        self._started = clock()
        if self.runner.checkpoint_step is not None:
            log.info(
                "background job %s resumed from its checkpoint at step %d (%s)",
                job.name,
                self.runner.checkpoint_step,
                self.folder,
            )
        elif self.runner.note:
            log.warning("background job %s: %s", job.name, self.runner.note)

    def make_policy(self, clocks: Sequence[Knob]) -> HarvestPolicy:
        """The slot's policy over the device's clock knobs (called once the device is open)."""
        space = slot_space(list(clocks))
        self.policy = HarvestPolicy(
            space, make_tuner(self.tuner, space, seed=self.seed), self.settings
        )
        return self.policy

    def step(self, micro_batch: int, values: Mapping[str, float]) -> StepOutcome:
        """One step of the job (the worker thread's); a failing job pauses, never raises."""
        return self.runner.run_step(micro_batch)

    def close(self) -> None:
        """Write the last checkpoint (a clean stop)."""
        self.runner.stop()

    def describe(self) -> dict[str, Any]:
        """``/v1/status``'s ``background``: the job's progress, metric and what the slot did."""
        job = self.runner.describe()
        figures = self.policy.describe() if self.policy is not None else {}
        elapsed = max(1e-9, self._clock() - self._started)
        busy = float(figures.get("busy_s", 0.0))
        return {
            "spec": self.spec,
            "job": job["job"],
            "steps": job["steps"],
            "items": job["items"],
            "checkpoint_step": job["checkpoint_step"],
            "metric": job["metric"],
            "loss": job["loss"],
            "paused": job["paused"],
            "reason": job["reason"],
            "done": job["done"],
            "joules": float(figures.get("energy_j", 0.0)),
            "busy_share": busy / elapsed,
            "slot": figures,
            "state_dir": str(self.folder),
            "note": job["note"],
        }
