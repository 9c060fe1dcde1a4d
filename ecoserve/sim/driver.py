"""The virtual-time driver: replays an arrival trace through the engine on a device twin.

It is the discrete-event counterpart of ``ecoserve.runtime.driver``: the same sans-IO
``Engine`` (batching policy, controller, tuner) decides everything, and this loop only
supplies time and carries out the engine's answers (``Dispatch``, ``ApplyConfig``,
``WindowClosed``). Events are arrivals, batch completions, ``WaitUntil`` deadlines and the
runtime's idle tick (the runtime wakes at least every ``tick_s`` to let a timed window close),
so the engine is told the same things in the same order as in the daemon. Nothing sleeps: a
batch's duration and energy come from ``twin.sample_batch`` at the knob values in force, and
the meter integrates idle power between batches. Knobs the tuner hands to the OS (DVFS)
follow ``ecoserve.sim.governors``. A tier twin (``twins.tiers``) adds a link: its batches send
data on a bandwidth schedule, and its link estimate reaches the engine as context, as the
daemon's next-tier client's does.

The hot loop keeps per-request work to a queue append and ``Engine.arrive``; request ids are
trace indices, so a batch's completion times are one slice assignment.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.batching import Dispatch, WaitUntil
from ecoserve.core.controller import BatchOutcome, WindowReport
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import ApplyConfig, Engine, WindowClosed
from ecoserve.core.knobs import CPU, GPU, SearchSpace
from ecoserve.sim.governors import UtilisationGovernor, podgov, schedutil
from twins.base import DeviceTwin


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


def _gpu_share(twin: DeviceTwin) -> Callable[[int, float, float], float]:
    """Share of a batch's time the GPU itself runs (for the GPU governor's load)."""
    params = getattr(twin, "params", None)
    if params is None:
        return lambda batch, fc, fg: 1.0
    from twins.fitted import time_parts

    def share(batch: int, fc: float, fg: float) -> float:
        _, device, total = time_parts(params, batch, fc, fg)
        return float(device / total) if total > 0 else 1.0

    return share


class Simulator:
    """Drives one engine over one trace in virtual time on a twin."""

    def __init__(
        self,
        twin: DeviceTwin,
        engine: Engine[int],
        *,
        noise_seed: int = 0,
        tick_s: float = 0.5,
    ) -> None:
        self.twin = twin
        self.engine = engine
        self.rng = random.Random(noise_seed)
        self.tick_s = tick_s
        self.governors: dict[str, UtilisationGovernor] = {}
        self._gpu_share = _gpu_share(twin)
        self._twin_knobs = {k.name: k for k in twin.knobs()}
        self._fixed_values: dict[str, float] = {}

    def _governor(self, name: str) -> UtilisationGovernor:
        gov = self.governors.get(name)
        if gov is None:
            table = self._twin_knobs[name].values
            gov = schedutil(table) if name == CPU else podgov(table)
            self.governors[name] = gov
        return gov

    def _governed_batch(
        self, k: int, now: float, governed: list[tuple[str, UtilisationGovernor]]
    ) -> tuple[float, float]:
        """Run one batch under governors: in steps, letting the clocks move as it runs."""
        twin, rng = self.twin, self.rng
        for _, gov in governed:
            gov.advance(now, 0.0)  # idle since the last batch
        freqs = dict(self._fixed_values)
        for name, gov in governed:
            freqs[name] = gov.freq
        nominal = twin.batch_time(k, freqs)
        factor = twin.sample_batch_time(k, freqs, rng) / nominal if nominal > 0 else 1.0
        step_max = min(gov.period_s for _, gov in governed)
        left, t, energy = 1.0, now, 0.0
        while left > 1e-12:
            for name, gov in governed:
                freqs[name] = gov.freq
            span = twin.batch_time(k, freqs) * factor
            step = min(step_max, left * span)
            energy += twin.sample_power(freqs, 1.0, rng, batch=k) * step
            left -= step / span
            t += step
            share = self._gpu_share(k, freqs.get(CPU, math.inf), freqs.get(GPU, math.inf))
            for name, gov in governed:
                gov.advance(t, share if name == GPU else 1.0)
        return t - now, energy

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
        ctl = engine.controller
        arrive, poll, finish, tick = engine.arrive, engine.poll, engine.finish, engine.tick
        max_queue = engine.policy.max_queue if engine.policy.max_queue is not None else n + 1
        sample_batch = twin.sample_batch
        observes = twin.observes_environment  # a tier twin: its link estimate is context
        observe = engine.observe_context
        tick_s = self.tick_s
        reports: list[WindowReport] = []

        now = min(0.0, arr[0]) if n else 0.0
        meter = 0.0  # joules up to ``mark``
        mark = now
        active = 0.0
        rejected = batches = 0
        i = 0
        opening = engine.start(now, meter)

        # knob values in force: fixed ones, and the governed ones (looked up per batch)
        fixed: dict[str, float] = {}
        governed: list[tuple[str, UtilisationGovernor]] = []
        idle_w = 0.0

        def apply(action: ApplyConfig) -> None:
            """Carry out ``ApplyConfig`` on the twin: fixed clocks, or the governors' models."""
            nonlocal fixed, governed, idle_w
            fixed = {k: v for k, v in action.values.items() if k in self._twin_knobs}
            self._fixed_values = dict(fixed)
            governed = [(k, self._governor(k)) for k in self._twin_knobs if k in action.governed]
            for k, g in governed:
                fixed[k] = g.freq
            idle_w = twin.power(fixed, 0.0)

        def window(closed: WindowClosed) -> None:
            nonlocal meter, mark
            reports.append(closed.report)
            if on_window is not None:
                on_window(closed.report)
            meter += idle_w * (now - mark)
            mark = now
            apply(closed.apply)

        def admit(until: float) -> None:
            """Queue every arrival up to ``until`` (rejected when the queue is full)."""
            nonlocal i, rejected
            while i < n and arr[i] <= until:
                a = arr[i]
                if len(engine) >= max_queue:
                    rejected += 1
                else:
                    arrive(i, a)
                i += 1

        apply(opening)
        while True:
            admit(now)
            action = poll(now)
            if type(action) is Dispatch:
                items = action.items
                k = len(items)
                config = ctl.config
                errors = 0.0
                if governed:
                    dur, energy = self._governed_batch(k, now, governed)
                    new_fixed = dict(fixed)
                    for name, gov in governed:
                        new_fixed[name] = gov.freq
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
                admit(end)
                first = items[0]
                completions[first : first + k] = end
                now = end
                closed = finish(
                    BatchOutcome(
                        config=config,
                        latencies=[end - a for a in action.arrivals],
                        energy_j=energy,
                        end=end,
                        meter_j=meter,
                        errors=errors,
                        busy_s=dur,
                    )
                )
                if closed is not None:
                    window(closed)
                if observes:
                    closed = observe(twin.context(now), now, meter)
                    if closed is not None:
                        window(closed)
                continue
            if action is None and i >= n:
                break
            if observes:
                closed = observe(twin.context(now), now, meter + idle_w * (now - mark))
                if closed is not None:
                    window(closed)
                    continue
            closed = tick(now, meter + idle_w * (now - mark))
            if closed is not None:
                window(closed)
                continue
            nxt = now + tick_s
            if isinstance(action, WaitUntil) and action.deadline < nxt:
                nxt = max(now, action.deadline)
            if i < n and arr[i] < nxt:
                nxt = arr[i]
            now = nxt

        return SimResult(
            tuner=ctl.tuner.name,
            seed=int(ctl.tuner.seed or 0),
            accounting=ctl.accounting.value,
            reports=reports,
            arrivals=arr_np,
            completions=completions,
            rejected=rejected,
            batches=batches,
            active_energy_j=active,
            total_energy_j=meter,
            end_s=max(now, float(arr[-1]) if n else 0.0),
            wall_s=time.perf_counter() - wall0,
            space=ctl.space,
        )


def simulate(
    arrivals: Sequence[float] | np.ndarray,
    twin: DeviceTwin,
    settings: EngineSettings | None = None,
    *,
    noise_seed: int | None = None,
    tick_s: float = 0.5,
    on_window: Callable[[WindowReport], None] | None = None,
    baseline: Baseline | None = None,
    **overrides: Any,
) -> SimResult:
    """Build the engine exactly as the daemon does, then replay ``arrivals``.

    ``overrides`` replace ``EngineSettings`` fields (``tuner="grid"``, ``seed=2``...).
    ``noise_seed`` seeds the twin's noise (default: the tuner seed). ``baseline`` fixes the
    cost's E0/L0 instead of measuring them at maximum first (rows of one comparison that
    must share a scale).
    """
    settings = replace(settings or EngineSettings(), **overrides)
    sim = Simulator(
        twin,
        build_engine(twin.knobs(), settings, baseline),
        noise_seed=settings.seed if noise_seed is None else noise_seed,
        tick_s=tick_s,
    )
    return sim.run(arrivals, on_window=on_window)
