"""Background jobs: training and batch work run in a serving board's idle time.

A job is a step function with state (``job.BackgroundJob``); two ship (``builtin:digits-
finetune``, ``builtin:batch-infer``) and ``specs.load_job`` resolves a ``--background`` spec.
The drivers hold a ``runner.JobRunner``, which counts steps, checkpoints atomically
(``checkpoint``), resumes after any exit and pauses a failing job; ``step_cost`` gives the
simulator a step's measured duration. When a step runs is the engine's decision, not this
package's.

Floors (``pyproject.toml``'s import contracts): nothing here imports a driver or a face; the
contract, runner, checkpoints and step costs import no model either, so a driver may import
them, and this package re-exports only those. The shipped jobs and ``specs`` use
``ecoserve.models`` and are reached from the faces (``from ecoserve.background.specs import
load_job``).
"""

from ecoserve.background.job import BackgroundJob, FunctionJob, StepResult, background_job
from ecoserve.background.runner import JobNotRunnable, JobRunner, StepOutcome
from ecoserve.background.step_cost import StepCost, step_cost

__all__ = [
    "BackgroundJob",
    "FunctionJob",
    "JobNotRunnable",
    "JobRunner",
    "StepCost",
    "StepOutcome",
    "StepResult",
    "background_job",
    "step_cost",
]
