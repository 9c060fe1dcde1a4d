"""How long one background step takes, from measurements, for the virtual-time simulator.

The simulator advances its clock by a step's duration without running the step, and the
engine picks the micro-batch whose step fits the gap it predicts; both need ``seconds per
step`` as a function of the micro-batch. The figures here are derived, not invented: they are
``benchmarks/bench_background_step.py``'s output on the development machine, a CPU (x86-64,
one torch thread, torch 2.13), not an edge board's GPU. A twin of a slower board scales them
(``StepCost.scaled``) by the ratio of its measured inference times to this machine's.

Each table row is a micro-batch and the mean seconds of a step at that size, over 640 timed
steps after a warm-up; the mean includes the Adam update on the steps that complete an update
group (32 images) and the held-out evaluation every 10 updates, so it is the figure to charge
for throughput and energy. A single step can take longer: one that also evaluates costs up to
``eval_s`` more, which ``worst_seconds`` adds for the engine's time bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepCost:
    """Measured seconds per step of one job by micro-batch; interpolated between the rows,
    extended beyond the largest by the least-squares slope ``per_item_s``."""

    job: str
    points: tuple[tuple[int, float], ...]
    per_item_s: float
    eval_s: float
    measured: str

    def __post_init__(self) -> None:
        sizes = [m for m, _ in self.points]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(
                "StepCost.points must be rows (micro_batch, seconds), sizes rising from >= 1"
            )
        if any(not (s > 0 and math.isfinite(s)) for _, s in self.points):
            raise ValueError("StepCost.points must hold positive finite seconds")

    def _check(self, micro_batch: int) -> None:
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: must be a whole number >= 1")

    def seconds(self, micro_batch: int) -> float:
        """Mean seconds of a step over ``micro_batch`` items."""
        self._check(micro_batch)
        pts = self.points
        if micro_batch <= pts[0][0]:
            return pts[0][1]
        for (m0, s0), (m1, s1) in zip(pts, pts[1:]):
            if micro_batch <= m1:
                return s0 + (s1 - s0) * (micro_batch - m0) / (m1 - m0)
        last_m, last_s = pts[-1]
        return last_s + self.per_item_s * (micro_batch - last_m)

    def worst_seconds(self, micro_batch: int) -> float:
        """A step that also runs the held-out evaluation: the figure a time bound must hold."""
        return self.seconds(micro_batch) + self.eval_s

    def largest_micro_batch(self, bound_s: float, limit: int) -> int:
        """The largest micro-batch up to ``limit`` whose worst step fits in ``bound_s``
        seconds; 0 when not even one item fits (the engine then runs no step)."""
        if not math.isfinite(bound_s) or bound_s < 0:
            raise ValueError(f"bound_s={bound_s!r}: must be a finite number of seconds >= 0")
        self._check(limit)
        best = 0
        for m in range(1, limit + 1):
            if self.worst_seconds(m) > bound_s:
                break
            best = m
        return best

    def scaled(self, factor: float) -> StepCost:
        """The same job on a board ``factor`` times slower (>1) or faster (<1) than the CPU
        measured here."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor={factor!r}: must be a positive finite number")
        return StepCost(
            job=self.job,
            points=tuple((m, s * factor) for m, s in self.points),
            per_item_s=self.per_item_s * factor,
            eval_s=self.eval_s * factor,
            measured=f"{self.measured}, scaled by {factor:g}",
        )


_HOW = "x86-64 CPU, 1 torch thread, torch 2.13; benchmarks/bench_background_step.py"

#: ``builtin:digits-finetune`` with its defaults (small model, update groups of 32).
DIGITS_FINETUNE_SMALL = StepCost(
    job="digits-finetune",
    points=(
        (1, 0.000423),
        (2, 0.0006487),
        (4, 0.000716),
        (8, 0.00078),
        (16, 0.000803),
        (32, 0.0009667),
    ),
    per_item_s=1.288e-05,
    eval_s=0.001148,
    measured=_HOW,
)

#: ``builtin:digits-finetune`` with ``model=large`` (62k parameters, dropout).
DIGITS_FINETUNE_LARGE = StepCost(
    job="digits-finetune",
    points=(
        (1, 0.0011025),
        (2, 0.0018408),
        (4, 0.0022959),
        (8, 0.0031518),
        (16, 0.0052249),
        (32, 0.0089114),
    ),
    per_item_s=2.437e-04,
    eval_s=0.028633,
    measured=f"{_HOW} --model large --steps 320",
)


def step_cost(micro_batch: int, model: str = "small") -> float:
    """Mean seconds of one digits fine-tune step of ``micro_batch`` images (CPU-measured)."""
    if model == "small":
        return DIGITS_FINETUNE_SMALL.seconds(micro_batch)
    if model == "large":
        return DIGITS_FINETUNE_LARGE.seconds(micro_batch)
    raise ValueError(f"model={model!r}: step costs are measured for 'small' and 'large'")
