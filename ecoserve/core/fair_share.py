"""Admission for a board shared by tenants: weighted fair shares when saturated, rate limits.

Sans-IO: the policy is told the time (``now``) and what happened (a request admitted, a
request finished); the server and the simulator keep the clock. It counts the requests *in
the system* (admitted, not yet finished), each tenant's and in all (``N``), and keeps each
tenant's admitted rate, averaged over ``window_s``.

The board is saturated when ``N`` reaches the pool ``P``, the part of the capacity ``C``
not held in reserve (the engine sets C from its batch size, :meth:`FairShare.set_capacity`).

- *Work-conserving*: while ``N < P`` everyone is admitted.
- *Saturated*: a tenant is admitted only while it is *within its share*: its admitted rate
  per weight is below that of another active tenant (one with a request in the system or
  admitted within the window) and it holds fewer than its weighted part of C (a cap on a
  sudden burst). A tenant within its share is not refused for share however much the others
  send; the heaviest per weight is refused and retries later. Tenants that all send too
  much thus converge to rates in proportion to their weights (max-min fairness).
- *The reserve* ``C - P``: the heaviest tenant, or one alone, is admitted only below
  ``P``, so the places above P stay free for the tenants within their share. Why: the queue
  is FIFO, and a burst that filled all of C would stand ahead of every request of a
  well-behaved tenant, whose latency would grow by one batch time per batch of the burst.
- *Rate limits*: an optional token bucket per tenant (``rate`` per second, ``burst``
  deep) refuses a request when no token is left, whatever the load, with the time until
  the next token as ``retry_after_s``. A token is spent only on admission.

Choosing P is a trade: two batches (one running, one forming) keep a lone burst's board
fully busy, but put a whole batch of the burst between a within-share request and the
board; with 1.5 batches the within-share tenant barely notices the burst and the burst gets
somewhat less than the rest of the board. The default reserve of three quarters makes
``C = 6 * batch size`` a pool of 1.5 batches, leaving the within-share tenants room for
their own bursts.

Why rates, not counts, decide who is within its share: counts in the system swing with
every burst of arrivals (a tenant sending at half its share holds, for a moment, as many
requests as one sending at five times its share), so a count rule either refuses the
well-behaved tenant's bursts or lets the heavy one hold as many places as the light one
may need. Averaged rates tell the two apart; the counts only bound the queue.

``N`` is a soft bound: it stays below ``P + C`` plus one request per tenant, because
refusing a tenant within its share is exactly what isolation must not do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Reason = Literal["share", "rate"]

#: The fraction of the capacity kept for tenants within their share.
DEFAULT_RESERVE = 0.75
#: The span over which admitted rates are compared: long enough to average a Poisson
#: stream's bursts, short enough to follow a tenant that starts or stops.
DEFAULT_WINDOW_S = 1.0
#: The least wait a share refusal suggests: places free up only as batches finish, and a
#: client told to come back sooner would mostly be refused again.
MIN_SHARE_RETRY_S = 1.0


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
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class _Tenant:
    """A tenant's live figures: requests in the system, admitted rate, last admission."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bucket = _Bucket(limits.rate, limits.depth) if limits.rate is not None else None
        self.held = 0
        self.rate = 0.0  # exponentially averaged admissions per second, as of ``stamp``
        self.stamp = -math.inf

    def rate_at(self, now: float, window: float) -> float:
        if now <= self.stamp:
            return self.rate
        return self.rate * math.exp((self.stamp - now) / window)

    def active(self, now: float, window: float) -> bool:
        return self.held > 0 or now - self.stamp < window


class FairShare:
    """The admission policy over a fixed set of tenants (see the module's docstring).

    Call :meth:`admit` when a request arrives and, for each admitted one, :meth:`release`
    exactly once when it has finished (answered, failed or abandoned).
    """

    def __init__(
        self,
        tenants: Mapping[str, Limits],
        capacity: int,
        *,
        reserve: float = DEFAULT_RESERVE,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        if not tenants:
            raise ValueError("no tenants: give at least one tenant's limits")
        if not (isinstance(reserve, int | float) and 0 <= reserve < 1):
            raise ValueError(
                f"reserve must be a fraction of the capacity in [0, 1), got {reserve!r}"
            )
        if not _positive(window_s):
            raise ValueError(f"window_s must be seconds > 0, got {window_s!r}")
        self._tenants = {name: _Tenant(limits) for name, limits in tenants.items()}
        self._reserve = float(reserve)
        self._window = float(window_s)
        self._total = 0
        self._capacity = 1
        self._pool = 1
        self.set_capacity(capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def pool(self) -> int:
        """Requests in the system below which everyone is admitted; above it, the reserve."""
        return self._pool

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(self._tenants)

    def set_capacity(self, capacity: int) -> None:
        """Saturate at ``capacity`` requests in the system (about six batches at the
        default reserve). Requests already admitted stay admitted when it shrinks."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a whole number of requests >= 1, got {capacity!r}")
        self._capacity = capacity
        self._pool = max(1, capacity - math.floor(capacity * self._reserve))

    def in_system(self, tenant: str | None = None) -> int:
        """Requests admitted and not yet released: one tenant's, or everyone's."""
        return self._total if tenant is None else self._get(tenant).held

    def rate(self, tenant: str, now: float) -> float:
        """The tenant's admitted requests per second, averaged over the window, at ``now``."""
        return self._get(tenant).rate_at(now, self._window)

    def admit(self, tenant: str, now: float) -> Decision:
        """Admit a request of ``tenant`` arriving at ``now`` (seconds, any monotonic origin)."""
        me = self._get(tenant)
        if not (isinstance(now, int | float) and math.isfinite(now)):
            raise ValueError(f"now must be a finite time in seconds, got {now!r}")
        if me.bucket is not None:
            wait = me.bucket.wait(now)
            if wait > 0:
                return Decision(False, "rate", wait)
        if self._total >= self._pool:
            refusal = self._past_share(me, now)
            if refusal is not None:
                return refusal
        if me.bucket is not None:
            me.bucket.take()
        me.rate = me.rate_at(now, self._window) + 1 / self._window
        me.stamp = max(me.stamp, now)
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

    def _past_share(self, me: _Tenant, now: float) -> Decision | None:
        """At saturation: None when ``me`` is within its share, else the refusal."""
        window = self._window
        active = [t for t in self._tenants.values() if t is me or t.active(now, window)]
        if len(active) == 1:  # alone: the reserve is for tenants that share the board
            return Decision(False, "share", MIN_SHARE_RETRY_S)
        weights = sum(t.limits.weight for t in active)
        mine = me.rate_at(now, window) / me.limits.weight
        heaviest = max(t.rate_at(now, window) / t.limits.weight for t in active if t is not me)
        if mine < heaviest and me.held < self._capacity * me.limits.weight / weights:
            return None
        # until its averaged rate has decayed to the heaviest other's (counts free up sooner)
        wait = window * math.log(mine / heaviest) if mine > heaviest > 0 else 0.0
        return Decision(False, "share", max(MIN_SHARE_RETRY_S, wait))

    def _get(self, tenant: str) -> _Tenant:
        found = self._tenants.get(tenant)
        if found is None:
            raise ValueError(
                f"unknown tenant {tenant!r}; this policy knows {sorted(self._tenants)}"
            )
        return found
