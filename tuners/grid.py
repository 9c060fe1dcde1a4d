"""Grid search: measure every point of a strided grid once, then keep the best forever.

The paper's brute-force baseline: optimal on a static workload once done, but it spends one
window on every grid point first, and never reacts when the load changes afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class Grid(Tuner):
    """Visits the grid from the maximum downwards, then exploits the cheapest point measured.

    Each knob's grid holds its top index and goes down by a stride, chosen so that no knob has
    more than ``points_per_knob`` values and every index lies as near a grid point as that
    allows; ``strides`` (one positive int per knob) overrides the choice.
    """

    name = "grid"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        points_per_knob: int = 5,
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__(space, seed)
        if strides is None:
            if points_per_knob < 1:
                raise ValueError(f"points_per_knob must be at least 1, got {points_per_knob}")
            strides = [_stride(k.top - k.floor, points_per_knob) for k in space.knobs]
        elif len(strides) != space.dims or any(int(s) < 1 for s in strides):
            raise ValueError(
                f"strides must be {space.dims} positive integers (one per knob of "
                f"{space.describe()}), got {list(strides)}"
            )
        self.points_per_knob = points_per_knob
        self.strides = tuple(int(s) for s in strides)
        # Per knob, descending so the first grid point is the all-maximum baseline.
        self._axes = tuple(
            tuple(range(k.top, k.floor - 1, -s))
            for k, s in zip(space.knobs, self.strides, strict=True)
        )
        self.reset()

    @property
    def grid_size(self) -> int:
        return math.prod(len(a) for a in self._axes)

    @property
    def done(self) -> bool:
        return self._next >= self.grid_size

    def reset(self) -> None:
        super().reset()
        self._next = 0  # position of the next grid point to measure
        self._best: Config | None = None
        self._best_cost = math.inf

    def ask(self) -> Config:
        if self.done:
            assert self._best is not None
            return self._best
        return self._point(self._next)

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        if self.done:
            return  # the choice is final
        # Every window uses up the grid point asked for; the cost belongs to what actually ran
        # (it differs when the operator pins a knob).
        if cost < self._best_cost:
            self._best, self._best_cost = config, cost
        self._next += 1

    def _point(self, position: int) -> Config:
        """The grid point at ``position`` in mixed radix, the last knob varying fastest."""
        out = []
        for axis in reversed(self._axes):
            position, digit = divmod(position, len(axis))
            out.append(axis[digit])
        return tuple(reversed(out))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            next=self._next,
            best=None if self._best is None else list(self._best),
            best_cost=None if self._best is None else self._best_cost,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            position = int(state["next"])
            best = None if state["best"] is None else self.space.validate(state["best"])
            best_cost = math.inf if best is None else finite_cost(state["best_cost"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        if not 0 <= position <= self.grid_size or (position and best is None):
            raise ValueError(f"{self.name} state does not fit a grid of {self.grid_size} points")
        self._next, self._best, self._best_cost = position, best, best_cost

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "measured": min(self._next, self.grid_size),
            "grid_size": self.grid_size,
            "best": None if self._best is None else list(self._best),
            "best_cost": None if self._best is None else self._best_cost,
        }


def _stride(span: int, points: int) -> int:
    """The stride over ``span + 1`` indices giving at most ``points`` values, top included,
    that leaves no index far from a grid point (ties: the smaller stride, more points)."""
    best = (span + 1, span + 1)  # (radius, stride): one point, the top
    for stride in range(1, span + 1):
        count = span // stride + 1
        if count <= points:
            radius = max(stride // 2, span - (count - 1) * stride)
            best = min(best, (radius, stride))
    return best[1]
