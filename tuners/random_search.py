"""Random search: a uniformly random configuration every window, the no-skill reference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class Random(Tuner):
    """Draws a new configuration after each tell; asking again before a tell repeats it."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int | None = 0) -> None:
        super().__init__(space, seed)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._pending: Config | None = None
        self._best: Config | None = None
        self._best_cost: float | None = None

    def ask(self) -> Config:
        if self._pending is None:
            self._pending = self.space.random_config(self.rng)
        return self._pending

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        if self._best_cost is None or cost < self._best_cost:
            self._best, self._best_cost = config, cost
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            pending=None if self._pending is None else list(self._pending),
            best=None if self._best is None else list(self._best),
            best_cost=self._best_cost,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            pending = None if state["pending"] is None else self.space.validate(state["pending"])
            best = None if state["best"] is None else self.space.validate(state["best"])
            best_cost = None if best is None else finite_cost(state["best_cost"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        self._pending, self._best, self._best_cost = pending, best, best_cost

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "best": None if self._best is None else list(self._best),
            "best_cost": self._best_cost,
        }
