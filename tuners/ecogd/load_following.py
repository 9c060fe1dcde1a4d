"""Following the load: a change-point test on the arrival rate, and a memory of load levels.

Expiring measurements follow a load that drifts, but after a step of the rate they are too
slow: for up to a memory of windows the climber would compare costs measured under two
loads. So each window's arrival rate goes to a change-point test on the arrival process
(``tuners.load_change``, a CUSUM in units of the process's own noise, so the bursts of a real
trace are not mistaken for a change). The window that raises the alarm mixes both loads, so
the next one re-measures the centre and settles the change from its cost on both sides:

- a level seen before is met at once: the centre of every load level (rates within
  ``level_width`` of each other, relative) is remembered with its neighbourhood's costs when
  the load leaves it, and when the remembered centre beats what the current one is now
  worth, it comes back with those costs, so the climber stands where it ended last time;
- otherwise what was known is carried over, every cost scaled by the ratio the one
  configuration measured on both sides showed (a load change shifts every cost much alike)
  and with at most ``carry_life`` memories left to live, so the climb goes on and
  re-measures soon;
- a level far from any seen (``research_ratio`` apart) gets a bounded re-search as well:
  ``research_sizes`` batch sizes, those nearest the old size scaled by the square root of
  the rate change (on the twins the best size moves far less than the rate: a higher rate
  fills a batch sooner but also queues more behind a larger one).

Alarms during the opening scan are ignored: the scan is the level's first search anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import finite_cost
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.climber import Measurement
from tuners.load_change import LoadChangeTest

#: Load levels remembered at most (the least recently met is dropped).
MAX_LEVELS = 32


@dataclass(frozen=True)
class Settled:
    """What the first clean window after a change decided; every measurement is forgotten
    first. ``centre``: a remembered level's centre to go back to; ``known``: measurements to
    start from instead; ``research``: batch indices to measure at the centre's clocks."""

    centre: Config | None = None
    known: dict[Config, Measurement] = field(default_factory=dict)
    research: list[int] = field(default_factory=list)


class LoadFollowing:
    """The change test, the level the centre was tuned for, and the levels remembered.

    ``memory``: the climber's memory (windows); ``batch``: the batch-size knob, for
    re-searches (None: no re-search).
    """

    def __init__(
        self,
        memory: int,
        batch: BatchAxis | None,
        level_memory: bool = True,
        level_width: float = 0.25,
        research_sizes: int = 4,
        research_ratio: float = 2.0,
        change_threshold: float = 12.0,
        carry_life: float = 0.5,
    ) -> None:
        self.memory = memory
        self.batch = batch
        self.level_memory = level_memory
        self.level_width = float(level_width)
        self.research_sizes = int(research_sizes)
        self.research_ratio = float(research_ratio)
        self.change_threshold = float(change_threshold)
        self.carry_life = float(carry_life)
        self.test = LoadChangeTest(threshold=self.change_threshold)
        self.reset()

    def reset(self) -> None:
        self.test.reset()
        self.level_rate: float | None = None  # the load level the centre was tuned for
        self.refine = False  # an alarm was raised: the next window settles the new level
        self.before: dict[Config, Measurement] = {}  # what was known before it
        # log level rate -> (centre, {config: cost} of its neighbourhood), least recent first
        self.levels: dict[float, tuple[Config, dict[Config, float]]] = {}
        self.changes = 0

    def observe(
        self,
        rate: float,
        arrivals: float,
        *,
        opening: bool,
        scanning: bool,
        centre: Config,
        history: Mapping[Config, Measurement],
    ) -> tuple[dict[Config, Measurement], float | None] | None:
        """One window's rate, before its cost is recorded. On an alarm, the level left is
        remembered (``centre``, the last decision's winner, with its neighbourhood in
        ``history``) and ``history`` set aside; the next window returns what was set aside
        and the old level's rate, for ``settle``. ``opening``: the opening scan runs;
        ``scanning``: any scan runs (its centre is no level's best)."""
        changed = self.test.observe(rate, arrivals)
        if opening:
            self.level_rate = self.test.level_rate
            return None
        if changed:
            self.changes += 1
            if not scanning:
                self._remember(centre, history)
            self.before = dict(history)
            self.refine = True
            return None
        old, self.level_rate = self.level_rate, self.test.level_rate
        if not self.refine:
            return None
        self.refine = False
        before, self.before = self.before, {}
        return before, old

    def settle(
        self,
        before: Mapping[Config, Measurement],
        old_rate: float | None,
        config: Config,
        cost: float,
        centre: Config,
        window: int,
    ) -> Settled:
        """The first clean window of a new load: recall the level, carry or re-search.

        ``config`` was measured now at ``cost`` and before the change at ``before[config]``:
        their ratio is how the load shifted every cost, to first order. A remembered level
        wins when its centre beats what ``centre`` is now worth. Without a measurement on
        both sides of the change there is no ratio, and nothing is carried.
        """
        known = before.get(config)
        factor = cost / known[0] if known is not None and known[0] > 0 else None
        centre_now = before.get(centre)
        centre_cost = (
            centre_now[0] * factor if centre_now is not None and factor is not None else None
        )
        remembered = self._remembered()
        if remembered is not None and (centre_cost is None or remembered[2] < centre_cost):
            recalled = {c: (v, window, self.memory) for c, v in remembered[1].items()}
            return Settled(remembered[0], recalled)
        if factor is None:
            return Settled()
        cap = max(1, round(self.memory * self.carry_life))
        carried = {}
        for c, (v, w, life) in before.items():
            left = min(life - (window - w), cap)
            if left > 0:
                carried[c] = (v * factor, window, left)
        rate = self.level_rate
        far = (
            rate is not None
            and old_rate is not None
            and abs(math.log(rate / old_rate)) > math.log(self.research_ratio)
        )
        research = self._research(centre, old_rate) if far and remembered is None else []
        return Settled(None, carried, research)

    def _nearest_level(self, rate: float) -> float | None:
        """The remembered level (log rate) nearest ``rate``, if within ``level_width``."""
        here, reach = math.log(rate), math.log1p(self.level_width)
        best = min(self.levels, key=lambda k: abs(k - here), default=None)
        return best if best is not None and abs(best - here) <= reach else None

    def _remember(self, centre: Config, history: Mapping[Config, Measurement]) -> None:
        """Keep ``centre`` and its fresh neighbourhood as the best of the level the load is
        leaving: the latest decision is what it knew best."""
        if not self.level_memory or self.level_rate is None:
            return
        if self.refine or centre not in history:
            return
        near = {
            c: v
            for c, (v, _, _) in history.items()
            if max(abs(a - b) for a, b in zip(c, centre, strict=True)) <= 1
        }
        # one entry per level: the one this replaces lies within half a level's width
        here = math.log(self.level_rate)
        for key in [k for k in self.levels if abs(k - here) <= 0.5 * math.log1p(self.level_width)]:
            del self.levels[key]
        self.levels[here] = (centre, near)
        while len(self.levels) > MAX_LEVELS:
            del self.levels[next(iter(self.levels))]

    def _remembered(self) -> tuple[Config, dict[Config, float], float] | None:
        """The nearest remembered level's centre, neighbourhood and centre cost, if any."""
        if not self.level_memory or self.level_rate is None:
            return None
        key = self._nearest_level(self.level_rate)
        if key is None:
            return None
        centre, near = self.levels[key]
        return centre, near, near[centre]

    def _research(self, centre: Config, old_rate: float | None) -> list[int]:
        """The ``research_sizes`` batch indices nearest the centre's size scaled by the
        square root of the rate change, nearest first."""
        batch, sizes = self.batch, self.research_sizes
        if batch is None or sizes <= 0:
            return []
        size = batch.sizes
        new_rate = self.level_rate
        ratio = new_rate / old_rate if new_rate and old_rate else 1.0
        guess = size[centre[batch.axis]] * math.sqrt(ratio)
        return sorted(batch.indices(), key=lambda i: (abs(math.log(size[i] / guess)), -i))[:sizes]

    def state_dict(self) -> dict[str, Any]:
        return {
            "load": self.test.state_dict(),
            "level_rate": self.level_rate,
            "refine": self.refine,
            "before": [[list(c), cost, w, life] for c, (cost, w, life) in self.before.items()],
            "levels": [
                [key, list(centre), [[list(c), v] for c, v in near.items()]]
                for key, (centre, near) in self.levels.items()
            ],
            "changes": self.changes,
        }

    def load_state_dict(self, state: Mapping[str, Any], space: SearchSpace) -> None:
        """Absent from states saved before the load was followed: no level known yet."""
        levels = {
            float(key): (
                space.validate(centre),
                {space.validate(c): finite_cost(v) for c, v in near},
            )
            for key, centre, near in state.get("levels", [])
        }
        level_rate = state.get("level_rate")
        level_rate = None if level_rate is None else float(level_rate)
        refine, changes = bool(state.get("refine", False)), int(state.get("changes", 0))
        before = {
            space.validate(c): (finite_cost(cost), int(w), int(life))
            for c, cost, w, life in state.get("before", [])
        }
        load = state.get("load")
        if load is not None:
            self.test.load_state_dict(load)
        else:
            self.test.reset()
        self.levels, self.level_rate, self.refine = levels, level_rate, refine
        self.changes, self.before = changes, before
