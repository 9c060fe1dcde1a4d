"""EcoGD: the EcoEdgeInfer hill climber over knob indices.

It keeps a centre (starting at every knob's maximum, the baseline, but see the opening scan
below) and measures the centre's axis neighbours (±1 on one knob, ``2 * dims`` of them at
most). Once all are known it estimates the four diagonal neighbours in the CPU–GPU plane
additively, ``cost(c) + Δcpu + Δgpu``, because the two frequencies act on different parts of a
batch's time and energy; diagonals that involve the batch size or any other knob interact too
strongly to estimate and are left out. The centre moves to the cheapest of itself, its axis
neighbours and those diagonals.

Measurements expire after ``memory_limit`` windows (the history is trimmed, which also bounds
memory), so a converged centre keeps re-measuring its neighbourhood and follows an optimum that
drifts with the arrival rate. A neighbour that lost to the centre by far lives longer (up to
``loser_memory`` times as long): at a sharp optimum, re-measuring it is most of what staying
there costs, and only a large change of load could make it win. When the centre stays best
``max_loops`` decisions in a row, it jumps to a random Moore neighbour off the axes to escape a
local minimum.

Batch-size probes (``probe_every``). Frequencies act on a batch's time and energy smoothly,
but the batch size also meets the arrival pattern, and there the landscape is rugged: with
bursts of 10, batch 10 leaves with each burst while 9 and 11 both leave a remainder waiting
for the next one, so batch 10 is a deep valley whose axis neighbours are both worse, and a
±1 climber coming down from 16 stops at the first bump. So once the neighbourhood is fully
measured and the centre stays, every ``probe_every``-th window measures the centre with
another batch size, taken in a shuffled sweep over all of them, and a probe cheaper than the
whole neighbourhood becomes the centre. A probe is one window, far cheaper than a jump, and
a sweep covers every batch size in ``probe_every`` x (sizes - 3) windows. A size whose last
probe lost by far is skipped until that result is stale, like any losing measurement.

Two additions keep the cost of that ruggedness low (each can be turned off):

- Opening scan (``opening_scan``). Before climbing, every batch size is measured once at the
  starting frequencies, and the climb starts from the cheapest. Walking down from the largest
  batch costs three or more windows a step and stops at the first bump; the scan costs one
  window a size, and it counts as the first sweep of probes.
- Inherited batch neighbours (``inherit_margin``, ``inherit_reach``). Along a plateau of
  frequencies the centre keeps stepping on measurement noise, and each step would re-measure
  both batch neighbours, at +40-60% a window under bursts. A batch neighbour's loss to the
  centre is kept with its measurement; while it is fresh and at least ``inherit_margin``, a
  centre of the same batch size within ``inherit_reach`` frequency steps estimates that
  neighbour as its own cost times the loss instead of measuring it. Only clear losers are
  inherited, so an estimate never wins a decision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class EcoGD(Tuner):
    """Hill climbing on the axis neighbours plus estimated CPU–GPU diagonals.

    ``memory_limit``: a measurement older than this many windows is stale (re-measured before
    use) and dropped. It is raised to ``2 * dims + 1`` when smaller, since otherwise the centre
    and its neighbours could never all be fresh at once.
    ``max_loops``: decisions in a row, each with new measurements, in which the centre stays
    best before it jumps.
    ``rate_change_threshold``: when set, a relative change of ``metrics['arrival_rate']`` larger
    than this (against the rate seen when the centre was set) forgets every measurement.
    ``adaptive_step``: moves grow to 2, 3, ... ``max_step`` indices along a direction while
    successive moves in that direction each improve the cost by more than ``step_growth``.
    ``probe_every``: windows between batch-size probes once settled (see the module notes);
    ``None`` or 0 turns probes off, as does a space without a batch-size knob.
    ``loser_memory``: the longest life of a losing measurement, in memories (1 = off).
    ``opening_scan``: measure every batch size once before climbing (see the module notes).
    ``inherit_margin``: the smallest relative loss of a batch neighbour that is inherited
    across frequency moves (``None`` = always measure); ``inherit_reach``: how many steps
    away, on every other knob, the measurement it is inherited from may lie.
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
        probe_every: int | None = 10,
        loser_memory: float = 6.0,
        opening_scan: bool = True,
        inherit_margin: float | None = 0.2,
        inherit_reach: int = 8,
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
        if probe_every is not None and probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 windows (0 = off), got {probe_every}")
        self.memory_limit = int(memory_limit)
        self.max_loops = int(max_loops)
        self.rate_change_threshold = rate_change_threshold
        self.adaptive_step = bool(adaptive_step)
        self.max_step = int(max_step)
        self.step_growth = float(step_growth)
        self._memory = max(self.memory_limit, 2 * space.dims + 1)
        self._plane = (
            (space.axis(CPU), space.axis(GPU)) if space.has(CPU) and space.has(GPU) else None
        )
        if loser_memory < 1:
            raise ValueError(f"loser_memory must be >= 1 (1 = off), got {loser_memory}")
        self.loser_memory = float(loser_memory)
        self.probe_every = int(probe_every or 0)
        self.opening_scan = bool(opening_scan)
        if inherit_margin is not None and inherit_margin < 0:
            raise ValueError(f"inherit_margin must be >= 0 (None = off), got {inherit_margin}")
        self.inherit_margin = inherit_margin
        if inherit_reach < 0:
            raise ValueError(f"inherit_reach must be >= 0 steps, got {inherit_reach}")
        self.inherit_reach = int(inherit_reach)
        self._batch = space.axis(BATCH) if space.has(BATCH) else None
        self._probe_axis = self._batch if self.probe_every else None
        self.reset()

    # -- ask/tell -------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._centre: Config = self.space.maximum()
        # config -> (cost, window it was measured in, windows it stays fresh)
        self._history: dict[Config, tuple[float, int, int]] = {}
        # batch neighbour measured -> (the centre's batch index then, its loss to the centre)
        self._losses: dict[Config, tuple[int, float]] = {}
        self._window = 0
        self._loops = 0
        self._news = False  # a neighbour was (re)measured since the last decision
        self._centre_rate: float | None = None
        self._last_rate: float | None = None
        self._step = 1
        self._last_dir: Config | None = None
        self._moves = 0
        self._jumps = 0
        self._since_probe = 0
        self._probe_queue: list[int] = []  # batch indices still to probe in this sweep
        self._probe: Config | None = None  # the last probe asked, until a decision weighs it
        self._probes = 0
        # batch index -> (window of its last probe or scan, windows that result stays fresh)
        self._probed: dict[int, tuple[int, int]] = {}
        # batch index -> cost, while the opening scan runs; None once it is over (or off)
        self._scan: dict[int, float] | None = (
            {} if self.opening_scan and self._batch is not None else None
        )

    @property
    def centre(self) -> Config:
        return self._centre

    def ask(self) -> Config:
        # A pass returns, or moves the centre to an unmeasured configuration (returned by the
        # next pass) or to a measured one strictly cheaper than the centre, so passes are
        # bounded by the number of measurements; the limit only guards that argument.
        if self._scan is not None and (scan := self._next_scan()) is not None:
            return scan
        for _ in range(len(self._history) + 3):
            centre = self._centre
            if centre not in self._history:
                return centre
            costs: dict[Config, float] = {}
            for n in self.space.neighbours(centre):
                cost = self._known_cost(n, centre)
                if cost is None:
                    return n
                costs[n] = cost
            if not self._decide(centre, costs):
                return self._next_probe(centre) or centre
        return self._centre

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        rate = metrics.get("arrival_rate") if metrics else None
        if rate is not None and math.isfinite(rate):
            self._observe_rate(float(rate))
        self._window += 1
        self._since_probe += 1
        if self._scan is not None and config == self._with(
            self._centre, self._batch, config[self._batch]
        ):
            self._scan[config[self._batch]] = cost
        elif config == self._probe and (known := self._history.get(self._centre)):
            if known[0] > 0:
                loss = cost / known[0] - 1.0
                self._probed[config[self._batch]] = (self._window, self._life(loss))
        self._history.pop(config, None)
        self._losses.pop(config, None)
        self._record_loss(config, cost)
        self._history[config] = (cost, self._window, self._lifetime(config, cost))
        now = self._window
        for old in [c for c, (_, w, life) in self._history.items() if now - w >= life]:
            del self._history[old]
            self._losses.pop(old, None)
        if config != self._centre and self._is_neighbour(config):
            self._news = True

    def _record_loss(self, config: Config, cost: float) -> None:
        """Keep a batch neighbour's relative loss to the centre, for ``_inherited``."""
        axis, centre = self._batch, self._centre
        known = self._history.get(centre)
        if axis is None or known is None or known[0] <= 0 or config == centre:
            return
        if abs(config[axis] - centre[axis]) == 1 and all(
            c == k for a, (c, k) in enumerate(zip(config, centre, strict=True)) if a != axis
        ):
            self._losses[config] = (centre[axis], cost / known[0] - 1.0)

    def _lifetime(self, config: Config, cost: float) -> int:
        """Windows a measurement stays fresh: longer the more it lost to the centre."""
        known = self._history.get(self._centre)
        if config == self._centre or known is None or known[0] <= 0:
            return self._memory
        return self._life(cost / known[0] - 1.0)

    def _life(self, loss: float) -> int:
        """A loss of ``x`` (relative) lives ``1 + 10 * x`` memories, at most ``loser_memory``.

        So a 10% loss lives twice as long as a win, a 30% loss four times.
        """
        if self.loser_memory <= 1:
            return self._memory
        return round(self._memory * min(self.loser_memory, 1.0 + 10.0 * max(0.0, loss)))

    # -- decisions ------------------------------------------------------------------------
    def _next_scan(self) -> Config | None:
        """The next batch size of the opening scan (largest first); at its end, None, with the
        centre moved to the cheapest size and every size's result counted as a probe."""
        assert self._scan is not None and self._batch is not None
        knob = self.space.knobs[self._batch]
        for index in range(knob.top, knob.floor - 1, -1):
            if index not in self._scan:
                return self._with(self._centre, self._batch, index)
        best = min(self._scan, key=self._scan.__getitem__)
        if self._scan[best] > 0:  # the scan counts as a sweep of probes
            for index, cost in self._scan.items():
                self._probed[index] = (self._window, self._life(cost / self._scan[best] - 1.0))
        self._scan = None
        self._set_centre(self._with(self._centre, self._batch, best))
        return None

    def _known_cost(self, neighbour: Config, centre: Config) -> float | None:
        """A neighbour's fresh measured cost, else an inherited batch-size loss, else None."""
        known = self._history.get(neighbour)
        if known is not None:
            return known[0]
        return self._inherited(neighbour, centre)

    def _inherited(self, neighbour: Config, centre: Config) -> float | None:
        """Estimate a batch-size axis neighbour from its loss at nearby frequencies.

        At a sharp batch-size optimum the ±1 batch sizes lose by far (40-60% under bursts), and
        when the centre drifts along a plateau of frequencies, re-measuring both after every
        step is most of what staying there costs. A frequency step changes neighbouring batch
        sizes' costs by much the same factor, so each batch neighbour's loss against the centre
        is kept with its measurement; while one is fresh, was taken from the same batch size,
        at frequencies within ``inherit_reach`` steps on every other knob, and lost by at least
        ``inherit_margin``, the neighbour is estimated as the centre's cost times that loss
        (the smallest such loss, to err towards measuring). Only clear losers are inherited, so
        an estimate never wins a decision; it expires with the measurement it came from.
        """
        axis, margin = self._batch, self.inherit_margin
        if axis is None or margin is None or not self._losses:
            return None
        if neighbour[axis] == centre[axis]:  # an axis neighbour on another knob
            return None
        here = self._history[centre][0]
        if here <= 0:
            return None
        reach = self.inherit_reach
        loss = math.inf
        for measured, (base, measured_loss) in self._losses.items():
            if (
                base == centre[axis]
                and measured[axis] == neighbour[axis]
                and measured in self._history
                and all(abs(m - c) <= reach for m, c in zip(measured, centre, strict=True))
            ):
                loss = min(loss, measured_loss)
        return here * (1.0 + loss) if margin <= loss < math.inf else None

    def _decide(self, centre: Config, neighbours: Mapping[Config, float]) -> bool:
        """Move, jump or stay; True when the centre changed."""
        history = self._history
        here = history[centre][0]
        best, best_cost = centre, here
        for n, cost in neighbours.items():
            if cost < best_cost:
                best, best_cost = n, cost
        for diagonal, cost in self._diagonals(centre, here):
            if cost < best_cost:
                best, best_cost = diagonal, cost
        probe, self._probe = self._probe, None
        if probe is not None and probe in history and history[probe][0] < best_cost:
            best, best_cost = probe, history[probe][0]
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
            if n is not None:
                gpu_side.append((d, history[n][0]))
        for dc in (-1, 1):
            n = space.step(centre, cpu, dc)
            if n is None:
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
                # Never trade a measured gain for a far point already measured worse.
                if known is None or known[0] < best_cost:
                    target = far
        self._moves += 1
        self._set_centre(target)

    def _next_probe(self, centre: Config) -> Config | None:
        """The centre with another batch size, when a probe is due (see the module notes)."""
        axis = self._probe_axis
        if axis is None or self._since_probe < self.probe_every:
            return None
        knob = self.space.knobs[axis]
        for _ in range(2):
            while self._probe_queue:
                index = self._probe_queue.pop()
                window, life = self._probed.get(index, (0, 0))
                if self._window - window < life:
                    continue  # a size that lost by far is probed again only once that is stale
                if abs(index - centre[axis]) > 1:  # ±1 are axis neighbours, measured anyway
                    self._since_probe, self._probe = 0, self._with(centre, axis, index)
                    self._probes += 1
                    return self._probe
            self._probe_queue = list(range(knob.floor, knob.top + 1))
            self.rng.shuffle(self._probe_queue)
        return None

    @staticmethod
    def _with(config: Config, axis: int, index: int) -> Config:
        return config[:axis] + (index,) + config[axis + 1 :]

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
        """A uniformly random Moore neighbour that is not an axis neighbour.

        Rejection sampling over the ±1 box avoids listing its ``3**dims`` cells. With fewer
        than two movable knobs there is none, and a ±2 step on one knob stands in.
        """
        options = [
            [j for j in (i - 1, i, i + 1) if k.floor <= j <= k.top]
            for k, i in zip(self.space.knobs, centre, strict=True)
        ]
        if sum(len(o) > 1 for o in options) >= 2:
            while True:
                candidate = tuple(self.rng.choice(o) for o in options)
                if sum(c != i for c, i in zip(candidate, centre, strict=True)) >= 2:
                    return candidate
        far = [
            c
            for axis in range(self.space.dims)
            for d in (-2, 2)
            if (c := self.space.step(centre, axis, d)) is not None
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
            self._history.clear()
            self._losses.clear()
            self._probed.clear()
            self._loops, self._news = 0, False
            self._step, self._last_dir = 1, None
            self._centre_rate = rate

    # -- persistence and status ---------------------------------------------------------------
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
            since_probe=self._since_probe,
            probe_queue=list(self._probe_queue),
            probe=None if self._probe is None else list(self._probe),
            probes=self._probes,
            probed=[[i, w, life] for i, (w, life) in self._probed.items()],
            scan=None if self._scan is None else [[i, c] for i, c in self._scan.items()],
            losses=[[list(c), base, loss] for c, (base, loss) in self._losses.items()],
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
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
            probe = None if state["probe"] is None else self.space.validate(state["probe"])
            probe_queue = [int(i) for i in state["probe_queue"]]
            since_probe, probes = int(state["since_probe"]), int(state["probes"])
            # Absent from states saved before the opening scan and inherited losses existed:
            # such a tuner is past its scan and simply has nothing to inherit yet.
            probed = {int(i): (int(w), int(life)) for i, w, life in state.get("probed", [])}
            saved_scan = state.get("scan")
            scan = None if saved_scan is None else {int(i): finite_cost(c) for i, c in saved_scan}
            losses = {
                self.space.validate(c): (int(base), float(loss))
                for c, base, loss in state.get("losses", [])
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        self._centre, self._history, self._news, self._last_dir = centre, history, news, last_dir
        self._window, self._loops, self._step, self._moves, self._jumps = counters
        self._centre_rate, self._last_rate = rates
        self._probe, self._probe_queue = probe, probe_queue
        self._since_probe, self._probes = since_probe, probes
        self._probed, self._scan, self._losses = probed, scan, losses

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
            "probes": self._probes,
            "scanning": self._scan is not None,
            "windows": self._window,
            "phase": self.phase(),
        }

    def phase(self) -> str:
        """What it is doing: ``scan`` (the opening scan), ``probe`` (a batch-size probe is
        out), ``settled`` (the centre stayed best at the last decision) or ``climb``."""
        if self._scan is not None:
            return "scan"
        if self._probe is not None:
            return "probe"
        return "settled" if self._loops > 0 else "climb"
