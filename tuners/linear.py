"""Linear search: sweep one knob over all its values, the others held at the best so far.

The paper's cheap baseline (a coordinate search). It keeps cycling over the knobs forever, so
it does follow a changing load, slowly, and it misses optima that need two knobs to move
together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class Linear(Tuner):
    """Sweeps knob 0 from its top down to its floor, settles it, then knob 1, and so on.

    A knob settles on the value that was cheapest in its own sweep, not on the cheapest ever
    seen: every sweep re-measures the current value, so a stale cost from another load never
    pins the search.
    """

    name = "linear"

    def __init__(self, space: SearchSpace, seed: int | None = 0) -> None:
        super().__init__(space, seed)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._base: Config = self.space.maximum()
        self._axis = 0
        self._value = self.space.knobs[0].top
        self._sweep_best: int | None = None
        self._sweep_best_cost = math.inf

    def ask(self) -> Config:
        b = self._base
        return b[: self._axis] + (self._value,) + b[self._axis + 1 :]

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        # Every window counts as the sweep's step, but credit goes to the value that actually
        # ran (a knob pinned by the operator differs from the one asked).
        if cost < self._sweep_best_cost:
            self._sweep_best, self._sweep_best_cost = config[self._axis], cost
        knob = self.space.knobs[self._axis]
        if self._value > knob.floor:
            self._value -= 1
            return
        assert self._sweep_best is not None
        self._base = self.space.with_value(self._base, knob.name, self._sweep_best)
        self._axis = (self._axis + 1) % self.space.dims
        self._value = self.space.knobs[self._axis].top
        self._sweep_best, self._sweep_best_cost = None, math.inf

    @property
    def best(self) -> Config:
        """The configuration the settled knobs describe."""
        return self._base

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            base=list(self._base),
            axis=self._axis,
            value=self._value,
            sweep_best=self._sweep_best,
            sweep_best_cost=None if self._sweep_best is None else self._sweep_best_cost,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            base = self.space.validate(state["base"])
            axis = int(state["axis"])
            value = int(state["value"])
            sweep_best = state["sweep_best"]
            cost = math.inf if sweep_best is None else finite_cost(state["sweep_best_cost"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        if not 0 <= axis < self.space.dims:
            raise ValueError(
                f"{self.name} state names knob {axis}, the space has {self.space.dims}"
            )
        self.space.validate(base[:axis] + (value,) + base[axis + 1 :])
        self._base, self._axis, self._value = base, axis, value
        self._sweep_best = None if sweep_best is None else int(sweep_best)
        self._sweep_best_cost = cost

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "best": list(self._base),
            "sweeping": self.space.knobs[self._axis].name,
            "value_index": self._value,
        }
