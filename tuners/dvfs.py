"""DVFS: leave the frequencies to the operating system's governors, fix the batch size.

What an untuned box does (CPU ``schedutil``, Jetson GPU ``nvhost_podgov``), the reference the
paper compares every tuner against, with batch sizes 8 and 16.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


class DVFS(Tuner):
    """Always asks for the same configuration; the frequency knobs in it are only nominal.

    ``governed_knobs`` tells the actuators to hand the CPU and GPU frequencies back to their
    governors, so the indices asked for them (their maximum) are never applied. The batch knob
    takes the available value nearest to ``batch_size``; any other knob stays at its maximum.
    """

    name = "dvfs"

    def __init__(self, space: SearchSpace, seed: int | None = 0, batch_size: int = 8) -> None:
        super().__init__(space, seed)
        self.batch_size = batch_size
        config = space.maximum()
        if space.has(BATCH):
            knob = space.knobs[space.axis(BATCH)]
            config = space.with_value(config, BATCH, max(knob.floor, knob.index_of(batch_size)))
        self._config: Config = config
        self._governed = frozenset(n for n in (CPU, GPU) if space.has(n))

    def ask(self) -> Config:
        return self._config

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        self.space.validate(config)
        finite_cost(cost)

    def governed_knobs(self) -> frozenset[str]:
        return self._governed

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "governed": sorted(self._governed),
            "config": list(self._config),
        }
