"""Fixed: always the same configuration, for tests and as a static reference point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class Fixed(Tuner):
    """Asks for ``config`` (index tuple; default every knob at its maximum) every window."""

    name = "fixed"

    def __init__(
        self, space: SearchSpace, seed: int | None = 0, config: Sequence[int] | None = None
    ) -> None:
        super().__init__(space, seed)
        self.config: Config = space.maximum() if config is None else space.validate(config)

    def ask(self) -> Config:
        return self.config

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        self.space.validate(config)
        finite_cost(cost)

    def describe(self) -> dict[str, Any]:
        return {"tuner": self.name, "config": list(self.config)}
