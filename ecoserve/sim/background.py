"""A background job's step time on a device twin, from its cost measured at maximum clocks.

What is measured and what is derived: the job's own figures (``fixed_s`` per step and
``per_item_s`` per item of forward and backward pass, ``load_per_item_s`` of input loading
per item on one CPU thread) are measured with torch on the development machine, beside the
serving model ``builtin:cnn`` (``ecoserve.background.step_cost``); ``derived`` carries them to
the board by ``board_scale``, the twin's batch time at maximum clocks over the CPU's for that
model (the geometric mean over the batch sizes measured), as ``ecoserve replay
--shared-board`` carries a model's relative cost (``builtin:cnn`` stands for the twin's own
model; that the CPU's ratio holds on the board is the assumption). How the step slows at
lower clocks is derived from the twin: the compute part by the ratio of the twin's batch
time at those clocks to its time at maximum (the serving model's CPU/GPU mix stands in for the job's),
the loading part by the CPU clock alone. Loader workers overlap loading with compute (none:
the step loads its own items first). The watts are the twin's busy power at the clocks in
force; loader workers are taken to add none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ecoserve.background.step_cost import SERVING_REFERENCE, ServingReference, StepCost
from ecoserve.core.harvest import LOADER_WORKERS
from ecoserve.core.knobs import CPU
from twins.base import DeviceTwin

#: The twin batch whose slowdown stands in for a step's (a mid-sized serving batch).
REFERENCE_BATCH = 8


@dataclass(frozen=True)
class TwinStepCost:
    """Seconds of one step of ``micro_batch`` items at the slot's values (clocks included)."""

    twin: DeviceTwin
    fixed_s: float
    per_item_s: float
    load_per_item_s: float = 0.0
    #: The most items the job takes in one step (None: no limit of its own).
    max_micro_batch: int | None = None
    _top: dict[str, float] = field(init=False, repr=False, compare=False)
    _top_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        figures = {
            "fixed_s": self.fixed_s,
            "per_item_s": self.per_item_s,
            "load_per_item_s": self.load_per_item_s,
        }
        bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v >= 0)}
        if self.max_micro_batch is not None and self.max_micro_batch < 1:
            raise ValueError(f"max_micro_batch={self.max_micro_batch!r}: must be >= 1 or None")
        if bad or self.fixed_s + self.per_item_s <= 0:
            raise ValueError(
                f"a step cost needs finite seconds >= 0 and a step longer than 0, got {figures}"
            )
        top = self.twin.max_freqs()
        object.__setattr__(self, "_top", top)
        object.__setattr__(self, "_top_s", self.twin.batch_time(REFERENCE_BATCH, top))

    @classmethod
    def derived(
        cls,
        twin: DeviceTwin,
        measured: StepCost,
        reference: ServingReference = SERVING_REFERENCE,
    ) -> TwinStepCost:
        """The job's cost on ``twin``: its linear fit measured here times ``board_scale``.

        The job's inputs live in memory (no loading beyond what the measured step does), so
        no separate loading cost is charged and loader workers change nothing. The job takes
        no more items in a step than its measured rows go to (its update group).
        """
        fixed_s, per_item_s = measured.linear_fit()
        scale = board_scale(twin, reference)
        return cls(
            twin,
            max(0.0, fixed_s) * scale,
            max(0.0, per_item_s) * scale,
            max_micro_batch=measured.max_micro_batch,
        )

    def slowdown(self, freqs: Mapping[str, float]) -> float:
        """How much longer the compute takes at ``freqs`` than at maximum (>= 1 on a twin)."""
        clocks = {**self._top, **{k: v for k, v in freqs.items() if k in self._top}}
        return self.twin.batch_time(REFERENCE_BATCH, clocks) / self._top_s

    def __call__(self, micro_batch: int, values: Mapping[str, float]) -> float:
        compute = (self.fixed_s + self.per_item_s * micro_batch) * self.slowdown(values)
        if not self.load_per_item_s:
            return compute
        cpu = values.get(CPU, self._top.get(CPU, 1.0))
        load = self.load_per_item_s * micro_batch * self._top.get(CPU, cpu) / cpu
        workers = int(values.get(LOADER_WORKERS, 0.0))
        if workers <= 0:
            return compute + load
        return max(compute, load / workers)


def board_scale(twin: DeviceTwin, reference: ServingReference = SERVING_REFERENCE) -> float:
    """How many times slower ``twin`` (at maximum clocks) runs the serving model than the
    machine that measured ``reference``: the geometric mean over the measured batch sizes of
    the twin's batch time over the measured one."""
    top = twin.max_freqs()
    logs = [math.log(twin.batch_time(b, top) / t) for b, t in reference.batch_s]
    return math.exp(sum(logs) / len(logs))
