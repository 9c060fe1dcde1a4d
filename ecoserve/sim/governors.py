"""Models of the operating system's frequency governors, for the DVFS baseline in simulation.

On a real board the DVFS tuner hands the CPU and GPU clocks to the kernel (CPU ``schedutil``,
Jetson GPU ``nvhost_podgov``); the simulator has no kernel, so it needs a stand-in that reacts
to load the way those governors do. These are models, not the kernel's code:

- ``schedutil``-like (CPU): the utilisation is a PELT-like exponential average (32 ms
  half-life) of the capacity-invariant busy signal (busy fraction scaled by ``f_cur / f_max``,
  as Linux's frequency-invariant load tracking does); at most every ``period_s`` (10 ms, the
  usual rate limit) the governor picks the lowest table frequency ``>= 1.25 * f_max * util``
  (the kernel's ``map_util_freq`` headroom). A core 100% busy at half clock reads 0.5, so the
  clock climbs by 25% per update rather than jumping to the top. The serving thread counts as
  busy for the whole batch (PyTorch spins on CUDA synchronisation).
- ``nvhost_podgov``-like (GPU): the same rule on the GPU's own load (the device part of each
  batch), sampled every 50 ms with a 50 ms half-life.

The simulator advances the governors through each batch in steps of ``period_s``, so the
clock can rise while a long batch runs, as it does on the board.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


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
