"""Capacity guard: never choose a configuration that cannot carry the recent peak load.

A quiet window can make a slow configuration look cheap; under the next busy one its queue
grows without bound. An online model of batch time over batch size and clocks
(``tuners.batch_time``, fitted from each window's batch count and server time) gives every
measured clock setting's capacity at each batch size; a configuration whose capacity is
below ``headroom`` times the demand is unsafe.

A batch's server time is its run (``busy_s``) plus the serving loop's CPU time around it
(``loop_s``: parsing and coding its requests, dispatch). Live on a small CPU the loop runs
out first: with one torch thread, ``builtin:cnn`` runs one item in about 0.2 ms (0.46 ms
dispatch to completion), while the loop spends 0.7-0.9 ms on each HTTP request, and a batch
must pass through the loop on its way out. Timing the batch alone credited batch 1 with
over 2,000 requests/s where it carried about 630. The two are added, although some of the
loop's work runs while the batch does: the sum is cautious (for batch 16 it says about
1,100/s where the daemon carried 1,200-1,400), and at the top of the range the refuge, the
largest batch, is where the guard sends the centre anyway. The simulator's twin times the
batch alone (``loop_s`` is 0 there).

The demand is the busiest rate of the last memory's windows, each window's rate taken over
its busy seconds (the controller's ``busy_rate``) rather than its mean: bursts between idle
gaps average to a low rate, yet each burst must be carried as it comes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

from ecoserve.core.knobs import CPU, GPU, Config, SearchSpace
from tuners.batch_time import BatchTimeModel
from tuners.ecogd.batch import BatchAxis


class CapacityGuard:
    """The batch-time model and what it says is safe. Not saved with the tuner's state: a
    restarted tuner relearns it from its next windows."""

    def __init__(
        self, space: SearchSpace, batch: BatchAxis, headroom: float = 1.0, memory: int = 20
    ) -> None:
        self.batch = batch
        self.headroom = float(headroom)
        self.memory = max(1, int(memory))
        self._top = space.maximum()
        # which knobs of a configuration without its batch size are clocks (faster when higher)
        self._monotone = tuple(
            k.name in (CPU, GPU) for a, k in enumerate(space.knobs) if a != batch.axis
        )
        self.reset()

    def reset(self) -> None:
        self.times = BatchTimeModel()
        self.times.set_reference(self.batch.clocks(self._top))
        # the rate each recent window's busy seconds brought (warm-up floods left out)
        self._rates: deque[float] = deque(maxlen=self.memory)

    def demand(self) -> float | None:
        """The rate a configuration must carry: the busiest recent window's, over its busy
        seconds; None before any window told one."""
        return max(self._rates, default=None)

    def observe(self, config: Config, metrics: Mapping[str, float]) -> None:
        """Note the window's rate (the busy seconds' when the driver counted them, else the
        mean) and feed the model with its mean batch and server time per batch (when the
        driver timed them)."""
        told = [metrics.get(k, math.nan) for k in ("arrival_rate", "busy_rate")]
        rates = [float(r) for r in told if math.isfinite(r) and r >= 0]
        if rates and not metrics.get("baseline"):
            self._rates.append(max(rates))
        batches = metrics.get("batches", 0.0)
        busy = metrics.get("busy_s", 0.0) + metrics.get("loop_s", 0.0)
        served = metrics.get("requests", 0.0)
        if batches > 0 and busy > 0 and served > 0:
            self.times.observe(self.batch.clocks(config), served / batches, busy / batches)

    def capacity(self, config: Config) -> float | None:
        """Requests/s ``config`` serves with full batches, by the model (at most that of a
        measured setting at least as fast on every clock, when not measured itself); None
        while unknown."""
        size = self.batch.sizes[config[self.batch.axis]]
        clocks = self.batch.clocks(config)
        seen = self.times.only_size()
        if seen is not None and size < seen:
            # one size measured: the line through the origin credits a smaller batch with the
            # measured time per item, which a fixed part per batch makes untrue; the guard
            # takes the cautious bound instead, a smaller batch no faster than the one seen
            at_seen = self.times.capacity_bound(clocks, seen, self._monotone)
            return None if at_seen is None else at_seen * size / seen
        return self.times.capacity_bound(clocks, size, self._monotone)

    def unsafe(self, config: Config, peak: float | None) -> bool:
        """True when the model says ``config`` cannot serve ``peak`` requests/s (with the
        headroom); never while the peak is unknown."""
        if peak is None:
            return False
        capacity = self.capacity(config)
        return capacity is not None and capacity < self.headroom * peak

    def refuge(self, peak: float | None) -> Config:
        """Every clock at maximum and the smallest batch size that carries ``peak`` (the
        largest when none does): where the centre goes when nothing measured is safe."""
        for index in self.batch.indices():
            candidate = self.batch.at(self._top, index)
            if not self.unsafe(candidate, peak):
                return candidate
        return self._top
