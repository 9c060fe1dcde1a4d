"""Loss memory: what a losing measurement lost, so the climber pays less to keep it.

At a sharp optimum re-measuring the losers around the centre is most of what staying there
costs, and only a large change of load could make them win. Two uses of one record:

- a measurement that lost to the centre by far lives longer, up to ``loser_memory``
  memories (``1 + 10 * loss`` of them: a 10% loss twice as long as a win, 30% four times);
- inherited batch neighbours: along a plateau of frequencies the centre keeps stepping on
  measurement noise, and each step would re-measure both batch neighbours (+40-60% a window
  under bursts). A frequency step changes neighbouring batch sizes' costs by much the same
  factor, so each batch neighbour's loss to the centre is kept with its measurement; while
  that is fresh and at least ``inherit_margin``, a centre of the same batch size within
  ``inherit_reach`` frequency steps estimates that neighbour as its own cost times the loss
  instead of measuring it. Only clear losers are inherited, so an estimate never wins a
  decision.

The record is kept even with both uses off: the saved state has always carried it.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace


class LossMemory:
    """Each batch neighbour's loss to the centre it was measured against, and the lives of
    losing measurements. ``axis`` is the batch-size knob (None: nothing is inherited)."""

    def __init__(
        self,
        memory: int,
        axis: int | None,
        loser_memory: float = 6.0,
        inherit_margin: float | None = 0.2,
        inherit_reach: int = 8,
    ) -> None:
        self.memory = memory
        self.axis = axis
        self.loser_memory = float(loser_memory)
        self.inherit_margin = inherit_margin
        self.inherit_reach = int(inherit_reach)
        # batch neighbour measured -> (the centre's batch index then, its loss to the centre)
        self.losses: dict[Config, tuple[int, float]] = {}

    def life(self, loss: float) -> int:
        """Windows a result that lost ``loss`` (relative) stays fresh."""
        if self.loser_memory <= 1:
            return self.memory
        return round(self.memory * min(self.loser_memory, 1.0 + 10.0 * max(0.0, loss)))

    def lifetime(self, config: Config, cost: float, centre: Config, here: float | None) -> int:
        """The life of ``config``'s new measurement against the centre's cost ``here``."""
        if config == centre or here is None or here <= 0:
            return self.memory
        return self.life(cost / here - 1.0)

    def record(self, config: Config, cost: float, centre: Config, here: float | None) -> None:
        """``config`` was measured at ``cost``, replacing anything kept for it; a batch
        neighbour of the centre (whose cost is ``here``) keeps its loss."""
        self.losses.pop(config, None)
        axis = self.axis
        if axis is None or here is None or here <= 0 or config == centre:
            return
        if abs(config[axis] - centre[axis]) == 1 and all(
            c == k for a, (c, k) in enumerate(zip(config, centre, strict=True)) if a != axis
        ):
            self.losses[config] = (centre[axis], cost / here - 1.0)

    def drop(self, config: Config) -> None:
        """``config``'s measurement is gone, and its loss with it."""
        self.losses.pop(config, None)

    def clear(self) -> None:
        """Every measurement was dropped, and every loss with it."""
        self.losses.clear()

    def reset(self) -> None:
        self.losses.clear()

    def inherited(
        self, neighbour: Config, centre: Config, here: float, fresh: Container[Config]
    ) -> float | None:
        """An estimate of batch neighbour ``neighbour`` of ``centre`` (cost ``here``) from
        the smallest fresh loss measured at nearby frequencies (to err towards measuring),
        when that loss is at least the margin; else None."""
        axis, margin = self.axis, self.inherit_margin
        if axis is None or margin is None or not self.losses:
            return None
        if neighbour[axis] == centre[axis]:  # an axis neighbour on another knob
            return None
        if here <= 0:
            return None
        reach = self.inherit_reach
        loss = math.inf
        for measured, (base, measured_loss) in self.losses.items():
            if (
                base == centre[axis]
                and measured[axis] == neighbour[axis]
                and measured in fresh
                and all(abs(m - c) <= reach for m, c in zip(measured, centre, strict=True))
            ):
                loss = min(loss, measured_loss)
        return here * (1.0 + loss) if margin <= loss < math.inf else None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": [[list(c), base, loss] for c, (base, loss) in self.losses.items()]}

    def load_state_dict(self, state: Mapping[str, Any], space: SearchSpace) -> None:
        """Absent from states saved before losses were inherited: nothing to inherit yet."""
        self.losses = {
            space.validate(c): (int(base), float(loss)) for c, base, loss in state.get("losses", [])
        }
