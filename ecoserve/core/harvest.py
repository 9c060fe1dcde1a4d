"""The background slot's policy: whether a step of background work may run now, and how.

A serving board idles between batches; a background job (fine-tuning, batch inference) can
use that time if it never gets in serving's way. Three rules keep it out of the way:

- a step is offered only when no serving batch is due: every queue is empty, or (with
  ``while_filling``) a partial batch waits on its timer and the step ends before that timer;
- the gap is predicted: the probability that no request arrives within ``margin`` times the
  step's expected time, read from the recent inter-arrival times (the empirical survival
  conditioned on the silence so far, so a burst's tail and a lull are told apart), must reach
  ``quiet_probability``;
- a step is sized (its micro-batch) so that its expected time stays under ``max_delay_s``:
  a request that arrives during a step waits at most that long, since serving takes the
  board back at every step boundary; and, below that, to the gap predicted: when the
  largest step is too long for it, the largest smaller one it holds runs instead.

The slot has its own knobs, tuned by an ordinary ask/tell tuner for joules per item: the
micro-batch, the loader workers, and the clocks while only background work runs. A window is
``steps_per_window`` steps at one configuration; its cost is its joules per item over those of
the first window (run at every knob's maximum), as the serving cost is normalised by its
all-maximum baseline. A configuration whose micro-batch would break the delay bound runs at
the largest micro-batch that keeps it; one where even the smallest would is told a penalty.

Sans-IO: the engine tells it arrivals and finished steps and asks it, with the time, for a
step; the drivers run the step and measure it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ecoserve.core.knobs import Config, Knob, SearchSpace
from ecoserve.core.tuner import Tuner

#: The slot's own knobs; every other knob of its space is a device clock.
MICRO_BATCH = "micro_batch"
LOADER_WORKERS = "loader_workers"
SLOT_KNOBS = frozenset({MICRO_BATCH, LOADER_WORKERS})

#: Cost told for a configuration in which no micro-batch keeps the delay bound.
INFEASIBLE_COST = 10.0


@dataclass(frozen=True)
class HarvestSettings:
    """How the slot decides; the defaults are the policy, the switches make the baselines.

    ``predict_gap=False, while_filling=False``: steps whenever the queues are empty (the
    baseline with no gap prediction). ``bounded=False``: micro-batches are not cut to
    ``max_delay_s``. ``own_clocks=False``: steps run at the serving clocks. ``tune=False``:
    the slot runs its space's maximum (the job on its own, as a separate process would).
    """

    max_delay_s: float = 0.02
    margin: float = 1.5
    quiet_probability: float = 0.8
    predict_gap: bool = True
    while_filling: bool = True
    bounded: bool = True
    own_clocks: bool = True
    tune: bool = True
    history: int = 256
    min_samples: int = 16
    step_ewma: float = 0.3
    steps_per_window: int = 24
    max_failures: int = 3

    def __post_init__(self) -> None:
        checks = {
            "max_delay_s": self.max_delay_s > 0,
            "margin": self.margin >= 1.0,
            "quiet_probability": 0.0 <= self.quiet_probability <= 1.0,
            "history": self.history >= 2,
            "min_samples": self.min_samples >= 1,
            "step_ewma": 0.0 < self.step_ewma <= 1.0,
            "steps_per_window": self.steps_per_window >= 1,
            "max_failures": self.max_failures >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            wants = (
                "max_delay_s > 0, margin >= 1, 0 <= quiet_probability <= 1, history >= 2, "
                "min_samples >= 1, 0 < step_ewma <= 1, steps_per_window >= 1, max_failures >= 1"
            )
            got = {name: getattr(self, name) for name in bad}
            raise ValueError(f"harvest settings out of range: {got}; need {wants}")

    @classmethod
    def queue_empty(cls, **changes: Any) -> HarvestSettings:
        """The baseline: a step whenever the queues are empty, no gap prediction."""
        return cls(**{"predict_gap": False, "while_filling": False, **changes})


def slot_space(
    clocks: tuple[Knob, ...] | list[Knob],
    micro_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    loader_workers: tuple[int, ...] = (0, 1, 2, 4),
) -> SearchSpace:
    """The slot's knobs: micro-batch, loader workers, and these device clocks."""
    names = {k.name for k in clocks}
    if names & SLOT_KNOBS:
        raise ValueError(f"clock knobs may not be named {sorted(names & SLOT_KNOBS)}")
    return SearchSpace(
        (
            Knob(MICRO_BATCH, tuple(float(m) for m in micro_batches)),
            Knob(LOADER_WORKERS, tuple(float(w) for w in loader_workers)),
            *clocks,
        )
    )


@dataclass(frozen=True)
class Step:
    """One step to run: its micro-batch, the slot's knob values, its expected seconds."""

    micro_batch: int
    values: dict[str, float]
    expected_s: float


@dataclass(frozen=True)
class StepOutcome:
    """What a driver measured of one step (``meter_j``: the meter's reading at its end)."""

    items: int
    energy_j: float
    busy_s: float
    end: float
    meter_j: float
    failed: bool = False
    #: The job has no work left: the slot offers no more steps.
    done: bool = False


@dataclass
class HarvestFigures:
    """What the slot did, for reports: steps, items, joules, seconds, and why it held back."""

    steps: int = 0
    items: int = 0
    energy_j: float = 0.0
    busy_s: float = 0.0
    failures: int = 0
    clock_switches: int = 0
    windows: int = 0
    declined: dict[str, int] = field(default_factory=dict)
    #: Steps that ran longer than ``max_delay_s`` (a first step at new knobs, or noise).
    over_bound: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["energy_per_item_j"] = self.energy_j / self.items if self.items else math.nan
        return out


class ArrivalGaps:
    """Recent inter-arrival times, and the chance of a quiet stretch given the silence so far."""

    def __init__(self, history: int = 256, min_samples: int = 16) -> None:
        self._gaps: deque[float] = deque()
        self._sorted: list[float] = []
        self._sum = 0.0
        self._history = history
        self._min_samples = min_samples
        self.last: float | None = None

    def arrive(self, now: float) -> None:
        last, self.last = self.last, now
        if last is None:
            return
        gap = round(max(0.0, now - last), 9)  # to the nanosecond, as step times are
        gaps = self._gaps
        if len(gaps) >= self._history:
            old = gaps.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._sum -= old
        gaps.append(gap)
        bisect.insort(self._sorted, gap)
        self._sum += gap

    def __len__(self) -> int:
        return len(self._gaps)

    def rate(self, now: float) -> float:
        """Arrivals per second over the history, the current silence counted in."""
        if not self._gaps or self.last is None:
            return 0.0
        return len(self._gaps) / max(self._sum + max(0.0, now - self.last), 1e-9)

    def quiet(self, now: float, span: float) -> float:
        """Probability that no request arrives in ``(now, now + span]``.

        The share of past gaps longer than the silence so far plus ``span`` among those longer
        than the silence so far; past the history's reach (too few such gaps), memoryless at
        the rate the history and the silence give. No history yet: 0 (nothing is known).
        """
        if self.last is None or len(self._gaps) < self._min_samples:
            return 0.0
        silence = round(max(0.0, now - self.last), 9)
        s = self._sorted
        longer = len(s) - bisect.bisect_right(s, silence)
        if longer >= self._min_samples:
            return (len(s) - bisect.bisect_right(s, round(silence + span, 9))) / longer
        return math.exp(-self.rate(now) * span)


class StepTimes:
    """Each micro-batch's step time at each setting of the other knobs (EWMA of measurements)."""

    def __init__(self, weight: float = 0.3) -> None:
        self._weight = weight
        self._times: dict[tuple[float, ...], dict[int, float]] = {}

    def observe(self, setting: tuple[float, ...], micro_batch: int, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        # kept to the nanosecond: below that a measurement is float noise, and two drivers
        # that time the same step (one subtracting clock readings) must plan the same
        seconds = round(seconds, 9)
        times = self._times.setdefault(setting, {})
        old = times.get(micro_batch)
        times[micro_batch] = seconds if old is None else old + self._weight * (seconds - old)

    def estimate(self, setting: tuple[float, ...], micro_batch: int) -> float | None:
        """The step's expected seconds; None when nothing at ``setting`` is known.

        Measured: as measured. Between two measured micro-batches, on the line through them;
        above the largest, on the line through the two largest (a step is a fixed part plus
        a part per item, so one measured step does not tell them apart, two do; a noisy pair
        falling with size is read as flat). With one measured size only: from a smaller one
        scaled by the ratio of sizes (an overestimate, a step's fixed part does not grow);
        from a larger one, its time as it is.
        """
        times = self._times.get(setting)
        if not times:
            return None
        if micro_batch in times:
            return times[micro_batch]
        below = sorted(m for m in times if m < micro_batch)
        above = sorted(m for m in times if m > micro_batch)
        if below and above:
            lo, hi = below[-1], above[0]
            t_lo, t_hi = times[lo], times[hi]
            return t_lo + max(0.0, t_hi - t_lo) * (micro_batch - lo) / (hi - lo)
        if above:
            return times[above[0]]
        if len(below) == 1:
            return times[below[0]] * micro_batch / below[0]
        lo, hi = below[-2], below[-1]
        slope = max((times[hi] - times[lo]) / (hi - lo), 0.0)
        return times[hi] + slope * (micro_batch - hi)


class HarvestPolicy:
    """The background slot: when a step may run, its size and knobs, and their tuning."""

    def __init__(
        self, space: SearchSpace, tuner: Tuner, settings: HarvestSettings | None = None
    ) -> None:
        if not space.has(MICRO_BATCH):
            raise ValueError(
                f"the background slot's space needs a {MICRO_BATCH!r} knob "
                f"(build it with slot_space); got {space.describe()}"
            )
        if tuner.space != space:
            raise ValueError("the background tuner must work on the slot's space")
        sizes = space.knobs[space.axis(MICRO_BATCH)].values
        if any(v < 1 or v != int(v) for v in sizes):
            raise ValueError(f"micro-batch sizes must be whole numbers >= 1, got {sizes}")
        self.space = space
        self.tuner = tuner
        self.settings = settings or HarvestSettings()
        self.gaps = ArrivalGaps(self.settings.history, self.settings.min_samples)
        self.times = StepTimes(self.settings.step_ewma)
        self.figures = HarvestFigures()
        #: The clock knobs of the slot (everything but the micro-batch and loader workers).
        self.clock_knobs = tuple(n for n in space.names if n not in SLOT_KNOBS)
        self._mb_axis = space.axis(MICRO_BATCH)
        # the first window runs everything at maximum and sets the cost's scale
        self._asked: Config = space.maximum()
        self._scale_j: float | None = None
        self._window_j = 0.0
        self._window_items = 0
        self._window_steps = 0
        self._warm = False  # the first step at a new setting measures, and is left out
        self._running: Step | None = None
        self._failures = 0
        #: Why the slot offers no more steps (the job finished, or kept failing), or None.
        self.stopped: str | None = None

    # -- what happened --------------------------------------------------------------------
    def on_arrival(self, now: float) -> None:
        self.gaps.arrive(now)

    def step_done(self, outcome: StepOutcome) -> None:
        """A step finished: its time teaches the estimates, its joules the tuner."""
        step, self._running = self._running, None
        if step is None:
            raise RuntimeError("step_done() without a step running")
        f = self.figures
        f.energy_j += max(0.0, outcome.energy_j)
        f.busy_s += max(0.0, outcome.busy_s)
        if outcome.failed:
            f.failures += 1
            self._failures += 1
            if self._failures >= self.settings.max_failures:
                self.stopped = f"{self._failures} steps in a row failed"
            return
        self._failures = 0
        f.steps += 1
        f.items += outcome.items
        if outcome.busy_s > self.settings.max_delay_s:
            f.over_bound += 1
        if outcome.done:
            self.stopped = "the job has no work left"
        self.times.observe(self._setting(step.values), step.micro_batch, outcome.busy_s)
        if not self._warm:
            self._warm = True
            return
        self._window_j += outcome.energy_j
        self._window_items += outcome.items
        self._window_steps += 1
        if self._window_steps >= self.settings.steps_per_window:
            self._close_window()

    def cancel(self) -> None:
        """The step last offered will not run (serving's configuration replaced its clocks)."""
        self._running = None

    # -- what to do -----------------------------------------------------------------------
    def offer(
        self,
        now: float,
        due_at: float | None = None,
        missing: int = 1,
        timer_s: float = 0.0,
    ) -> Step | None:
        """A step to run at ``now``, or None.

        What the queues say: ``due_at``, when a waiting batch leaves on its timer (None: the
        queues are empty); ``missing``, the fewest arrivals that fill a queue's batch;
        ``timer_s``, the shortest batching timer (an arrival into an empty queue leaves no
        sooner). A step delays serving only if a batch falls due while it runs.
        """
        if self.stopped is not None or self._running is not None:
            return None
        s = self.settings
        if due_at is not None and not s.while_filling:
            return self._decline("batch_waiting")
        planned = self._planned()
        if planned is None:
            return self._decline("no_micro_batch_fits")
        step: Step | None = planned
        if s.predict_gap:
            # the largest step the predicted gap holds: a gap too short for the planned step
            # may still hold a smaller one
            step, reason = None, "batch_likely_due"
            for candidate in self._smaller(planned):
                span = s.margin * candidate.expected_s
                if due_at is not None and now + span > due_at:
                    reason = "batch_due_soon"
                    continue
                if 1.0 - self.due_probability(now, span, missing, timer_s) >= s.quiet_probability:
                    step = candidate
                    break
            if step is None:
                return self._decline(reason)
        self._running = step
        return step

    def _smaller(self, planned: Step) -> list[Step]:
        """``planned``, then each smaller micro-batch whose time at its setting is estimated
        (a step that measures a new setting has no smaller alternative)."""
        steps = [planned]
        setting = self._setting(planned.values)
        if self.times.estimate(setting, planned.micro_batch) is None:
            return steps
        knob = self.space.knobs[self._mb_axis]
        for value in reversed(knob.values[knob.floor :]):
            size = int(value)
            if size >= planned.micro_batch:
                continue
            expected = self.times.estimate(setting, size)
            if expected is not None:
                steps.append(Step(size, {**planned.values, MICRO_BATCH: float(size)}, expected))
        return steps

    def due_probability(self, now: float, span: float, missing: int, timer_s: float) -> float:
        """Probability that a batch falls due within ``span``: ``missing`` arrivals (one, when
        the timer is shorter than the span): the first from the gap history, the rest at the
        history's rate (Poisson)."""
        need = 1 if timer_s < span else max(1, missing)
        first = 1.0 - self.gaps.quiet(now, span)
        if need == 1 or first <= 0.0:
            return first
        mean = self.gaps.rate(now) * span
        term = total = math.exp(-mean)  # P(N = 0), then the terms up to N = need - 2
        for n in range(1, need - 1):
            term *= mean / n
            total += term
        return first * max(0.0, 1.0 - total)

    def _decline(self, reason: str) -> Step | None:
        d = self.figures.declined
        d[reason] = d.get(reason, 0) + 1
        return None

    def _planned(self) -> Step | None:
        """The configuration asked, with the largest micro-batch that keeps the bound."""
        s = self.settings
        for _ in range(8):  # a few infeasible asks are told their penalty and replaced
            config = self._asked if s.tune else self.space.maximum()
            values = self.space.values(config)
            setting = self._setting(values)
            knob = self.space.knobs[self._mb_axis]
            sizes = [int(v) for v in knob.values[knob.floor : config[self._mb_axis] + 1]]
            if self.times.estimate(setting, sizes[0]) is None:
                # nothing measured at this setting: one step of the smallest size measures it
                return Step(sizes[0], {**values, MICRO_BATCH: float(sizes[0])}, s.max_delay_s)
            for size in reversed(sizes):
                expected = self.times.estimate(setting, size)
                assert expected is not None
                if not s.bounded or expected <= s.max_delay_s:
                    return Step(size, {**values, MICRO_BATCH: float(size)}, expected)
            if not s.tune:
                return None
            self.tuner.tell(self._asked, INFEASIBLE_COST, {"infeasible": 1.0})
            self._asked = self.tuner.ask()
            self._reset_window()
        return None

    def _setting(self, values: Mapping[str, float]) -> tuple[float, ...]:
        return tuple(values[n] for n in self.space.names if n != MICRO_BATCH)

    def _reset_window(self) -> None:
        self._window_j, self._window_items, self._window_steps = 0.0, 0, 0
        self._warm = False

    def _close_window(self) -> None:
        per_item = self._window_j / max(self._window_items, 1)
        self.figures.windows += 1
        if self._scale_j is None:
            self._scale_j = max(per_item, 1e-12)
        if self.settings.tune:
            # to nine places: below that two drivers' meters differ by float noise only
            cost = round(per_item / self._scale_j, 9)
            self.tuner.tell(self._asked, cost, {"energy_per_item_j": per_item})
            asked = self.tuner.ask()
            changed = asked != self._asked
            self._asked = asked
            self._window_j, self._window_items, self._window_steps = 0.0, 0, 0
            if changed:
                self._warm = False
            return
        self._window_j, self._window_items, self._window_steps = 0.0, 0, 0

    # -- what a face may read -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running is not None

    def values(self) -> dict[str, float]:
        """The slot's configuration in force (the tuner's last ask)."""
        return self.space.values(self._asked if self.settings.tune else self.space.maximum())

    def describe(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "values": self.values(),
            "tuner": self.tuner.name,
            "stopped": self.stopped,
            **self.figures.as_dict(),
        }
