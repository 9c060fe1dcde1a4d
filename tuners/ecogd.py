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

- Opening scan (``opening_scan``). Before climbing, batch sizes are measured once each at the
  starting frequencies (every size, or those the cost curve of ``guided_scan`` below does not
  call clear losers), and the climb starts from the cheapest. Walking down from the largest
  batch costs three or more windows a step and stops at the first bump; the scan costs one
  window a size, and it counts as the first sweep of probes.
- Inherited batch neighbours (``inherit_margin``, ``inherit_reach``). Along a plateau of
  frequencies the centre keeps stepping on measurement noise, and each step would re-measure
  both batch neighbours, at +40-60% a window under bursts. A batch neighbour's loss to the
  centre is kept with its measurement; while it is fresh and at least ``inherit_margin``, a
  centre of the same batch size within ``inherit_reach`` frequency steps estimates that
  neighbour as its own cost times the loss instead of measuring it. Only clear losers are
  inherited, so an estimate never wins a decision.

Following the load (``follow_load``, ``level_memory``, ``research_sizes``, ``steady_memory``).
Expiring memories follow a load that drifts, but after a step of the rate they are too slow:
for up to ``memory_limit`` windows the climber compares costs measured under two loads. So
each window's arrival rate goes to a change-point test on the arrival process
(``tuners.load_change``, a CUSUM in units of the process's own noise, so the bursts of a real
trace are not mistaken for a change). The window that raises the alarm mixes both loads, so
the next one re-measures the centre and settles the change from its cost on both sides:

- a level seen before is met at once: the centre of every load level (rates within
  ``level_width`` of each other, relative) is remembered with its neighbourhood's costs when
  the load leaves it, and when the remembered centre beats what the current one is now worth, it
  comes back with those costs, so the climber stands where it ended last time;
- otherwise what was known is carried over, every cost scaled by the ratio the one
  configuration measured on both sides showed (a load change shifts every cost much alike)
  and with at most half a memory left to live, so the climb goes on and re-measures soon;
- a level far from any seen (``research_ratio`` apart) gets a bounded re-search as well:
  ``research_sizes`` batch sizes, those nearest the old size scaled by the square root of the
  rate change, measured once each at the current clocks (the opening scan, cut down to where
  the optimum can have gone).

With the change test saying when the load moved, measurements could live longer while it
holds (``steady_memory`` times); that is off by default, because expiry also follows what the
arrival rate does not show (a board warming up, a model swapped), and on the twins it saved
under 1.5% of cost.

Two models skip measuring clear losers (``guided_scan``, ``capacity_guard``):

- The opening scan is guided by a cost curve over batch size, ``c0 + c1 / b + c2 * b``,
  refitted after each size it measures (``tuners.batch_curve``): it measures sizes 16, 4 and 2
  (of 1..16), then, cheapest predicted first, only the sizes predicted
  within ``guide_margin`` (plus the fit's residual) of the best measured. When the residuals
  say the curve is rugged (a burst-aligned valley), it measures every size as before. A
  skipped size counts as probed with its predicted loss, so probes reach it later. Sizes the
  capacity guard (below) calls unsafe are not scanned at all.
- An online model of batch time over batch size and clocks (``tuners.batch_time``, fitted
  from each window's batch count and busy time) gives every measured clock setting's
  capacity at each batch size. A configuration that cannot serve the busiest window of the
  last memory is never chosen as the centre or probed, however cheap a quiet window made it
  look; a centre that becomes unsafe yields to any safe candidate, or to the maximum clocks
  with the smallest batch size that is safe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost
from tuners.batch_curve import next_size
from tuners.batch_time import BatchTimeModel
from tuners.load_change import LoadChangeTest

#: Load levels remembered at most (the least recently met is dropped).
MAX_LEVELS = 32


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
    ``follow_load``: run the change-point test on the arrival rate and forget every
    measurement when it alarms; ``level_memory``: remember each load level's best centre and
    its neighbourhood, met again at once; ``level_width``: rates within this relative distance
    are one level; ``research_sizes``: batch sizes measured on a new level (0 = just climb);
    ``research_ratio``: how far (a rate ratio) a level must lie from every remembered one to be
    re-searched; ``change_threshold``: the change test's alarm level, in noise units;
    ``carry_life``: the most a carried-over measurement has left to live, in memories;
    ``steady_memory``: how many times longer measurements live while following the load.
    ``guided_scan``: the opening scan measures the sizes a fitted cost curve over batch size
    (``tuners.batch_curve``) does not call clear losers, instead of every size;
    ``guide_margin``: how far (relative) above the best measured cost a size's predicted
    cost must lie, beyond the fit's own residual, to be skipped.
    ``capacity_guard``: never choose a configuration whose capacity, from the online model
    of batch time (``tuners.batch_time``; needs the windows' ``batches`` and ``busy_s``),
    is below ``guard_headroom`` times the busiest arrival rate of the last memory's windows.
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
        follow_load: bool = True,
        level_memory: bool = True,
        level_width: float = 0.25,
        research_sizes: int = 4,
        research_ratio: float = 2.0,
        steady_memory: float = 1.0,
        change_threshold: float = 12.0,
        carry_life: float = 0.5,
        guided_scan: bool = True,
        guide_margin: float = 0.05,
        capacity_guard: bool = True,
        guard_headroom: float = 1.0,
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
        if steady_memory < 1:
            raise ValueError(f"steady_memory must be >= 1 (1 = off), got {steady_memory}")
        self.steady_memory = float(steady_memory)
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
        if not level_width > 0:
            raise ValueError(f"level_width must be > 0, got {level_width}")
        if research_sizes < 0:
            raise ValueError(f"research_sizes must be >= 0 (0 = off), got {research_sizes}")
        self.follow_load = bool(follow_load)
        if self.follow_load:  # the change test, not expiry, follows the load: live longer
            self._memory = round(self._memory * self.steady_memory)
        self.level_memory = bool(level_memory) and self.follow_load
        self.level_width = float(level_width)
        self.research_sizes = int(research_sizes)
        if not research_ratio >= 1:
            raise ValueError(f"research_ratio must be >= 1, got {research_ratio}")
        self.research_ratio = float(research_ratio)
        self.change_threshold = float(change_threshold)
        self.carry_life = float(carry_life)
        if not guide_margin >= 0:
            raise ValueError(f"guide_margin must be >= 0, got {guide_margin}")
        self.guided_scan = bool(guided_scan)
        self.guide_margin = float(guide_margin)
        if not guard_headroom > 0:
            raise ValueError(f"guard_headroom must be > 0, got {guard_headroom}")
        self.capacity_guard = bool(capacity_guard)
        self.guard_headroom = float(guard_headroom)
        self._batch = space.axis(BATCH) if space.has(BATCH) else None
        self._sizes = self._batch_sizes() if self._batch is not None else []
        # which knobs of a configuration without its batch size are clocks (faster when higher)
        self._monotone = tuple(k.name in (CPU, GPU) for k in space.knobs if k.name != BATCH)
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
        # batch indices the running scan measures, in order (None: all, largest first)
        self._scan_order: list[int] | None = None
        self._load = LoadChangeTest(threshold=self.change_threshold) if self.follow_load else None
        self._level_rate: float | None = None  # the load level the centre was tuned for
        self._refine = False  # an alarm was raised: the next window settles the new level
        self._before: dict[Config, tuple[float, int, int]] = {}  # what was known before it
        # log level rate -> (centre, {config: cost} of its neighbourhood), least recent first
        self._levels: dict[float, tuple[Config, dict[Config, float]]] = {}
        self._changes = 0
        # batch time over batch size and clocks, and the recent windows' arrival rates; not
        # saved with the state (a restarted tuner relearns them from its next windows)
        self._times = BatchTimeModel()
        self._times.set_reference(self._clocks(self.space.maximum()))
        self._rates: deque[float] = deque(maxlen=self._memory)

    @property
    def centre(self) -> Config:
        return self._centre

    def ask(self) -> Config:
        # A pass returns, or moves the centre to an unmeasured configuration (returned by the
        # next pass) or to a measured one strictly cheaper than the centre, so passes are
        # bounded by the number of measurements; the limit only guards that argument.
        if self._refine:  # the window after an alarm re-measures the centre (see _settle)
            return self._centre
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
            if not (metrics and metrics.get("baseline")):  # a warm-up flood is not a peak
                self._rates.append(float(rate))
        if metrics and self.capacity_guard:
            self._observe_batches(config, metrics)
        self._window += 1
        self._since_probe += 1
        if self._load is not None and rate is not None and math.isfinite(rate):
            arrivals = metrics.get("arrivals", metrics.get("requests", 0.0)) if metrics else 0.0
            self._follow(float(rate), float(arrivals), config, cost)
        # Without a batch axis there is neither an opening scan nor a probe to weigh.
        batch = self._batch
        if (
            batch is not None
            and self._scan is not None
            and config == self._with(self._centre, batch, config[batch])
        ):
            self._scan[config[batch]] = cost
        elif (
            batch is not None
            and config == self._probe
            and (known := self._history.get(self._centre))
        ):
            if known[0] > 0:
                loss = cost / known[0] - 1.0
                self._probed[config[batch]] = (self._window, self._life(loss))
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

    def _observe_batches(self, config: Config, metrics: Mapping[str, float]) -> None:
        """Feed the batch-time model with the window's mean batch (when the driver timed it)."""
        batches, busy = metrics.get("batches", 0.0), metrics.get("busy_s", 0.0)
        served = metrics.get("requests", 0.0)
        if batches > 0 and busy > 0 and served > 0:
            self._times.observe(self._clocks(config), served / batches, busy / batches)

    def _clocks(self, config: Config) -> Config:
        """The configuration without its batch size: what stretches a batch's time."""
        axis = self._batch
        return config if axis is None else config[:axis] + config[axis + 1 :]

    def _capacity(self, config: Config) -> float | None:
        """Requests/s ``config`` serves with full batches, by the model (at most that of a
        measured setting at least as fast on every clock, when not measured itself); None
        while unknown."""
        if self._batch is None:
            return None
        return self._times.capacity_bound(
            self._clocks(config), self._sizes[config[self._batch]], self._monotone
        )

    def _unsafe(self, config: Config) -> bool:
        """True when the model says ``config`` cannot serve the busiest recent window."""
        if not self.capacity_guard or not self._rates:
            return False
        capacity = self._capacity(config)
        return capacity is not None and capacity < self.guard_headroom * max(self._rates)

    def _harbour(self) -> Config:
        """Every clock at maximum and the smallest batch size that carries the recent peak
        (the largest when none does): where the centre goes when nothing measured is safe."""
        top = self.space.maximum()
        assert self._batch is not None
        knob = self.space.knobs[self._batch]
        for index in range(knob.floor, knob.top + 1):
            candidate = self._with(top, self._batch, index)
            if not self._unsafe(candidate):
                return candidate
        return top

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
        """The next batch size of the opening scan or a re-search; at its end, None, with the
        centre moved to the cheapest size and every size's result counted as a probe.

        The opening scan goes largest first through every size, or, guided, through those the
        fitted cost curve does not call clear losers and the capacity guard does not call
        unsafe; a size skipped for its predicted cost counts as probed with its predicted loss,
        so probes come back to it once that is stale."""
        assert self._scan is not None and self._batch is not None
        knob = self.space.knobs[self._batch]
        predicted: dict[int, float] = {}
        if self._scan_order is None and self.guided_scan:
            # sizes the batch-time model says would queue under the recent peak are left out
            # (the curve's shape has no term for a queue), unless that leaves none
            indices = [
                i
                for i in range(knob.floor, knob.top + 1)
                if not self._unsafe(self._with(self._centre, self._batch, i))
            ] or list(range(knob.floor, knob.top + 1))
            index, predicted = next_size(
                self._scan, indices, [self._sizes[i] for i in indices], self.guide_margin
            )
            if index is not None:
                return self._with(self._centre, self._batch, index)
        else:
            order = self._scan_order or range(knob.top, knob.floor - 1, -1)
            for index in order:
                if index not in self._scan:
                    return self._with(self._centre, self._batch, index)
        if not self._scan:  # nothing to scan (an empty order)
            self._scan, self._scan_order = None, None
            return None
        best = min(self._scan, key=self._scan.__getitem__)
        if self._scan[best] > 0:  # the scan counts as a sweep of probes
            for index, cost in {**predicted, **self._scan}.items():
                self._probed[index] = (self._window, self._life(cost / self._scan[best] - 1.0))
        self._scan, self._scan_order = None, None
        self._set_centre(self._with(self._centre, self._batch, best))
        return None

    def _batch_sizes(self) -> list[float]:
        """Every batch index's size as a positive number (a space of plain indices counts
        from 1), for the models that divide by it."""
        assert self._batch is not None
        knob = self.space.knobs[self._batch]
        shift = max(0.0, 1.0 - float(min(knob.values)))
        return [float(v) + shift for v in knob.values]

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
        history, unsafe = self._history, self._unsafe
        here = history[centre][0]
        # a centre that cannot carry the recent peak yields to any safe candidate
        best, best_cost = centre, here if not unsafe(centre) else math.inf
        for n, cost in neighbours.items():
            if cost < best_cost and not unsafe(n):
                best, best_cost = n, cost
        for diagonal, cost in self._diagonals(centre, here):
            if cost < best_cost and not unsafe(diagonal):
                best, best_cost = diagonal, cost
        probe, self._probe = self._probe, None
        if (
            probe is not None
            and probe in history
            and history[probe][0] < best_cost
            and not unsafe(probe)
        ):
            best, best_cost = probe, history[probe][0]
        if best_cost == math.inf and (harbour := self._harbour()) != centre:
            self._moves += 1
            self._set_centre(harbour)  # nothing measured here is safe
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
                probe = self._with(centre, axis, index)
                if abs(index - centre[axis]) > 1 and not self._unsafe(probe):
                    # (±1 are axis neighbours, measured anyway)
                    self._since_probe, self._probe = 0, probe
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

    # -- following the load ----------------------------------------------------------------
    def _follow(self, rate: float, arrivals: float, config: Config, cost: float) -> None:
        """Feed the change-point test with a window (before its cost is recorded).

        The window that raises the alarm usually straddles the change and mixes both loads,
        so what was known is set aside and the next window names the new level and measures
        the centre again under it; ``_settle`` then decides. Alarms during the opening scan
        are ignored: the scan is the level's first search anyway.
        """
        assert self._load is not None
        changed = self._load.observe(rate, arrivals)
        opening = self._scan is not None and self._scan_order is None
        if opening:
            self._level_rate = self._load.level_rate
            return
        if changed:
            self._changes += 1
            self._remember(self._centre)  # the last decision's winner, for the level gone
            self._before = dict(self._history)
            self._refine = True
            return
        old, self._level_rate = self._level_rate, self._load.level_rate
        if self._refine:
            self._refine = False
            before, self._before = self._before, {}
            self._settle(before, old, config, cost)

    def _settle(
        self,
        before: dict[Config, tuple[float, int, int]],
        old_rate: float | None,
        config: Config,
        cost: float,
    ) -> None:
        """The first clean window of a new load: recall the level, carry or re-search.

        ``config`` was measured now at ``cost`` and before the change at ``before[config]``:
        their ratio is how the load shifted every cost, to first order. A remembered level
        wins when its centre beats what the current centre is now worth; otherwise the old
        measurements are carried over, rescaled by that ratio and with at most half a memory
        left to live (so the climb keeps going and re-measures them soon), and a level far
        from any seen (``research_ratio`` apart) is also re-searched. Without a measurement
        on both sides of the change there is no ratio, and everything is forgotten.
        """
        known = before.get(config)
        factor = cost / known[0] if known is not None and known[0] > 0 else None
        centre_now = before.get(self._centre)
        centre_cost = (
            centre_now[0] * factor if centre_now is not None and factor is not None else None
        )
        remembered = self._remembered()
        if remembered is not None and (centre_cost is None or remembered[2] < centre_cost):
            self._recall(remembered[0], remembered[1])
            return
        self._forget()
        if factor is None:
            return
        now, cap = self._window, max(1, round(self._memory * self.carry_life))
        for c, (v, w, life) in before.items():
            left = min(life - (now - w), cap)
            if left > 0:
                self._history[c] = (v * factor, now, left)
        rate = self._level_rate
        far = (
            rate is not None
            and old_rate is not None
            and abs(math.log(rate / old_rate)) > math.log(self.research_ratio)
        )
        if far and remembered is None:
            self._research(old_rate)

    def _forget(self) -> None:
        """Drop every measurement (they describe a load that is gone) and any scan or probe."""
        self._history.clear()
        self._losses.clear()
        self._probed.clear()
        self._loops, self._news = 0, False
        self._step, self._last_dir = 1, None
        self._probe = None
        self._scan, self._scan_order = None, None  # an unfinished scan of a past level

    def _nearest_level(self, rate: float) -> float | None:
        """The remembered level (log rate) nearest ``rate``, if within ``level_width``."""
        here, reach = math.log(rate), math.log1p(self.level_width)
        best = min(self._levels, key=lambda k: abs(k - here), default=None)
        return best if best is not None and abs(best - here) <= reach else None

    def _remember(self, centre: Config) -> None:
        """Keep ``centre`` (the last decision's winner) and its fresh neighbourhood as the
        best of the level the load is leaving: the latest decision is what it knew best."""
        if not self.level_memory or self._level_rate is None or self._scan is not None:
            return
        if self._refine or centre not in self._history:
            return
        near = {
            c: v
            for c, (v, _, _) in self._history.items()
            if max(abs(a - b) for a, b in zip(c, centre, strict=True)) <= 1
        }
        # one entry per level: the one this replaces lies within half a level's width
        here = math.log(self._level_rate)
        for key in [k for k in self._levels if abs(k - here) <= 0.5 * math.log1p(self.level_width)]:
            del self._levels[key]
        self._levels[here] = (centre, near)
        while len(self._levels) > MAX_LEVELS:
            del self._levels[next(iter(self._levels))]

    def _remembered(self) -> tuple[Config, dict[Config, float], float] | None:
        """The nearest remembered level's centre, neighbourhood and centre cost, if any."""
        if not self.level_memory or self._level_rate is None:
            return None
        key = self._nearest_level(self._level_rate)
        if key is None:
            return None
        centre, near = self._levels[key]
        return centre, near, near[centre]

    def _recall(self, centre: Config, near: Mapping[Config, float]) -> None:
        """Back on a remembered level: its centre and neighbourhood costs, fresh."""
        self._forget()
        for config, cost in near.items():
            self._history[config] = (cost, self._window, self._memory)
        self._set_centre(centre)

    def _research(self, old_rate: float | None) -> None:
        """A new level: measure the batch sizes nearest the old one scaled by the square root
        of the rate change (on the twins the best size moves far less than the rate: a
        higher rate fills a batch sooner but also queues more behind a larger one)."""
        axis, sizes = self._batch, self.research_sizes
        if axis is None or sizes <= 0:
            return
        knob = self.space.knobs[axis]
        size = self._sizes
        new_rate = self._level_rate
        ratio = new_rate / old_rate if new_rate and old_rate else 1.0
        guess = size[self._centre[axis]] * math.sqrt(ratio)
        order = sorted(
            range(knob.floor, knob.top + 1),
            key=lambda i: (abs(math.log(size[i] / guess)), -i),
        )[:sizes]
        self._scan, self._scan_order = {}, order

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
            scan_order=self._scan_order,
            load=None if self._load is None else self._load.state_dict(),
            level_rate=self._level_rate,
            refine=self._refine,
            before=[[list(c), cost, w, life] for c, (cost, w, life) in self._before.items()],
            levels=[
                [key, list(centre), [[list(c), v] for c, v in near.items()]]
                for key, (centre, near) in self._levels.items()
            ],
            changes=self._changes,
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
            # Absent from states saved before the load was followed: no level known yet.
            order = state.get("scan_order")
            scan_order = None if order is None else [int(i) for i in order]
            levels = {
                float(key): (
                    self.space.validate(centre),
                    {self.space.validate(c): finite_cost(v) for c, v in near},
                )
                for key, centre, near in state.get("levels", [])
            }
            level_rate = state.get("level_rate")
            level_rate = None if level_rate is None else float(level_rate)
            refine, changes = bool(state.get("refine", False)), int(state.get("changes", 0))
            before = {
                self.space.validate(c): (finite_cost(cost), int(w), int(life))
                for c, cost, w, life in state.get("before", [])
            }
            load = state.get("load")
            if self._load is not None:
                if load is not None:
                    self._load.load_state_dict(load)
                else:
                    self._load.reset()
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
        self._scan_order, self._levels, self._level_rate = scan_order, levels, level_rate
        self._refine, self._changes, self._before = refine, changes, before

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
            "load_changes": self._changes,
            "load_levels": len(self._levels),
            "level_rate": self._level_rate,
            "peak_rate": max(self._rates, default=None),
            "centre_capacity": self._capacity(self._centre),
            "windows": self._window,
            "phase": self.phase(),
        }

    def phase(self) -> str:
        """What it is doing: ``scan`` (the opening scan), ``research`` (the bounded re-search
        of a new load level), ``probe`` (a batch-size probe is out), ``settled`` (the centre
        stayed best at the last decision) or ``climb``."""
        if self._scan is not None:
            return "scan" if self._scan_order is None else "research"
        if self._probe is not None:
            return "probe"
        return "settled" if self._loops > 0 else "climb"


class EcoGDOriginal(EcoGD):
    """The climber as EcoEdgeInfer describes it: every addition above turned off.

    No opening scan, no inherited neighbours, no batch-size probes, one memory for winners
    and losers alike, no change-point test, no capacity guard. It is the reference the
    additions are judged by.
    """

    name = "ecogd-original"

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
    ) -> None:
        super().__init__(
            space,
            seed,
            memory_limit=memory_limit,
            max_loops=max_loops,
            rate_change_threshold=rate_change_threshold,
            adaptive_step=adaptive_step,
            max_step=max_step,
            step_growth=step_growth,
            probe_every=0,
            loser_memory=1.0,
            opening_scan=False,
            inherit_margin=None,
            follow_load=False,
            guided_scan=False,
            capacity_guard=False,
        )
