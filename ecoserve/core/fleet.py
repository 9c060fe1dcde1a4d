"""The fleet policy: which boards serve, which are parked, and how traffic is shared.

Sans-IO like the rest of the core. A driver (the Ray Serve ingress, the fleet simulator)
tells a policy what it saw in the last control period (:class:`FleetObservation`: the arrival
rate, each board's ongoing requests, boards that died) and carries out the answer
(:class:`FleetPlan`: boards to wake, boards to park, traffic weights over the boards that
serve). The policy keeps each board's state: serving, waking (until its wake delay has
passed and, live, until the board answers), parked (answering, at minimum clocks), off (parked
and not answering: powered off, still a wake candidate) or dead.

What a policy knows of a board is a :class:`BoardSpec`: its tuned capacity, its energy per
request at that point, and its wake delay. A board's capacity has one definition, live and in
the replay alike: the highest arrival rate it serves within the fleet's latency target
(``FleetParams.slo_s``) under its own tuner. The replay measures it on the board's model
(``BoardModel.capacity``); a live board estimates it from its own batches
(:func:`capacity_rps`). Each active board's engine keeps tuning its own
clocks and batch size; the fleet only decides how much traffic it gets.

Policies:

- :class:`AllOn` serves on every board with weights proportional to capacity (weighted
  round-robin, so a Nano is not sent an Orin's share); the baselines "all on at maximum
  clocks" and "all on with per-board tuning" differ only in the boards' own tuners.
- :class:`RayServeRule` is Ray Serve's default replica autoscaling rule (ongoing requests per
  replica against ``target_ongoing_requests``, averaged over ``look_back_period_s``; a scale
  decision is carried out only after it has held for ``upscale_delay_s`` /
  ``downscale_delay_s``), with replicas placed on boards in fleet order as Ray would: the
  rule knows nothing of energy.
- :class:`Consolidation` keeps the fewest boards, cheapest energy per request first, whose
  capacity covers the arrival rate forecast one wake delay ahead plus headroom; parks only
  after the lower need has held for ``park_after_s`` and the rate fell below the hysteresis
  band, then every board above that need at once. A board it wakes is sent a share that
  ramps up over ``wake_ramp_s`` (:meth:`FleetPolicy.weights`).
- :class:`Oracle` knows the future rate: it wakes exactly one wake delay ahead of need and
  parks at once, a bound on what consolidation can reach.

Whatever the policy, a serving board is parked only once the boards it keeps serve (none is
still waking) and, for a policy that sizes by capacity, cover the rate with its headroom
(:meth:`FleetPolicy.can_release`): a waking board is not capacity yet, and live a booting
board answers nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class FleetParams:
    """The fleet's one table of policy settings, the Ray ingress's and the replay's alike.

    Defaults and where they come from: ``headroom`` 0.5, what kept the direct replay's p99
    within its target (BENCHMARKS.md, "How faithful the fleet replay is"); ``hysteresis``
    0.15 and ``park_after_s`` 60 s, ``trend_s`` 30 s, the published fleet replay's;
    ``ray_target_ongoing`` 2, Ray Serve's own default; ``slo_s`` 0.25 s, the published fleet
    replay's p99 target, which defines a board's capacity (see :func:`capacity_rps`) and is
    each board's own tuner's latency target; ``wake_ramp_s`` 60 s, over which a woken
    board's share rises to its capacity's (consolidation; the oracle, a bound, sends a board
    its full share from the start): long enough that
    its engine's first tuning window (416 requests) closes before the share passes half.
    """

    headroom: float = 0.5
    hysteresis: float = 0.15
    park_after_s: float = 60.0
    trend_s: float = 30.0
    ray_target_ongoing: float = 2.0
    slo_s: float = 0.25
    wake_ramp_s: float = 60.0

    def __post_init__(self) -> None:
        if min(self.headroom, self.hysteresis, self.park_after_s, self.wake_ramp_s) < 0:
            raise ValueError("headroom, hysteresis, park_after_s and wake_ramp_s must be >= 0")
        if not (self.trend_s > 0 and self.ray_target_ongoing > 0 and self.slo_s > 0):
            raise ValueError("trend_s, ray_target_ongoing and slo_s must be > 0")


DEFAULTS = FleetParams()


class BoardState(str, Enum):
    SERVING = "serving"
    WAKING = "waking"
    PARKED = "parked"
    OFF = "off"
    DEAD = "dead"


#: States a board can be woken from.
ASLEEP = frozenset({BoardState.PARKED, BoardState.OFF})
#: The least share of its capacity a board just woken is counted with (see
#: :meth:`FleetPolicy.weights`).
RAMP_FLOOR = 0.1
#: States of a board that is up or on its way up.
AWAKE = frozenset({BoardState.SERVING, BoardState.WAKING})


@dataclass(frozen=True)
class BoardSpec:
    """What the fleet policy knows of one board."""

    name: str
    kind: str
    capacity_rps: float
    joules_per_request: float
    wake_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.capacity_rps > 0 and math.isfinite(self.capacity_rps)):
            raise ValueError(f"board {self.name!r}: capacity must be > 0 req/s")
        if not (self.joules_per_request >= 0 and math.isfinite(self.joules_per_request)):
            raise ValueError(f"board {self.name!r}: energy per request must be >= 0 J")
        if not (self.wake_s >= 0 and math.isfinite(self.wake_s)):
            raise ValueError(f"board {self.name!r}: wake delay must be >= 0 s")


@dataclass(frozen=True)
class FleetObservation:
    """What the driver saw over the control period that ends at ``now``.

    ``dead`` are boards that did not answer; a parked one among them is off, not dead.
    ``booting`` are woken boards the driver is still waiting on: they stay waking whatever
    their wake delay said, since a board serves only once it answers.
    """

    now: float
    rate_rps: float
    ongoing: Mapping[str, float] = field(default_factory=dict)
    dead: frozenset[str] = frozenset()
    booting: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FleetPlan:
    """What to do now: boards to wake and park, and traffic shares over serving boards."""

    weights: dict[str, float]
    wake: tuple[str, ...] = ()
    park: tuple[str, ...] = ()

    @property
    def serving(self) -> tuple[str, ...]:
        return tuple(name for name, w in self.weights.items() if w > 0)


class FleetPolicy(ABC):
    """Board states and the wake/park bookkeeping shared by every policy.

    A subclass answers only :meth:`target`: the set of boards that should be awake now.
    """

    name = "policy"
    #: Spare capacity, as a share of the rate, that the boards left serving must have before
    #: a serving board is parked; None for a rule that does not size by capacity.
    cover_headroom: float | None = 0.0

    def __init__(self, boards: Sequence[BoardSpec], *, start_awake: bool = True) -> None:
        if not boards:
            raise ValueError("a fleet needs at least one board")
        names = [b.name for b in boards]
        if len(set(names)) != len(names):
            raise ValueError(f"board names must be unique, got {names}")
        self.boards: dict[str, BoardSpec] = {b.name: b for b in boards}
        self.state: dict[str, BoardState] = {
            b.name: BoardState.SERVING if start_awake else BoardState.PARKED for b in boards
        }
        self.ready_at: dict[str, float] = {}
        #: When each woken board began serving (boards serving from the start are absent).
        self.serving_since: dict[str, float] = {}
        self.wake_ramp_s = 0.0
        #: The arrival rate of the last observation (where a ramp must spill over).
        self.last_rate = 0.0

    # -- what subclasses decide ---------------------------------------------------------------
    @abstractmethod
    def target(self, obs: FleetObservation) -> set[str]:
        """Boards that should be awake (serving or waking) after this period."""

    def weights(self, serving: Sequence[str], now: float | None = None) -> dict[str, float]:
        """Traffic shares over serving boards: proportional to capacity by default.

        Given ``now``, a board woken less than :attr:`wake_ramp_s` ago counts with the part of
        its capacity the ramp has reached (at least :data:`RAMP_FLOOR`): its engine resumes
        a tuning state from another load, and sent its whole share at once it can queue for
        seconds before its tuner follows; the other boards carry the rest meanwhile. When
        the ramped capacities do not cover the last rate seen, the rate above them goes to
        the ramping boards' unramped capacity: no board is pushed past its own capacity to
        spare one that is ramping.
        """
        full = {n: self.boards[n].capacity_rps for n in serving}
        ramped = {n: c * self._ramp(n, now) for n, c in full.items()}
        total, ramped_total = sum(full.values()), sum(ramped.values())
        rate = self.last_rate
        if total <= 0:
            return {}
        if ramped_total >= total or rate >= total:
            return {n: c / total for n, c in full.items()}
        if rate <= ramped_total:
            return {n: c / ramped_total for n, c in ramped.items()}
        spill = (rate - ramped_total) / (total - ramped_total)
        return {n: (ramped[n] + spill * (full[n] - ramped[n])) / rate for n in serving}

    def _ramp(self, name: str, now: float | None) -> float:
        since = self.serving_since.get(name)
        if now is None or since is None or self.wake_ramp_s <= 0:
            return 1.0
        return min(1.0, max(RAMP_FLOOR, (now - since) / self.wake_ramp_s))

    # -- the decision -------------------------------------------------------------------------
    def decide(self, obs: FleetObservation) -> FleetPlan:
        """Take in one control period's observation; answer the plan to carry out."""
        self.last_rate = obs.rate_rps
        for name in obs.dead:
            st = self.state.get(name)
            if st is None or name in obs.booting:
                continue
            # a parked board that does not answer was powered off: it can still be woken
            self.state[name] = BoardState.OFF if st in ASLEEP else BoardState.DEAD
            if st not in ASLEEP:
                self.ready_at.pop(name, None)
        for name, at in list(self.ready_at.items()):
            if obs.now >= at and name not in obs.booting:
                self.state[name] = BoardState.SERVING
                self.serving_since[name] = obs.now
                del self.ready_at[name]
        want = self.target(obs)
        wake: list[str] = []
        for name in self.boards:
            if name in want and self.state[name] in ASLEEP:
                wake.append(name)
                self._start_wake(name, obs.now)
        leaving = [n for n in self.boards if n not in want and self.state[n] in AWAKE]
        # a serving board stays until the boards meant to replace it serve and carry the rate
        release_serving = self.can_release(want, obs.rate_rps)
        park = [n for n in leaving if self.state[n] is BoardState.WAKING or release_serving]
        for name in park:
            self.state[name] = BoardState.PARKED
            self.ready_at.pop(name, None)
        if any(self.state[n] is BoardState.SERVING for n in park):
            self.parked_serving(obs.now)
        serving = self.serving()
        if not serving:  # nothing is up yet: send traffic where it will be served soonest
            waking = [n for n in self.boards if self.state[n] is BoardState.WAKING]
            serving = sorted(waking, key=lambda n: self.ready_at.get(n, obs.now))[:1]
        return FleetPlan(self.weights(serving, obs.now), tuple(wake), tuple(park))

    def can_release(self, want: set[str], rate_rps: float) -> bool:
        """Whether serving boards outside ``want`` may be parked now.

        Only once every live board of ``want`` serves (none is still waking: live, a board
        booting answers nothing) and, for a policy that sizes by capacity
        (:attr:`cover_headroom` not None), their capacity covers ``rate_rps`` with that
        headroom. Otherwise the fleet could be left with no board serving while its
        replacements boot.
        """
        stay = [n for n in want if self.state.get(n, BoardState.DEAD) is not BoardState.DEAD]
        if not stay or any(self.state[n] is not BoardState.SERVING for n in stay):
            return False
        if self.cover_headroom is None:
            return True
        capacity = sum(self.boards[n].capacity_rps for n in stay)
        return capacity >= rate_rps * (1.0 + self.cover_headroom)

    def parked_serving(self, now: float) -> None:
        """Called when serving boards were parked at ``now`` (a policy's hold may restart)."""

    def _start_wake(self, name: str, now: float) -> None:
        """Waking, or serving at once when the board answers and needs no delay."""
        wake_s = self.boards[name].wake_s
        if wake_s > 0 or self.state[name] is BoardState.OFF:  # an off board must boot first
            self.state[name] = BoardState.WAKING
            self.ready_at[name] = now + wake_s
        else:
            self.state[name] = BoardState.SERVING
            self.serving_since[name] = now

    def wake_next(self, now: float) -> str | None:
        """Wake the cheapest sleeping board now, outside a period (nothing else is serving).

        The driver calls this when a request finds no serving board; None when no board is
        left to wake.
        """
        asleep = [self.boards[n] for n, st in self.state.items() if st in ASLEEP]
        if not asleep:
            return None
        name = cheapest_first(asleep)[0].name
        self._start_wake(name, now)
        return name

    def woken(self, name: str, now: float | None = None) -> None:
        """The driver saw a waking board answer and unparked it: it serves from ``now``."""
        if self.state.get(name) is BoardState.WAKING:
            self.state[name] = BoardState.SERVING
            self.ready_at.pop(name, None)
            if now is not None:
                self.serving_since[name] = now

    def fail(self, name: str) -> None:
        """A board that did not come up (its boot timed out): dead until it answers again."""
        if name in self.state:
            self.state[name] = BoardState.DEAD
            self.ready_at.pop(name, None)

    def revive(self, name: str) -> None:
        """A board taken out as dead, or off, answers again: it is parked, to be woken."""
        if self.state.get(name) in (BoardState.DEAD, BoardState.OFF):
            self.state[name] = BoardState.PARKED

    def update(self, spec: BoardSpec) -> None:
        """New figures for a board (its tuned capacity and energy, as measured while serving)."""
        if spec.name not in self.boards:
            raise KeyError(f"no board {spec.name!r} in this fleet")
        self.boards[spec.name] = spec

    # -- views --------------------------------------------------------------------------------
    def alive(self) -> list[str]:
        return [n for n, st in self.state.items() if st is not BoardState.DEAD]

    def serving(self) -> list[str]:
        return [n for n, st in self.state.items() if st is BoardState.SERVING]

    def awake(self) -> list[str]:
        return [n for n, st in self.state.items() if st in (BoardState.SERVING, BoardState.WAKING)]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in BoardState}
        for st in self.state.values():
            out[st.value] += 1
        return out


def parse_kind_counts(text: str, what: str, example: str) -> list[tuple[str, int]]:
    """``"orin:20,nano:2"`` as ``[("orin", 20), ("nano", 2)]``, in the order given.

    A kind without a count stands for one board; ``what`` and ``example`` name the setting
    and a valid value in the error.
    """
    out: list[tuple[str, int]] = []
    for part in text.split(","):
        kind, sep, n = part.strip().partition(":")
        if not kind:
            continue
        try:
            count = int(n) if sep else 1
        except ValueError:
            raise ValueError(f"{what}: {part!r} is not KIND:COUNT (e.g. {example})") from None
        if count < 1:
            raise ValueError(f"{what}: {part!r}: the count must be >= 1")
        out.append((kind, count))
    return out


def cheapest_first(boards: Iterable[BoardSpec]) -> list[BoardSpec]:
    """Boards in order of energy per request at their tuned point, then larger capacity."""
    return sorted(boards, key=lambda b: (b.joules_per_request, -b.capacity_rps, b.name))


def fewest_covering(order: Sequence[BoardSpec], rate_rps: float) -> list[str]:
    """The shortest prefix of ``order`` whose capacity covers ``rate_rps`` (all if none does).

    At least one board is always kept, so a request arriving after a quiet spell is served
    without waiting for a wake.
    """
    chosen: list[str] = []
    total = 0.0
    for b in order:
        if chosen and total >= rate_rps:
            break
        chosen.append(b.name)
        total += b.capacity_rps
    return chosen


class AllOn(FleetPolicy):
    """Every live board serves, traffic shared by capacity (weighted round-robin)."""

    name = "all-on"

    def target(self, obs: FleetObservation) -> set[str]:
        return set(self.alive())


class Consolidation(FleetPolicy):
    """The fewest cheapest boards that cover the rate forecast, with hysteresis.

    ``headroom`` is the spare capacity kept above the forecast (bursts inside a period);
    the forecast extends the rate's rise over the last ``trend_s`` by the longest wake delay
    plus one period, so boards are woken before the rate reaches what the awake ones carry.
    Boards are parked only when the need, computed at ``(1 + headroom + hysteresis)`` times
    the rate, has stayed below the awake set for ``park_after_s``; then all boards above it
    are parked together and the hold starts again. Defaults: :class:`FleetParams`.

    With ``slo_s`` given, the requests in flight count as demand too (Little's law): ``L``
    requests in flight are a rate of at least ``L / slo_s`` while each is to be answered
    within ``slo_s``. In steady state (latency under the target) that is below the arrival
    rate and changes nothing; while a backlog drains, the arrival rate can fall to zero and
    boards would otherwise be parked (and woken again) under the requests still waiting.
    """

    name = "consolidation"

    def __init__(
        self,
        boards: Sequence[BoardSpec],
        *,
        headroom: float = DEFAULTS.headroom,
        hysteresis: float = DEFAULTS.hysteresis,
        park_after_s: float = DEFAULTS.park_after_s,
        trend_s: float = DEFAULTS.trend_s,
        period_s: float = 1.0,
        wake_ramp_s: float = 0.0,
        slo_s: float | None = None,
        start_awake: bool = True,
    ) -> None:
        super().__init__(boards, start_awake=start_awake)
        if (
            min(headroom, hysteresis, park_after_s, wake_ramp_s) < 0
            or trend_s <= 0
            or period_s <= 0
            or (slo_s is not None and not slo_s > 0)
        ):
            raise ValueError(
                "headroom, hysteresis, park_after_s, wake_ramp_s must be >= 0; trend_s, "
                "period_s and slo_s > 0"
            )
        self.slo_s = slo_s
        self.wake_ramp_s = wake_ramp_s
        self.headroom = headroom
        self.cover_headroom = headroom
        self.hysteresis = hysteresis
        self.park_after_s = park_after_s
        self.trend_s = trend_s
        self.period_s = period_s
        self._history: deque[tuple[float, float]] = deque()
        self._low_since: float | None = None

    def forecast(self, obs: FleetObservation) -> float:
        """The rate one wake delay (plus a period) ahead, if the recent rise continues."""
        hist = self._history
        hist.append((obs.now, obs.rate_rps))
        while hist and hist[0][0] < obs.now - self.trend_s:
            hist.popleft()
        t0, r0 = hist[0]
        slope = (obs.rate_rps - r0) / (obs.now - t0) if obs.now > t0 else 0.0
        lead = max((b.wake_s for b in self.boards.values()), default=0.0) + self.period_s
        return obs.rate_rps + max(0.0, slope) * lead

    def backlog_rps(self, obs: FleetObservation) -> float:
        """The rate the requests in flight stand for (``L / slo_s``); 0 without ``slo_s``."""
        if self.slo_s is None:
            return 0.0
        return sum(max(0.0, v) for v in obs.ongoing.values()) / self.slo_s

    def target(self, obs: FleetObservation) -> set[str]:
        order = cheapest_first(self.boards[n] for n in self.alive())
        backlog = self.backlog_rps(obs)
        demand = max(self.forecast(obs), backlog) * (1.0 + self.headroom)
        need = fewest_covering(order, demand)
        awake = self.awake()
        # Once the boards awake cover the demand, no sleeping board is woken to take a busy
        # one's place: live, boards' measured energy drifts, and each swap would cost a boot.
        # (While the boards awake are the cheapest ones, as in a replay, this changes nothing.)
        up = [b for b in order if b.name in set(awake)]
        covered = sum(b.capacity_rps for b in up) >= demand
        if not covered or not up:
            self._low_since = None
            return set(need) | set(awake)
        need = fewest_covering(up, demand)
        if len(need) >= len(awake):
            self._low_since = None
            return set(awake)
        # fewer boards would do: park only after the lower need (with hysteresis) has held
        low = max(obs.rate_rps, backlog) * (1.0 + self.headroom + self.hysteresis)
        keep = fewest_covering(up, low)
        if len(keep) >= len(awake):
            self._low_since = None
            return set(awake)
        if self._low_since is None:
            self._low_since = obs.now
        if obs.now - self._low_since < self.park_after_s:
            return set(awake)
        # the hold has passed: every board above the kept set is parked at once (once the
        # kept boards serve: see FleetPolicy.can_release), and the next step down waits for
        # a new hold
        return set(keep) | (set(need) & set(awake))

    def parked_serving(self, now: float) -> None:
        self._low_since = now


class RayServeRule(FleetPolicy):
    """Ray Serve's default autoscaling rule, replicas on boards in fleet order.

    Desired replicas = ceil(mean total ongoing requests over ``look_back_period_s`` /
    ``target_ongoing_requests``), within ``[min_replicas, max_replicas]``; an upscale
    (downscale) is carried out once the desired count has stayed above (below) the current
    one for ``upscale_delay_s`` (``downscale_delay_s``). Defaults are Ray Serve's.
    """

    name = "ray-autoscale"
    cover_headroom = None  # Ray's rule counts ongoing requests, not capacity

    def __init__(
        self,
        boards: Sequence[BoardSpec],
        *,
        target_ongoing_requests: float = DEFAULTS.ray_target_ongoing,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        upscale_delay_s: float = 30.0,
        downscale_delay_s: float = 600.0,
        look_back_period_s: float = 30.0,
        start_awake: bool = True,
    ) -> None:
        super().__init__(boards, start_awake=start_awake)
        if not target_ongoing_requests > 0:
            raise ValueError("target_ongoing_requests must be > 0")
        top = len(boards) if max_replicas is None else max_replicas
        if not 1 <= min_replicas <= top:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {min_replicas}, {top}")
        self.target_ongoing = target_ongoing_requests
        self.min_replicas = min_replicas
        self.max_replicas = top
        self.upscale_delay_s = upscale_delay_s
        self.downscale_delay_s = downscale_delay_s
        self.look_back_s = look_back_period_s
        self._samples: deque[tuple[float, float]] = deque()
        self._up_since: float | None = None
        self._down_since: float | None = None
        self.replicas = len(boards) if start_awake else min_replicas

    def desired(self, obs: FleetObservation) -> int:
        total = sum(obs.ongoing.get(n, 0.0) for n in self.awake())
        self._samples.append((obs.now, total))
        while self._samples and self._samples[0][0] < obs.now - self.look_back_s:
            self._samples.popleft()
        mean = sum(v for _, v in self._samples) / len(self._samples)
        want = math.ceil(mean / self.target_ongoing - 1e-9)
        return max(self.min_replicas, min(self.max_replicas, want))

    def target(self, obs: FleetObservation) -> set[str]:
        want = self.desired(obs)
        if want > self.replicas:
            self._down_since = None
            self._up_since = obs.now if self._up_since is None else self._up_since
            if obs.now - self._up_since >= self.upscale_delay_s:
                self.replicas, self._up_since = want, None
        elif want < self.replicas:
            self._up_since = None
            self._down_since = obs.now if self._down_since is None else self._down_since
            if obs.now - self._down_since >= self.downscale_delay_s:
                self.replicas, self._down_since = want, None
        else:
            self._up_since = self._down_since = None
        alive = self.alive()
        up = set(self.awake())
        # keep running replicas where they are; new ones go to the next boards in fleet order
        keep = [n for n in alive if n in up][: self.replicas]
        kept = set(keep)
        spare = [n for n in alive if n not in kept]
        return kept | set(spare[: max(0, self.replicas - len(keep))])


class Oracle(FleetPolicy):
    """Knows the rate ahead: wakes one wake delay before need, parks as soon as it can.

    ``peak_ahead(t0, t1)`` is the highest arrival rate in ``[t0, t1]``; the driver that owns
    the trace provides it.
    """

    name = "oracle"

    def __init__(
        self,
        boards: Sequence[BoardSpec],
        peak_ahead: Callable[[float, float], float],
        *,
        headroom: float = 0.0,
        period_s: float = 1.0,
        start_awake: bool = True,
    ) -> None:
        super().__init__(boards, start_awake=start_awake)
        self.peak_ahead = peak_ahead
        self.headroom = headroom
        self.cover_headroom = headroom
        self.period_s = period_s

    def target(self, obs: FleetObservation) -> set[str]:
        order = cheapest_first(self.boards[n] for n in self.alive())
        lead = max((b.wake_s for b in self.boards.values()), default=0.0) + self.period_s
        peak = self.peak_ahead(obs.now, obs.now + lead)
        return set(fewest_covering(order, peak * (1.0 + self.headroom)))


class WeightedRoundRobin:
    """Spreads requests over boards in proportion to weights, evenly interleaved.

    Smooth weighted round-robin: every pick adds each board's weight to its credit, takes the
    board with the most credit and charges it the total. Deterministic, and over any window
    each board's share follows its weight to within one request.
    """

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self._credit: dict[str, float] = {}

    def set(self, weights: Mapping[str, float]) -> None:
        self.weights = {n: w for n, w in weights.items() if w > 0}
        self._credit = {n: self._credit.get(n, 0.0) for n in self.weights}

    def pick(self, exclude: Iterable[str] = ()) -> str | None:
        """The next board, skipping ``exclude``; None when no board is left."""
        skip = set(exclude)
        choices = {n: w for n, w in self.weights.items() if n not in skip}
        if not choices:
            return None
        total = sum(choices.values())
        for n, w in choices.items():
            self._credit[n] += w
        best = max(choices, key=lambda n: self._credit[n])
        self._credit[best] -= total
        return best


#: The policies by name, as the Ray ingress and the replay both call them.
POLICIES = ("consolidation", "all-on", "ray-autoscale", "oracle")
#: Old policy names and what they are now called.
RENAMED_POLICIES = {"ray-rule": "ray-autoscale"}


def policy_name(name: str) -> str:
    """The current name of ``name`` (an old one is renamed); ValueError for an unknown one."""
    name = RENAMED_POLICIES.get(name, name)
    if name not in POLICIES:
        raise ValueError(f"unknown fleet policy {name!r}; use one of {', '.join(POLICIES)}")
    return name


def make_policy(
    name: str,
    specs: Sequence[BoardSpec],
    params: FleetParams = DEFAULTS,
    *,
    period_s: float,
    peak_ahead: Callable[[float, float], float] | None = None,
    start_awake: bool = True,
) -> FleetPolicy:
    """The one policy factory: ``name`` (see :data:`POLICIES`) over ``specs`` with ``params``.

    The oracle needs ``peak_ahead`` (only a replay, which owns the trace, can give it).
    """
    name = policy_name(name)
    if name == "all-on":
        return AllOn(specs, start_awake=start_awake)
    if name == "ray-autoscale":
        return RayServeRule(
            specs, target_ongoing_requests=params.ray_target_ongoing, start_awake=start_awake
        )
    if name == "oracle":
        if peak_ahead is None:
            raise ValueError("the oracle policy needs the rate ahead: only a replay has it")
        return Oracle(
            specs,
            peak_ahead,
            headroom=params.headroom,
            period_s=period_s,
            start_awake=start_awake,
        )
    return Consolidation(
        specs,
        headroom=params.headroom,
        hysteresis=params.hysteresis,
        park_after_s=params.park_after_s,
        trend_s=params.trend_s,
        period_s=period_s,
        wake_ramp_s=params.wake_ramp_s,
        slo_s=params.slo_s,
        start_awake=start_awake,
    )


def batch_time_line(batches: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """``(t0, t1)`` of ``batch_s = t0 + t1 * size``, least squares over ``(size, seconds)``.

    With one batch size seen, a line through the origin (every size costs that size's time
    per item: a larger batch's saving is not credited). None without any batch.
    """
    points = [(float(n), float(t)) for n, t in batches if n > 0 and t > 0 and math.isfinite(t)]
    if not points:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    sxx = sum((n - mean_n) ** 2 for n, _ in points)
    if sxx > 1e-9 * mean_n**2:
        t1 = sum((n - mean_n) * (t - mean_t) for n, t in points) / sxx
        t0 = mean_t - t1 * mean_n
        if t0 >= 0 and t1 > 0:
            return t0, t1
    return 0.0, mean_t / mean_n  # one size, or a fit without a sense: time per item


def capacity_rps(
    line: tuple[float, float], max_batch: int, params: FleetParams = DEFAULTS
) -> float:
    """A live board's capacity: the highest arrival rate it serves within ``params.slo_s``.

    The one capacity definition (see the module doc), estimated from the board's own batch
    times, ``line`` = ``(t0, t1)`` of :func:`batch_time_line` over its recent batches at the
    configurations its tuner chose (so their clocks are in the times). At the rate
    ``b / t(b)`` a batch of ``b`` gathers while the one before runs, so a request waits up to
    one batch time and then runs in the next: ``2 t(b)``. The capacity is ``b / t(b)`` for
    the largest ``b`` up to ``max_batch`` with ``2 t(b)`` within the target (a larger batch
    serves more per second); 0.0 when not even one item fits.
    """
    t0, t1 = line
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not (t0 >= 0 and t1 >= 0 and t0 + t1 > 0 and math.isfinite(t0 + t1)):
        raise ValueError(f"batch time line must have t0, t1 >= 0 and finite, got {line}")
    best = 0.0
    for b in range(1, max_batch + 1):
        t = t0 + t1 * b
        if 2.0 * t <= params.slo_s:
            best = max(best, b / t)
    return best
