"""Models of the operating system's frequency governors, for knobs a tuner hands to the OS.

On a real board the DVFS tuner hands the CPU and GPU clocks to the kernel (CPU ``schedutil``,
Jetson GPU ``nvhost_podgov``); a twin has no kernel, so it needs a stand-in that reacts to
load the way those governors do. The virtual-time replay (``ecoserve.sim``) and the virtual
device (``twins.virtual_device``, in wall-clock time) both run these same models, so the
two agree on what DVFS does. These are models, not the kernel's code:

- ``schedutil``-like (CPU): the utilisation is a PELT-like exponential average (32 ms
  half-life) of the capacity-invariant busy signal (busy fraction scaled by ``f_cur / f_max``,
  as Linux's frequency-invariant load tracking does); at most every ``period_s`` (10 ms, the
  usual rate limit) the governor picks the lowest table frequency ``>= 1.25 * f_max * util``
  (the kernel's ``map_util_freq`` headroom). A core 100% busy at half clock reads 0.5, so the
  clock climbs by 25% per update rather than jumping to the top. The serving thread counts as
  busy for the whole batch (PyTorch spins on CUDA synchronisation).
- ``nvhost_podgov``-like (GPU): the same rule on the GPU's own load (the device part of each
  batch), sampled every 50 ms with a 50 ms half-life.

:class:`GovernedClocks` runs a batch under the governors in steps of ``period_s``, so the
clock can rise while a long batch runs, as it does on the board.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Collection, Mapping, Sequence

from ecoserve.core.knobs import CPU, GPU
from twins.base import DeviceTwin
from twins.fitted import time_parts

#: The GPU's share of a batch's time, as ``share(batch, cpu_hz, gpu_hz)``.
GpuShare = Callable[[int, float, float], float]


class UtilisationGovernor:
    """Picks a frequency from a table from the smoothed, capacity-invariant load."""

    def __init__(
        self,
        table: Sequence[float],
        *,
        period_s: float,
        half_life_s: float,
        margin: float = 1.25,
        start: float | None = None,
    ) -> None:
        if not table:
            raise ValueError("a governor needs a non-empty frequency table")
        if period_s <= 0 or half_life_s <= 0 or margin <= 0:
            raise ValueError("period_s, half_life_s and margin must be > 0")
        self.table = tuple(sorted(float(f) for f in table))
        self.period_s = period_s
        self.half_life_s = half_life_s
        self.margin = margin
        self.freq = self.table[-1] if start is None else self._pick(start)
        self.util = self.freq / self.table[-1] / margin
        self._t: float | None = None
        self._acc_t = 0.0
        self._acc_busy = 0.0

    @property
    def f_max(self) -> float:
        return self.table[-1]

    def _pick(self, target: float) -> float:
        i = bisect.bisect_left(self.table, target - 1e-6)
        return self.table[min(i, len(self.table) - 1)]

    def advance(self, now: float, busy_fraction: float) -> float:
        """The unit was ``busy_fraction`` busy since the last call; returns the clock now."""
        if self._t is None:
            self._t = now
            return self.freq
        dt = now - self._t
        if dt <= 0:
            return self.freq
        self._t = now
        self._acc_t += dt
        self._acc_busy += dt * busy_fraction * self.freq / self.f_max
        if self._acc_t >= self.period_s:
            sample = self._acc_busy / self._acc_t
            decay = 0.5 ** (self._acc_t / self.half_life_s)
            self.util = self.util * decay + (1.0 - decay) * sample
            self.freq = self._pick(self.margin * self.f_max * self.util)
            self._acc_t = self._acc_busy = 0.0
        return self.freq


def schedutil(table: Sequence[float]) -> UtilisationGovernor:
    """The CPU governor model (``schedutil``: 1.25 headroom, 10 ms rate limit, PELT 32 ms)."""
    return UtilisationGovernor(table, period_s=0.01, half_life_s=0.032)


def podgov(table: Sequence[float]) -> UtilisationGovernor:
    """The Jetson GPU governor model (``nvhost_podgov``-like: 50 ms sampling and smoothing)."""
    return UtilisationGovernor(table, period_s=0.05, half_life_s=0.05)


def governor_for(name: str, table: Sequence[float]) -> UtilisationGovernor:
    """The governor the OS gives knob ``name``: schedutil for the CPU, podgov otherwise."""
    return schedutil(table) if name == CPU else podgov(table)


def gpu_share(twin: DeviceTwin) -> GpuShare:
    """Share of a batch's time the GPU itself runs (its governor's load while busy).

    Fitted twins split a batch into host and device time; other twins count the GPU busy
    for the whole batch.
    """
    params = getattr(twin, "params", None)
    if params is None:
        return lambda batch, fc, fg: 1.0

    def share(batch: int, fc: float, fg: float) -> float:
        _, device, total = time_parts(params, batch, fc, fg)
        return float(device / total) if total > 0 else 1.0

    return share


class GovernedClocks:
    """A twin's clocks: pinned knobs hold their values, governed ones follow governor models.

    A knob's governor is made the first time the knob is handed to the OS and kept after,
    as the kernel keeps its own state while a knob is pinned. Time is whatever the caller
    passes (virtual seconds in the replay, the wall clock on the virtual device); each
    governor ignores a time earlier than the last it saw.
    """

    def __init__(self, twin: DeviceTwin) -> None:
        self.twin = twin
        self._tables = {k.name: k.values for k in twin.knobs()}
        self._share = gpu_share(twin)
        self._governors: dict[str, UtilisationGovernor] = {}
        self.fixed: dict[str, float] = {}
        #: The governed knobs, in the twin's knob order, with their governors.
        self.governed: list[tuple[str, UtilisationGovernor]] = []

    def apply(self, values: Mapping[str, float], governed: Collection[str]) -> None:
        """Pin ``values`` (the twin's knobs only) and hand the knobs in ``governed`` to the OS."""
        self.fixed = {k: v for k, v in values.items() if k in self._tables}
        self.governed = [(k, self._governor(k)) for k in self._tables if k in governed]

    def _governor(self, name: str) -> UtilisationGovernor:
        gov = self._governors.get(name)
        if gov is None:
            gov = self._governors[name] = governor_for(name, self._tables[name])
        return gov

    def freqs(self) -> dict[str, float]:
        """The clocks in force: the pinned values, and each governor's current choice."""
        freqs = dict(self.fixed)
        for name, gov in self.governed:
            freqs[name] = gov.freq
        return freqs

    def idle(self, now: float) -> None:
        """The board ran nothing since the governors' last update."""
        for _, gov in self.governed:
            gov.advance(now, 0.0)

    def busy(self, now: float, batch: int) -> None:
        """The board ran batches of ``batch`` since the governors' last update."""
        self._busy(now, batch, self.freqs())

    def _busy(self, now: float, batch: int, freqs: Mapping[str, float]) -> None:
        # the CPU thread serves the whole batch; the GPU runs only its device part
        share = self._share(batch, freqs.get(CPU, math.inf), freqs.get(GPU, math.inf))
        for name, gov in self.governed:
            gov.advance(now, share if name == GPU else 1.0)

    def run_batch(
        self,
        batch: int,
        start: float,
        factor: float,
        power: Callable[[Mapping[str, float]], float],
    ) -> tuple[float, float]:
        """Run one batch from ``start``, letting the clocks move as it runs; (seconds, joules).

        The batch is a unit of work that runs at ``1 / (twin.batch_time * factor)`` per
        second at the clocks in force (``factor`` > 0 scales the twin's time: noise in the
        replay, the measured time on the virtual device); ``power(freqs)`` is the busy
        power. Steps last at most one governor period, so a clock that rises mid-batch
        speeds up the rest of it.
        """
        if not self.governed:
            raise ValueError("run_batch needs at least one governed knob")
        if factor <= 0:
            raise ValueError("factor must be > 0")
        twin, governed = self.twin, self.governed
        freqs = self.freqs()
        step_max = min(gov.period_s for _, gov in governed)
        left, t, energy = 1.0, start, 0.0
        while left > 1e-12:
            for name, gov in governed:
                freqs[name] = gov.freq
            span = twin.batch_time(batch, freqs) * factor
            step = min(step_max, left * span)
            energy += power(freqs) * step
            left -= step / span
            t += step
            self._busy(t, batch, freqs)
        return t - start, energy
