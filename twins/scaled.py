"""Another model on the same board: the board twin's batch time scaled by a cost factor.

The fitted twins were measured with one model (MobileNet). A board that serves several
models needs each one's batch time; the stated model here is that a model which costs
``factor`` times as much as the twin's own takes ``factor`` times as long per batch at every
batch size and clock, and that the board draws the same power while it runs (so its joules
per batch scale by ``factor`` too). Measured: the factors (``ecoserve.replay.shared_board``
says how). Modelled, not measured: that one factor holds at every batch size and clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ecoserve.core.knobs import Knob
from twins.base import DeviceTwin


@dataclass
class ScaledTwin(DeviceTwin):
    """``base``'s board running a model ``factor`` times as costly as ``base``'s own."""

    base: DeviceTwin
    factor: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(
                f"a model's cost factor must be a finite number > 0 (its batch time relative "
                f"to the twin's model), got {self.factor!r}"
            )
        self.noise = self.base.noise
        self.power_noise = self.base.power_noise
        self.name = f"{self.base.name}*{self.factor:g}"

    def knobs(self) -> list[Knob]:
        return self.base.knobs()

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return self.factor * self.base.batch_time(batch, freqs)

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return self.base.power(freqs, busy, batch=batch)
