"""The paper's EcoGD: hill climbing over knob indices, with nothing added.

It keeps a centre (every knob's maximum at first, the baseline) and measures the centre's
axis neighbours (±1 on one knob, ``2 * dims`` at most). Once all are known it estimates the
four diagonal neighbours in the CPU–GPU plane additively, ``cost(c) + Δcpu + Δgpu``, because
the two frequencies act on different parts of a batch's time and energy; diagonals that
involve any other knob interact too strongly to estimate. The centre moves to the cheapest of
itself, its axis neighbours and those diagonals. Measurements expire after a memory of
windows, so a converged centre keeps re-measuring its neighbourhood and follows an optimum
that drifts with the load; when the centre stays best ``max_loops`` decisions in a row it
jumps to a random Moore neighbour off the axes, to escape a local minimum.

The additions of ``tuners.ecogd`` plug in at a few consultation points (the ``_`` methods
under "consultation points" below); here each is the paper's neutral answer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from ecoserve.core.knobs import CPU, GPU, Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost

#: A measurement: (cost, window it was measured in, windows it stays fresh).
Measurement = tuple[float, int, int]

#: Draws of a jump that may land on configurations ``_unsafe`` rules out before it stays.
MAX_UNSAFE_DRAWS = 32


def memory_of(space: SearchSpace, memory_limit: int, scale: float = 1.0) -> int:
    """Windows a measurement lives: ``memory_limit``, raised to ``2 * dims + 1`` (else the
    centre and its neighbours could never all be fresh at once), times ``scale``."""
    return round(max(memory_limit, 2 * space.dims + 1) * scale)


class Climber(Tuner):
    """Hill climbing on the axis neighbours plus estimated CPU–GPU diagonals.

    ``memory_limit``: a measurement older than this many windows is stale (re-measured
    before use) and dropped; ``memory_scale`` stretches it (for a caller that tells load
    changes apart by other means).
    ``max_loops``: decisions in a row, each with new measurements, in which the centre stays
    best before it jumps.
    ``rate_change_threshold``: when set, a relative change of ``metrics['arrival_rate']``
    larger than this (against the rate seen when the centre was set) forgets every
    measurement.
    ``adaptive_step``: moves grow to 2, 3, ... ``max_step`` indices along a direction while
    successive moves in that direction each improve the cost by more than ``step_growth``.
    """

    name = "ecogd"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        memory_limit: int = 20,
        max_loops: int = 10,
        rate_change_threshold: float | None = None,
        adaptive_step: bool = False,
        max_step: int = 4,
        step_growth: float = 0.1,
        memory_scale: float = 1.0,
    ) -> None:
        super().__init__(space, seed)
        if memory_limit < 1:
            raise ValueError(f"memory_limit must be at least 1 window, got {memory_limit}")
        if max_loops < 1:
            raise ValueError(f"max_loops must be at least 1, got {max_loops}")
        if rate_change_threshold is not None and rate_change_threshold <= 0:
            raise ValueError(f"rate_change_threshold must be positive, got {rate_change_threshold}")
        if max_step < 1:
            raise ValueError(f"max_step must be at least 1, got {max_step}")
        self.memory_limit = int(memory_limit)
        self.max_loops = int(max_loops)
        self.rate_change_threshold = rate_change_threshold
        self.adaptive_step = bool(adaptive_step)
        self.max_step = int(max_step)
        self.step_growth = float(step_growth)
        self._memory = memory_of(space, self.memory_limit, memory_scale)
        self._plane = (
            (space.axis(CPU), space.axis(GPU)) if space.has(CPU) and space.has(GPU) else None
        )
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._centre: Config = self.space.maximum()
        self._history: dict[Config, Measurement] = {}
        self._window = 0
        self._loops = 0
        self._news = False  # a neighbour was (re)measured since the last decision
        self._centre_rate: float | None = None
        self._last_rate: float | None = None
        self._step = 1
        self._last_dir: Config | None = None
        self._moves = 0
        self._jumps = 0
        # the recent windows' arrival rates (a warm-up flood left out): the recent peak
        self._rates: deque[float] = deque(maxlen=self._memory)

    @property
    def centre(self) -> Config:
        return self._centre

    # -- ask/tell -------------------------------------------------------------------------
    def ask(self) -> Config:
        # A pass returns, or moves the centre to an unmeasured configuration (returned by the
        # next pass) or to a measured one strictly cheaper than the centre, so passes are
        # bounded by the number of measurements; the limit only guards that argument.
        if (first := self._preempt()) is not None:
            return first
        for _ in range(len(self._history) + 3):
            centre = self._centre
            if centre not in self._history:
                if self._unsafe(centre) and (refuge := self._refuge()) != centre:
                    self._moves += 1  # never measure what cannot carry the load
                    self._set_centre(refuge)
                    continue
                return centre
            costs: dict[Config, float] = {}
            for n in self.space.neighbours(centre):
                cost = self._known_cost(n, centre)
                if cost is None:
                    if self._unsafe(n):
                        costs[n] = math.inf  # not measured, and never chosen
                        continue
                    return n
                costs[n] = cost
            if not self._decide(centre, costs):
                return self._while_staying(centre) or centre
        return self._centre

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        rate = metrics.get("arrival_rate") if metrics else None
        if rate is not None and not math.isfinite(rate):
            rate = None
        if rate is not None:
            self._observe_rate(float(rate))
            if not (metrics and metrics.get("baseline")):  # a warm-up flood is not a peak
                self._rates.append(float(rate))
        self._window += 1
        self._observe(config, cost, metrics or {}, None if rate is None else float(rate))
        self._history.pop(config, None)
        self._measured(config, cost)
        self._history[config] = (cost, self._window, self._lifetime(config, cost))
        now = self._window
        for old in [c for c, (_, w, life) in self._history.items() if now - w >= life]:
            del self._history[old]
            self._expired(old)
        if config != self._centre and self._is_neighbour(config):
            self._news = True

    def peak_rate(self) -> float | None:
        """The busiest arrival rate of the last memory's windows; None before any."""
        return max(self._rates, default=None)

    # -- consultation points: the paper's answers -----------------------------------------
    def _preempt(self) -> Config | None:
        """A configuration to run before climbing on (none)."""
        return None

    def _estimate(self, neighbour: Config, centre: Config) -> float | None:
        """A cost for an unmeasured neighbour of ``centre`` (None: measure it)."""
        return None

    def _unsafe(self, config: Config) -> bool:
        """True when ``config`` must not be chosen nor measured, however cheap it looks
        (never)."""
        return False

    def _refuge(self) -> Config:
        """Where the centre goes when no candidate is safe (only reached when ``_unsafe``
        calls the centre unsafe)."""
        return self._centre

    def _candidate(self) -> Config | None:
        """One more measured configuration a decision weighs, asked once per decision."""
        return None

    def _while_staying(self, centre: Config) -> Config | None:
        """What to run instead of the centre when it stays (None: the centre)."""
        return None

    def _lifetime(self, config: Config, cost: float) -> int:
        """Windows a new measurement stays fresh."""
        return self._memory

    def _observe(
        self, config: Config, cost: float, metrics: Mapping[str, float], rate: float | None
    ) -> None:
        """A window closed (counted already; its cost not yet recorded)."""

    def _measured(self, config: Config, cost: float) -> None:
        """``config``'s cost is about to replace what was known of it."""

    def _expired(self, config: Config) -> None:
        """``config``'s measurement expired."""

    def _cleared(self, old_rate: float | None, new_rate: float | None) -> None:
        """Every measurement was dropped, the load having moved from ``old_rate`` to
        ``new_rate`` (None: not known)."""

    # -- decisions ------------------------------------------------------------------------
    def _known_cost(self, neighbour: Config, centre: Config) -> float | None:
        """A neighbour's fresh measured cost, else an estimate, else None."""
        known = self._history.get(neighbour)
        if known is not None:
            return known[0]
        return self._estimate(neighbour, centre)

    def _decide(self, centre: Config, neighbours: Mapping[Config, float]) -> bool:
        """Move, jump or stay; True when the centre changed."""
        history, unsafe = self._history, self._unsafe
        here = history[centre][0]
        # a centre that cannot be kept yields to any safe candidate
        best, best_cost = centre, here if not unsafe(centre) else math.inf
        for n, cost in neighbours.items():
            if cost < best_cost and not unsafe(n):
                best, best_cost = n, cost
        for diagonal, cost in self._diagonals(centre, here):
            if cost < best_cost and not unsafe(diagonal):
                best, best_cost = diagonal, cost
        extra = self._candidate()
        if (
            extra is not None
            and extra in history
            and history[extra][0] < best_cost
            and not unsafe(extra)
        ):
            best, best_cost = extra, history[extra][0]
        if best_cost == math.inf and (refuge := self._refuge()) != centre:
            self._moves += 1
            self._set_centre(refuge)  # nothing measured here is safe
            return True
        news, self._news = self._news, False
        if best != centre:
            self._move(centre, best, here, best_cost)
            return True
        if news:
            self._loops += 1
        if self._loops < self.max_loops:
            return False
        self._jump(centre)
        return True

    def _diagonals(self, centre: Config, here: float) -> Iterator[tuple[Config, float]]:
        """The CPU–GPU diagonals with their cost: measured when fresh, else estimated."""
        if self._plane is None:
            return
        history, space = self._history, self.space
        cpu, gpu = self._plane
        gpu_side = []
        for d in (-1, 1):
            n = space.step(centre, gpu, d)
            if n is not None and n in history:  # (one the guard ruled out is not measured)
                gpu_side.append((d, history[n][0]))
        for dc in (-1, 1):
            n = space.step(centre, cpu, dc)
            if n is None or n not in history:
                continue
            cpu_cost = history[n][0]
            for dg, gpu_cost in gpu_side:
                diagonal = n[:gpu] + (n[gpu] + dg,) + n[gpu + 1 :]
                measured = history.get(diagonal)
                yield diagonal, measured[0] if measured else cpu_cost + gpu_cost - here

    def _move(self, centre: Config, best: Config, here: float, best_cost: float) -> None:
        direction = tuple(b - c for b, c in zip(best, centre, strict=True))
        target = best
        if self.adaptive_step:
            gain = (here - best_cost) / abs(here) if here else math.inf
            if gain > self.step_growth and direction == self._last_dir:
                self._step = min(self._step + 1, self.max_step)
            else:
                self._step = 1
            self._last_dir = direction if gain > self.step_growth else None
            if self._step > 1:
                far = self._clip(
                    tuple(c + self._step * d for c, d in zip(centre, direction, strict=True))
                )
                known = self._history.get(far)
                # Never trade a measured gain for a far point already measured worse, nor
                # for one that cannot carry the load.
                if (known is None or known[0] < best_cost) and not self._unsafe(far):
                    target = far
        self._moves += 1
        self._set_centre(target)

    def _jump(self, centre: Config) -> None:
        self._jumps += 1
        self._step, self._last_dir = 1, None
        target = self._off_axis_neighbour(centre)
        self._set_centre(centre if target is None else target)

    def _set_centre(self, config: Config) -> None:
        self._centre = config
        self._loops = 0
        self._centre_rate = self._last_rate

    def _off_axis_neighbour(self, centre: Config) -> Config | None:
        """A uniformly random Moore neighbour that is not an axis neighbour, and not one
        ``_unsafe`` rules out (None when the draws find no safe one).

        Rejection sampling over the ±1 box avoids listing its ``3**dims`` cells. With fewer
        than two movable knobs there is none, and a ±2 step on one knob stands in.
        """
        options = [
            [j for j in (i - 1, i, i + 1) if k.floor <= j <= k.top]
            for k, i in zip(self.space.knobs, centre, strict=True)
        ]
        if sum(len(o) > 1 for o in options) >= 2:
            unsafe_draws = 0
            while unsafe_draws < MAX_UNSAFE_DRAWS:
                candidate = tuple(self.rng.choice(o) for o in options)
                if sum(c != i for c, i in zip(candidate, centre, strict=True)) < 2:
                    continue
                if not self._unsafe(candidate):
                    return candidate
                unsafe_draws += 1
            return None
        far = [
            c
            for axis in range(self.space.dims)
            for d in (-2, 2)
            if (c := self.space.step(centre, axis, d)) is not None and not self._unsafe(c)
        ]
        return self.rng.choice(far) if far else None

    def _clip(self, config: Config) -> Config:
        return tuple(
            min(max(i, k.floor), k.top) for k, i in zip(self.space.knobs, config, strict=True)
        )

    def _is_neighbour(self, config: Config) -> bool:
        """True for the configurations a decision compares: axis neighbours, CPU–GPU diagonals."""
        diffs = [
            (a, c - k) for a, (c, k) in enumerate(zip(config, self._centre, strict=True)) if c != k
        ]
        if any(abs(d) != 1 for _, d in diffs):
            return False
        if len(diffs) == 1:
            return True
        return (
            len(diffs) == 2
            and self._plane is not None
            and {a for a, _ in diffs} == set(self._plane)
        )

    def _observe_rate(self, rate: float) -> None:
        self._last_rate = rate
        ref = self._centre_rate
        if ref is None:
            self._centre_rate = rate
        elif self.rate_change_threshold is not None and abs(
            rate - ref
        ) > self.rate_change_threshold * abs(ref):
            # The load moved: old costs describe another workload, so start the neighbourhood over.
            self._clear(ref, rate)
            self._centre_rate = rate

    def _clear(self, old_rate: float | None = None, new_rate: float | None = None) -> None:
        """Drop every measurement and what the climb had built on them (the load moved from
        ``old_rate`` to ``new_rate``, when known)."""
        self._history.clear()
        self._loops, self._news = 0, False
        self._step, self._last_dir = 1, None
        self._cleared(old_rate, new_rate)

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            centre=list(self._centre),
            history=[[list(c), cost, w, life] for c, (cost, w, life) in self._history.items()],
            window=self._window,
            loops=self._loops,
            news=self._news,
            centre_rate=self._centre_rate,
            last_rate=self._last_rate,
            step=self._step,
            last_dir=None if self._last_dir is None else list(self._last_dir),
            moves=self._moves,
            jumps=self._jumps,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            self._load_climb(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc

    def _load_climb(self, state: Mapping[str, Any]) -> None:
        """Check every field of the climb's state, then take it."""
        centre = self.space.validate(state["centre"])
        history = {
            self.space.validate(c): (finite_cost(cost), int(w), int(life))
            for c, cost, w, life in state["history"]
        }
        last_dir = state["last_dir"]
        counters = [int(state[k]) for k in ("window", "loops", "step", "moves", "jumps")]
        rates = [
            None if state[k] is None else float(state[k]) for k in ("centre_rate", "last_rate")
        ]
        news = bool(state["news"])
        last_dir = None if last_dir is None else tuple(int(d) for d in last_dir)
        self._centre, self._history, self._news, self._last_dir = centre, history, news, last_dir
        self._window, self._loops, self._step, self._moves, self._jumps = counters
        self._centre_rate, self._last_rate = rates

    def describe(self) -> dict[str, Any]:
        known = self._history.get(self._centre)
        return {
            "tuner": self.name,
            "centre": list(self._centre),
            "centre_values": self.space.values(self._centre),
            "centre_cost": None if known is None else known[0],
            "known": len(self._history),
            "loops": self._loops,
            "moves": self._moves,
            "jumps": self._jumps,
            "windows": self._window,
            "phase": self.phase(),
        }

    def phase(self) -> str:
        """``settled`` (the centre stayed best at the last decision) or ``climb``."""
        return "settled" if self._loops > 0 else "climb"
