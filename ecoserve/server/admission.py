"""Tenants' requests admitted by their share of the board, sized by what the board does.

``FairShare`` (in the core) decides; this object feeds it what the daemon measures. Its
capacity is ``BATCHES_HELD`` batches of the batch size in force, and its throughput the
items per second a batch runs at (a moving average over the batches run), so that as the
tuner changes the clocks and batch sizes the shares follow what the board can do now.
Requests count once each, whatever their number of items; the rate limits of the tenants
file are in requests per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ecoserve.core.fair_share import Decision, FairShare
from ecoserve.runtime.driver import BatchStats, RuntimeObserver
from ecoserve.server.tenants import Tenants

#: Capacity in batches: with the policy's reserve of three quarters, a pool of 1.5 batches.
BATCHES_HELD = 6
#: Weight of the newest batch in the throughput's moving average.
SMOOTHING = 0.2


class TenantAdmission(RuntimeObserver):
    """Admits or refuses each tenant request; told of every batch to size the board."""

    def __init__(
        self,
        tenants: Tenants,
        batch_size: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch_size = batch_size
        self.clock = clock
        self.throughput: float | None = None
        self.policy: FairShare = tenants.policy(BATCHES_HELD, 1.0)
        self.refused: dict[str, dict[str, int]] = {t.name: {"share": 0, "rate": 0} for t in tenants}

    def admit(self, tenant: str) -> Decision:
        decision = self.policy.admit(tenant, self.clock())
        if not decision.admitted and decision.reason is not None:
            self.refused[tenant][decision.reason] += 1
        return decision

    def release(self, tenant: str) -> None:
        self.policy.release(tenant)

    def on_batch(self, stats: BatchStats) -> None:
        if not stats.ok or stats.run_s <= 0 or stats.size < 1:
            return
        rate = stats.size / stats.run_s
        old = self.throughput
        self.throughput = rate if old is None else old + SMOOTHING * (rate - old)
        capacity = BATCHES_HELD * max(1, self.batch_size())
        self.policy.set_capacity(capacity, self.throughput)

    def describe(self) -> dict[str, object]:
        """For ``/v1/status``: the board's size as the policy sees it, and refusals by tenant."""
        now = self.clock()
        return {
            "capacity": self.policy.capacity,
            "pool": self.policy.pool,
            "throughput": self.policy.throughput,
            "in_system": {t: self.policy.in_system(t) for t in self.policy.tenants},
            "demand": {t: self.policy.demand(t, now) for t in self.policy.tenants},
            "refused": {t: dict(r) for t, r in self.refused.items()},
        }
