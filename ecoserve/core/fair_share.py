"""Admission for a board shared by tenants: weighted fair shares when saturated, rate limits.

Sans-IO: the policy is told the time (``now``) and what happened (a request offered, a
request finished); the server and the simulator keep the clock. The engine tells it the
board's capacity ``C`` (requests in the system, admitted and not yet finished, about six
batches) and its throughput ``mu`` (requests per second at the current batch size and
clocks), and updates both as it learns (:meth:`FairShare.set_capacity`).

The rule, with ``N`` requests in the system and the pool ``P`` the part of C not held in
reserve (a quarter by default: 1.5 batches):

- *Work-conserving*: below saturation nobody is past its share (see next), so every
  request is admitted while ``N < P``, and past P while its tenant is under its burst cap.
- *Who is past its share*: each tenant's demand is its rate of requests offered (those
  its rate limit lets through), averaged over ``window_s``. Its fair rate is its max-min
  fair part of ``mu`` by weight: a tenant that asks for less than its weighted part gets
  all it asks, and what it leaves is split among the others by weight (water-filling).
  A tenant is past its share when its demand, taken ``sigmas`` standard deviations low,
  still exceeds its fair rate.
- *Held to the pool*: a tenant past its share is admitted only while it holds fewer than
  its weighted part (among the tenants past their share) of what the others leave of P.
  Only while some active tenant is within its share, though: with none (a tenant alone,
  or every tenant asking too much) there is no one's latency to protect, and each may hold
  its weighted part of C, so a tenant alone can keep the board busy.
  Tenants that all ask too much thus share P by weight, which in one FIFO queue is their
  throughput (Little's law).
- *Within its share*, a tenant is admitted while ``N < P`` or it holds fewer than its
  weighted part of C (among the active tenants): a cap on a sudden burst, far above what
  a rate within its share keeps in the system, so a tenant within its share is not
  refused however much the others send.
- *The reserve* ``C - P`` is what that leaves to the tenants within their share. Why: the
  queue is FIFO, so every request of a burst admitted stands ahead of the next request of a
  well-behaved tenant, whose latency grows by one batch time per batch of the burst. Held
  to P, the burst puts at most the running batch and half the next ahead of it.
- *Rate limits*: an optional token bucket per tenant (``rate`` per second, ``burst``
  deep) refuses a request when no token is left, whatever the load, with the time until
  the next token as ``retry_after_s``. A token is spent only on admission.

Why demand against ``mu``, not counts in the system: counts swing with every burst of
arrivals (a tenant sending at half its share holds, for a moment, as many requests as one
sending at five times its share), so a count rule either refuses the well-behaved tenant's
bursts or lets the heavy one hold as many places as the light one may need. Below
saturation the water-filling gives everyone its whole demand, so nobody is held, whatever
the counts do. A stream that starts after a quiet spell is averaged over the time since it
started, not with the silence before it, and taking the demand two standard deviations
low keeps its first few requests from reading as a flood: a real burst is held within a
few dozen of its requests, a steady stream never.

Choosing P is a trade (FIFO, one batch at a time): two batches keep the board fully busy
under a burst but put a whole batch of it ahead of each within-share request; 1.5 batches
(``C`` = six batches at the default reserve) keep a within-share tenant's latency near its
latency alone, and the board idles while the burst refills the next batch (about a sixth
of the time in ``tests/test_fair_share.py``'s board).

``C`` is a soft bound: tenants within their share may together hold more than C (each up
to its own part of it), because refusing a tenant within its share is exactly what
isolation must not do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Reason = Literal["share", "rate"]

#: The fraction of the capacity kept for tenants within their share.
DEFAULT_RESERVE = 0.75
#: The span demands are averaged over: long enough to smooth a Poisson stream, short
#: enough to follow a tenant that speeds up or stops.
DEFAULT_WINDOW_S = 1.0
#: A demand counts as past its share only this many standard deviations (of a Poisson count)
#: above it: the noise of the averages near saturation flags nobody, and a burst of a few
#: dozen requests is flagged at once.
DEFAULT_SIGMAS = 2.0
#: The least wait a share refusal suggests: places free up only as batches finish, and a
#: client told to come back sooner would mostly be refused again.
MIN_SHARE_RETRY_S = 1.0
#: The most: a client told to wait longer would give up on a board that has room by then.
MAX_SHARE_RETRY_S = 30.0


@dataclass(frozen=True)
class Limits:
    """One tenant's weight at saturation and optional rate limit (requests per second).

    ``burst`` is how many requests may arrive at once within the rate; by default one
    second's worth (at least 1).
    """

    weight: float = 1.0
    rate: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        if not _positive(self.weight):
            raise ValueError(f"weight must be a number > 0, got {self.weight!r}")
        if self.rate is not None and not _positive(self.rate):
            raise ValueError(f"rate must be requests per second > 0, got {self.rate!r}")
        if self.burst is not None:
            if self.rate is None:
                raise ValueError("burst needs a rate: give the rate limit too, or drop burst")
            if not (_positive(self.burst) and self.burst >= 1):
                raise ValueError(f"burst must be a number of requests >= 1, got {self.burst!r}")

    @property
    def depth(self) -> float:
        """The token bucket's depth (only meaningful with a rate)."""
        if self.burst is not None:
            return self.burst
        return max(1.0, self.rate or 1.0)


@dataclass(frozen=True)
class Decision:
    """Admitted, or refused with why and how long the client should wait before retrying."""

    admitted: bool
    reason: Reason | None = None
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (HTTP allows no fraction): rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


ADMITTED = Decision(True)


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


class _Bucket:
    """A token bucket: ``rate`` tokens a second up to ``depth``; starts full."""

    def __init__(self, rate: float, depth: float) -> None:
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.stamp: float | None = None

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 when one is there now), after refilling to now."""
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now  # a clock that steps back refills nothing and takes nothing
        # (a token refilled exactly on time may read as 0.9999999999999999 of one)
        return 0.0 if self.tokens >= 1 - 1e-9 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class _Demand:
    """Requests offered per second, exponentially averaged over ``window``.

    A stream that started (or restarted after a quiet window) at ``since`` is averaged over
    the time since then only: the plain average would count the silence before it as zeros
    and take a whole window to see a burst.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self.sum = 0.0  # sum of exp(-(stamp - t) / window) / window over the offers t
        self.stamp = -math.inf
        self.since = -math.inf

    def offer(self, now: float) -> None:
        if now - self.stamp > self.window:
            self.sum, self.since = 0.0, now
        elif now > self.stamp:
            self.sum *= math.exp((self.stamp - now) / self.window)
        self.sum += 1 / self.window
        self.stamp = max(self.stamp, now)

    def rate(self, now: float, sigmas: float = 0.0) -> float:
        """The average rate, or (``sigmas`` > 0) that many standard deviations below it."""
        if self.sum == 0:
            return 0.0
        # the requests the average holds (each weighted by its age) and the span they cover
        count = self.sum * self.window * math.exp(min(0.0, self.stamp - now) / self.window)
        started = max(now - self.since, self.window / 50)
        span = self.window * (1 - math.exp(-started / self.window))
        return max(0.0, count - sigmas * math.sqrt(count)) / span

    def recent(self, now: float) -> bool:
        return now - self.stamp < self.window


class _Tenant:
    """A tenant's live figures: limits, bucket, demand and requests in the system."""

    def __init__(self, name: str, limits: Limits, window: float) -> None:
        self.name = name
        self.weight = limits.weight
        self.bucket = _Bucket(limits.rate, limits.depth) if limits.rate is not None else None
        self.demand = _Demand(window)
        self.held = 0


def water_fill(
    demands: Mapping[str, float], weights: Mapping[str, float], total: float
) -> dict[str, float]:
    """Max-min fair rates by weight: each gets its demand, up to its weighted part of what
    the smaller demands leave of ``total``."""
    order = sorted(demands, key=lambda n: demands[n] / weights[n])
    left, weight_left = total, sum(weights[n] for n in order)
    fair: dict[str, float] = {}
    for i, name in enumerate(order):
        level = left / weight_left
        if demands[name] / weights[name] > level:
            for rest in order[i:]:
                fair[rest] = weights[rest] * level
            break
        fair[name] = demands[name]
        left -= demands[name]
        weight_left -= weights[name]
    return fair


class FairShare:
    """The admission policy over a fixed set of tenants (see the module's docstring).

    Call :meth:`admit` when a request arrives and, for each admitted one, :meth:`release`
    exactly once when it has finished (answered, failed or abandoned).
    """

    def __init__(
        self,
        tenants: Mapping[str, Limits],
        capacity: int,
        throughput: float,
        *,
        reserve: float = DEFAULT_RESERVE,
        window_s: float = DEFAULT_WINDOW_S,
        sigmas: float = DEFAULT_SIGMAS,
    ) -> None:
        if not tenants:
            raise ValueError("no tenants: give at least one tenant's limits")
        if not (isinstance(reserve, int | float) and 0 <= reserve < 1):
            raise ValueError(
                f"reserve must be a fraction of the capacity in [0, 1), got {reserve!r}"
            )
        if not _positive(window_s):
            raise ValueError(f"window_s must be seconds > 0, got {window_s!r}")
        if not (isinstance(sigmas, int | float) and math.isfinite(sigmas) and sigmas >= 0):
            raise ValueError(f"sigmas must be a number of standard deviations >= 0, got {sigmas!r}")
        self._window = float(window_s)
        self._tenants = {n: _Tenant(n, lim, self._window) for n, lim in tenants.items()}
        self._reserve = float(reserve)
        self._sigmas = float(sigmas)
        self._total = 0
        self._capacity = 1
        self._pool = 1
        self._throughput = 1.0
        self.set_capacity(capacity, throughput)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pool(self) -> int:
        """Requests in the system below which everyone is admitted; above it, the reserve."""
        return self._pool

    @property
    def throughput(self) -> float:
        return self._throughput

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(self._tenants)

    def set_capacity(self, capacity: int, throughput: float) -> None:
        """The board holds ``capacity`` requests in the system (about six batches at the
        default reserve) and finishes ``throughput`` a second. Requests already admitted
        stay admitted when either shrinks."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a whole number of requests >= 1, got {capacity!r}")
        if not _positive(throughput):
            raise ValueError(f"throughput must be requests per second > 0, got {throughput!r}")
        self._capacity = capacity
        self._pool = max(1, capacity - math.floor(capacity * self._reserve))
        self._throughput = float(throughput)

    def in_system(self, tenant: str | None = None) -> int:
        """Requests admitted and not yet released: one tenant's, or everyone's."""
        return self._total if tenant is None else self._get(tenant).held

    def demand(self, tenant: str, now: float) -> float:
        """The requests per second ``tenant`` offers (within its rate limit), at ``now``."""
        return self._get(tenant).demand.rate(now)

    def fair_rates(self, now: float) -> dict[str, float]:
        """Each active tenant's max-min fair part of the throughput, at ``now``."""
        return self._fair([t for t in self._tenants.values() if self._active(t, now)], now)[0]

    def admit(self, tenant: str, now: float) -> Decision:
        """Admit a request of ``tenant`` arriving at ``now`` (seconds, any monotonic origin)."""
        me = self._get(tenant)
        if not (isinstance(now, int | float) and math.isfinite(now)):
            raise ValueError(f"now must be a finite time in seconds, got {now!r}")
        if me.bucket is not None:
            wait = me.bucket.wait(now)
            if wait > 0:
                return Decision(False, "rate", wait)
        me.demand.offer(now)
        refusal = self._past_limit(me, now)
        if refusal is not None:
            return refusal
        if me.bucket is not None:
            me.bucket.take()
        me.held += 1
        self._total += 1
        return ADMITTED

    def release(self, tenant: str) -> None:
        """One admitted request of ``tenant`` has left the system."""
        me = self._get(tenant)
        if me.held == 0:
            raise ValueError(
                f"tenant {tenant!r} has no request in the system to release: release each "
                "admitted request once, and never a refused one"
            )
        me.held -= 1
        self._total -= 1

    def _active(self, t: _Tenant, now: float) -> bool:
        return t.held > 0 or t.demand.recent(now)

    def _fair(self, active: list[_Tenant], now: float) -> tuple[dict[str, float], set[str]]:
        """Fair rates of ``active`` and the names of those past their share (surely: by
        demands taken ``sigmas`` standard deviations low)."""
        demands = {t.name: t.demand.rate(now, self._sigmas) for t in active}
        fair = water_fill(demands, {t.name: t.weight for t in active}, self._throughput)
        past = {n for n, d in demands.items() if d > fair[n] * (1 + 1e-9)}
        return fair, past

    def _past_limit(self, me: _Tenant, now: float) -> Decision | None:
        """None when ``me`` may have one more request in the system, else the refusal."""
        active = [t for t in self._tenants.values() if t is me or self._active(t, now)]
        fair, past = self._fair(active, now)
        if me.name in past and len(past) < len(active):
            # past its share: its weighted part of what the others leave of the pool
            room = self._pool - sum(t.held for t in active if t.name not in past)
            limit = room * me.weight / sum(t.weight for t in active if t.name in past)
        elif me.name in past:
            # every active tenant is past its share (one alone, say): nobody's latency to
            # keep room for, so the whole capacity is shared by weight (work-conserving)
            limit = self._capacity * me.weight / sum(t.weight for t in active)
        elif self._total < self._pool:
            return None
        else:
            limit = self._capacity * me.weight / sum(t.weight for t in active)
        if me.held < limit:
            return None
        # about how long its requests past the limit take to finish at its fair rate
        wait = (me.held - limit + 1) / fair[me.name] if fair[me.name] > 0 else 0.0
        return Decision(False, "share", min(MAX_SHARE_RETRY_S, max(MIN_SHARE_RETRY_S, wait)))

    def _get(self, tenant: str) -> _Tenant:
        found = self._tenants.get(tenant)
        if found is None:
            raise ValueError(
                f"unknown tenant {tenant!r}; this policy knows {sorted(self._tenants)}"
            )
        return found
