"""The virtual-time driver: replays an arrival trace through the engine on a device twin.

It is the discrete-event counterpart of ``ecoserve.runtime.driver``: the same sans-IO
``Engine`` (queues, batching, controller, tuner) decides everything and the order of it,
and this loop only tells it what happened (arrivals, a batch done, the time and the meter)
and carries out its answers (``Dispatch``, ``WindowClosed``, ``ApplyConfig``, ``WaitUntil``,
``Drained``), exactly as the daemon's runtime does. Virtual time jumps to the earlier of the
next arrival and the engine's ``WaitUntil`` deadline. Nothing sleeps: a
batch's duration and energy come from ``twin.sample_batch`` at the knob values in force, and
the meter integrates idle power between batches. Knobs the tuner hands to the OS (DVFS)
follow the governor models of ``twins.governors``, as on the virtual device. A tier twin
(``twins.tiers``) adds a link: its batches send data on a bandwidth schedule, and its link
estimate reaches the engine as context, as the daemon's next-tier client's does.

Background steps (an engine with a harvest policy answers ``RunBackground``) run on the twin
too: their seconds come from a step-cost function (``background``: micro-batch and the
slot's values, the clocks in force among them), with the twin's noise; their watts are the
twin's busy power at the clocks in force. Their joules go on the meter and are reported
apart (``extra["background"]``), drawn from a random stream of their own so the serving
batches' noise is the same with and without them.

The hot loop keeps per-request work to a queue append and ``Engine.arrive``; request ids are
trace indices, so a batch's completion times are one slice assignment.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.batching import Dispatch
from ecoserve.core.controller import BatchOutcome, WindowReport
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import (
    Admission,
    ApplyConfig,
    Drained,
    Engine,
    RunBackground,
    WindowClosed,
)
from ecoserve.core.harvest import HarvestPolicy, StepOutcome
from ecoserve.core.knobs import SearchSpace
from twins.base import DeviceTwin
from twins.governors import GovernedClocks, UtilisationGovernor


@dataclass
class SimResult:
    """Everything one replay produced; ``completions`` is NaN for rejected requests."""

    tuner: str
    seed: int
    accounting: str
    reports: list[WindowReport]
    arrivals: np.ndarray
    completions: np.ndarray
    rejected: int
    batches: int
    active_energy_j: float
    total_energy_j: float
    end_s: float
    wall_s: float
    space: SearchSpace
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def served(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.completions)))

    @property
    def latencies(self) -> np.ndarray:
        lat = self.completions - self.arrivals
        return lat[~np.isnan(lat)]

    @property
    def speedup(self) -> float:
        """Virtual seconds replayed per wall-clock second."""
        return self.end_s / self.wall_s if self.wall_s > 0 else math.inf


#: A background step's expected seconds: (micro-batch, the slot's values with the clocks).
StepCost = Callable[[int, Mapping[str, float]], float]


class Simulator:
    """Drives one engine over one trace in virtual time on a twin.

    ``background``: the step cost of the engine's background job (needed when the engine has
    a harvest policy). ``clock_switch_s``: seconds the board stands idle for each switch
    between serving's and the background slot's clocks (0: the twin models none).
    """

    def __init__(
        self,
        twin: DeviceTwin,
        engine: Engine[int],
        *,
        noise_seed: int = 0,
        background: StepCost | None = None,
        clock_switch_s: float = 0.0,
    ) -> None:
        if engine.harvest is not None and background is None:
            raise ValueError(
                "the engine has a background slot: give the simulator the job's step cost "
                "(background=...)"
            )
        if not clock_switch_s >= 0:
            raise ValueError(f"clock_switch_s must be >= 0 seconds, got {clock_switch_s}")
        self.twin = twin
        self.engine = engine
        self.rng = random.Random(noise_seed)
        self.background = background
        self.clock_switch_s = float(clock_switch_s)
        self._step_rng = random.Random(noise_seed + 7919)
        #: The clocks the engine's configuration puts in force, governed knobs included.
        self.clocks = GovernedClocks(twin)

    def _governed_batch(self, k: int, now: float) -> tuple[float, float]:
        """Run one batch under the governors; the twin's noise scales its time and power."""
        twin, rng, clocks = self.twin, self.rng, self.clocks
        clocks.idle(now)  # idle since the last batch
        freqs = clocks.freqs()
        nominal = twin.batch_time(k, freqs)
        factor = twin.sample_batch_time(k, freqs, rng) / nominal if nominal > 0 else 1.0

        def power(freqs: Mapping[str, float]) -> float:
            return twin.sample_power(freqs, 1.0, rng, batch=k)

        return clocks.run_batch(k, now, factor, power)

    def run(
        self,
        arrivals: Sequence[float] | np.ndarray,
        on_window: Callable[[WindowReport], None] | None = None,
    ) -> SimResult:
        """Replay ``arrivals`` (seconds, sorted) to the end, draining the queue."""
        wall0 = time.perf_counter()
        arr_np = np.asarray(arrivals, dtype=np.float64)
        arr = arr_np.tolist()
        n = len(arr)
        completions = np.full(n, np.nan)
        engine, twin, rng = self.engine, self.twin, self.rng
        arrive, next_answer, batch_done = engine.arrive, engine.next, engine.batch_done
        accepted = Admission.ACCEPTED
        sample_batch = twin.sample_batch
        context = twin.context if twin.observes_environment else None  # a tier twin's link
        reports: list[WindowReport] = []

        now = min(0.0, arr[0]) if n else 0.0
        meter = 0.0  # joules up to ``mark``
        mark = now
        active = 0.0
        rejected = batches = 0
        busy = 0.0  # seconds serving batches ran
        i = 0
        switch_s = self.clock_switch_s
        slot_clocks = False  # the background slot's clocks are in force

        # knob values in force: fixed ones, and the governed ones (looked up per batch)
        fixed: dict[str, float] = {}
        governed: list[tuple[str, UtilisationGovernor]] = []
        idle_w = 0.0

        def apply(action: ApplyConfig) -> None:
            """Carry out ``ApplyConfig`` on the twin: fixed clocks, or the governors' models."""
            nonlocal fixed, governed, idle_w, meter, mark, now, slot_clocks
            meter += idle_w * (now - mark)
            mark = now
            if switch_s and action.background != slot_clocks:
                now += switch_s  # the board idles while its clocks change
            slot_clocks = action.background
            self.clocks.apply(action.values, action.governed)
            governed = self.clocks.governed
            fixed = self.clocks.freqs()
            idle_w = twin.power(fixed, 0.0)

        def admit(until: float) -> None:
            """Offer the engine every arrival up to ``until``; it refuses what it cannot queue."""
            nonlocal i, rejected
            while i < n and arr[i] <= until:
                if arrive(i, arr[i]) is not accepted:
                    rejected += 1
                i += 1

        apply(engine.start(now, meter))
        while True:
            admit(now)
            action = next_answer(now, meter + idle_w * (now - mark), context, arrivals_over=i >= n)
            if isinstance(action, Dispatch):
                items = action.items
                k = len(items)
                errors = 0.0
                if governed:
                    dur, energy = self._governed_batch(k, now)
                    new_fixed = self.clocks.freqs()
                    if new_fixed != fixed:
                        meter += idle_w * (now - mark)
                        mark = now
                        fixed = new_fixed
                        idle_w = twin.power(fixed, 0.0)
                else:
                    dur, energy, errors = sample_batch(k, fixed, rng, now)
                end = now + dur
                meter += idle_w * (now - mark) + energy
                mark = end
                active += energy
                batches += 1
                busy += dur
                admit(end)
                first = items[0]
                completions[first : first + k] = end
                now = end
                batch_done(
                    BatchOutcome(
                        config=action.config,
                        latencies=[end - a for a in action.arrivals],
                        energy_j=energy,
                        end=end,
                        meter_j=meter,
                        errors=errors,
                        busy_s=dur,
                    ),
                    context,
                )
            elif isinstance(action, WindowClosed):
                reports.append(action.report)
                if on_window is not None:
                    on_window(action.report)
            elif isinstance(action, ApplyConfig):
                apply(action)
            elif isinstance(action, RunBackground):
                end, meter = self._step(action, now, meter + idle_w * (now - mark))
                mark = end
                admit(end)
                now = end
            elif isinstance(action, Drained):
                break
            else:  # WaitUntil: the next arrival, or the engine's deadline
                nxt = max(now, action.deadline)
                if i < n and arr[i] < nxt:
                    nxt = arr[i]
                now = nxt

        return SimResult(
            tuner=engine.tuner.name,
            seed=int(engine.tuner.seed or 0),
            accounting=engine.accounting,
            reports=reports,
            arrivals=arr_np,
            completions=completions,
            rejected=rejected,
            batches=batches,
            active_energy_j=active,
            total_energy_j=meter,
            end_s=max(now, float(arr[-1]) if n else 0.0),
            wall_s=time.perf_counter() - wall0,
            space=engine.space,
            extra=self._extra(busy),
        )

    def _step(self, step: RunBackground, now: float, meter: float) -> tuple[float, float]:
        """Run one background step from ``now`` (``meter``: joules up to ``now``); its end and
        the meter then. The engine hears of it before this returns."""
        cost, twin, rng = self.background, self.twin, self._step_rng
        assert cost is not None
        freqs = self.clocks.freqs()
        seconds = cost(step.micro_batch, {**step.values, **freqs})
        if twin.noise:
            seconds *= max(0.05, 1.0 + twin.noise * rng.gauss(0.0, 1.0))
        joules = twin.sample_power(freqs, 1.0, rng) * seconds
        end, meter = now + seconds, meter + joules
        self.engine.background_done(StepOutcome(step.micro_batch, joules, seconds, end, meter))
        return end, meter

    def _extra(self, busy: float) -> dict[str, Any]:
        harvest = self.engine.harvest
        extra: dict[str, Any] = {"serving_busy_s": busy}
        if harvest is not None:
            extra["background"] = harvest.figures.as_dict()
        return extra


def simulate(
    arrivals: Sequence[float] | np.ndarray,
    twin: DeviceTwin,
    settings: EngineSettings | None = None,
    *,
    noise_seed: int | None = None,
    tick_s: float = 0.5,
    on_window: Callable[[WindowReport], None] | None = None,
    baseline: Baseline | None = None,
    harvest: HarvestPolicy | None = None,
    background: StepCost | None = None,
    **overrides: Any,
) -> SimResult:
    """Build the engine exactly as the daemon does, then replay ``arrivals``.

    ``overrides`` replace ``EngineSettings`` fields (``tuner="grid"``, ``seed=2``...).
    ``noise_seed`` seeds the twin's noise (default: the tuner seed). ``baseline`` fixes the
    cost's E0/L0 instead of measuring them at maximum first (rows of one comparison that
    must share a scale). ``harvest`` gives the engine a background slot whose job's step
    cost is ``background``.
    """
    settings = replace(settings or EngineSettings(), **overrides)
    sim = Simulator(
        twin,
        build_engine(twin.knobs(), settings, baseline, tick_s=tick_s, harvest=harvest),
        noise_seed=settings.seed if noise_seed is None else noise_seed,
        background=background,
    )
    return sim.run(arrivals, on_window=on_window)
