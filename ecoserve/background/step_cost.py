"""How long one background step takes, from measurements, for the virtual-time simulator.

The simulator advances its clock by a step's duration without running the step, and the
engine picks the micro-batch whose step fits the gap it predicts; both need seconds per step
as a function of the micro-batch. The figures here are derived, not invented: they are the
output of ``benchmarks/bench_background_step.py`` on the development machine, a CPU (x86-64,
one torch thread, torch 2.13, the stepping thread's CPU time), not an edge board's GPU. The
same run times the serving model ``builtin:cnn`` (``SERVING_REFERENCE``); a board twin's
batch time over that one carries the job's cost to the board (``TwinStepCost.derived`` in
``ecoserve.sim.background``; ``StepCost.scaled`` for a known factor).

Each row is a micro-batch with, over four whole evaluation cycles (ten updates of 32 images
and the evaluation steps after them; the least-disturbed of three runs): the mean seconds
per step, which weighs training and evaluation steps as a long run does and is the figure to
charge for energy; the 99th percentile, the figure a step's time bound must hold; and the
seconds per training image, for throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: One measured row: micro-batch, mean seconds per step, 99th-percentile seconds per step,
#: seconds per training image (all steps' time over the images they trained).
Row = tuple[int, float, float, float]


def _interpolate(points: list[tuple[int, float]], micro_batch: int) -> float:
    if micro_batch <= points[0][0]:
        return points[0][1]
    for (m0, s0), (m1, s1) in zip(points, points[1:]):
        if micro_batch <= m1:
            return s0 + (s1 - s0) * (micro_batch - m0) / (m1 - m0)
    return points[-1][1]


@dataclass(frozen=True)
class StepCost:
    """Measured step costs of one job by micro-batch, interpolated linearly between rows.

    Above the last row a step costs what the last row says: the job never takes more items in
    a step than that (the digits fine-tune's update group is the last row's micro-batch).
    """

    job: str
    rows: tuple[Row, ...]
    measured: str

    def __post_init__(self) -> None:
        sizes = [r[0] for r in self.rows]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError("StepCost.rows must have micro-batches rising from >= 1")
        if any(not (v > 0 and math.isfinite(v)) for r in self.rows for v in r[1:]):
            raise ValueError("StepCost.rows must hold positive finite seconds")

    @property
    def max_micro_batch(self) -> int:
        return self.rows[-1][0]

    def _column(self, micro_batch: int, column: int) -> float:
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch={micro_batch!r}: must be a whole number >= 1")
        return _interpolate([(r[0], r[column]) for r in self.rows], micro_batch)

    def seconds(self, micro_batch: int) -> float:
        """Mean seconds per step: what a long run spends per step (training and evaluation
        steps in their proportion), the figure for throughput and energy."""
        return self._column(micro_batch, 1)

    def worst_seconds(self, micro_batch: int) -> float:
        """99th-percentile seconds per step: the figure the engine's time bound must hold."""
        return self._column(micro_batch, 2)

    def seconds_per_item(self, micro_batch: int) -> float:
        """Seconds per training image at this micro-batch (evaluation time included)."""
        return self._column(micro_batch, 3)

    def linear_fit(self) -> tuple[float, float]:
        """``(fixed_s, per_item_s)``: the least-squares line ``seconds = fixed_s + per_item_s *
        micro_batch`` through the mean rows, for cost models that take a line."""
        xs = [float(r[0]) for r in self.rows]
        ys = [r[1] for r in self.rows]
        if len(xs) == 1:
            return ys[0], 0.0
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return my - slope * mx, slope

    def largest_micro_batch(self, bound_s: float, limit: int | None = None) -> int:
        """The largest micro-batch (up to ``limit``, else the last row's) such that it and every
        smaller one keep a step's worst time within ``bound_s`` seconds; 0 when not even one
        item fits (the engine then runs no step)."""
        if not math.isfinite(bound_s) or bound_s < 0:
            raise ValueError(f"bound_s={bound_s!r}: must be a finite number of seconds >= 0")
        top = self.max_micro_batch if limit is None else limit
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"limit={limit!r}: must be a whole number >= 1")
        best = 0
        for m in range(1, top + 1):
            if self.worst_seconds(m) > bound_s:
                break
            best = m
        return best

    def scaled(self, factor: float) -> StepCost:
        """The same job on a board ``factor`` times slower (> 1) or faster (< 1) than the CPU
        measured here."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor={factor!r}: must be a positive finite number")
        return StepCost(
            job=self.job,
            rows=tuple((r[0], r[1] * factor, r[2] * factor, r[3] * factor) for r in self.rows),
            measured=f"{self.measured}, scaled by {factor:g}",
        )


_HOW = (
    "x86-64 CPU (2 vCPUs), 1 torch thread, torch 2.13, thread CPU time; "
    "python benchmarks/bench_background_step.py --repeats 3"
)

#: ``builtin:digits-finetune`` with its defaults (small model, update groups of 32).
DIGITS_FINETUNE_SMALL = StepCost(
    job="digits-finetune",
    rows=(
        (1, 0.0004301, 0.001085, 0.0007395),
        (2, 0.0005399, 0.001518, 0.0004606),
        (4, 0.000621, 0.0017, 0.0002685),
        (8, 0.0005465, 0.001446, 0.0001193),
        (16, 0.0008716, 0.002465, 9.685e-05),
        (32, 0.0009695, 0.001879, 5.58e-05),
    ),
    measured=f"{_HOW}, 2026-12-02, load average 4.9",
)

#: ``builtin:digits-finetune`` with ``model=large`` (62k parameters, dropout); an earlier run
#: than the small model's and the serving reference's.
DIGITS_FINETUNE_LARGE = StepCost(
    job="digits-finetune",
    rows=(
        (1, 0.0007014, 0.00165, 0.001206),
        (2, 0.001418, 0.002986, 0.00121),
        (4, 0.0018, 0.003823, 0.0007784),
        (8, 0.002148, 0.004511, 0.0004687),
        (16, 0.003285, 0.007324, 0.000365),
        (32, 0.004208, 0.007274, 0.0002422),
    ),
    measured=f"{_HOW} --model large",
)


@dataclass(frozen=True)
class ServingReference:
    """The serving model's batch times measured here, beside the job's: the bridge to a board.

    The board twins were fitted with a MobileNet-era CNN; ``builtin:cnn`` stands for it, as it
    does for the models' relative costs of ``ecoserve replay --shared-board``. The twin's batch
    time over this one, at the same batch size, says how much slower the board is than this
    machine; the job's cost measured here, times that, is its cost on the board.
    """

    spec: str
    batch_s: tuple[tuple[int, float], ...]
    measured: str

    def __post_init__(self) -> None:
        sizes = [b for b, _ in self.batch_s]
        if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError("ServingReference.batch_s must have batch sizes rising from >= 1")
        if any(not (t > 0 and math.isfinite(t)) for _, t in self.batch_s):
            raise ValueError("ServingReference.batch_s must hold positive finite seconds")


#: ``builtin:cnn`` (the twins' model's stand-in) measured in the same run as the rows above.
SERVING_REFERENCE = ServingReference(
    spec="builtin:cnn",
    batch_s=((1, 0.0003519), (2, 0.0008202), (4, 0.001325), (8, 0.002006), (16, 0.003295)),
    measured=f"{_HOW}, 2026-12-02, load average 4.9 (median of 15 rounds of 20 calls)",
)


def step_cost(micro_batch: int, model: str = "small") -> float:
    """Mean seconds of one digits fine-tune step of ``micro_batch`` images (CPU-measured)."""
    if model == "small":
        return DIGITS_FINETUNE_SMALL.seconds(micro_batch)
    if model == "large":
        return DIGITS_FINETUNE_LARGE.seconds(micro_batch)
    raise ValueError(f"model={model!r}: step costs are measured for 'small' and 'large'")
