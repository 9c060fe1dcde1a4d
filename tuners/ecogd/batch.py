"""The batch-size knob as the strategies see it: which axis, which indices, what sizes."""

from __future__ import annotations

from dataclasses import dataclass

from ecoserve.core.knobs import BATCH, Config, SearchSpace


@dataclass(frozen=True)
class BatchAxis:
    """The batch-size knob of a space, with every index's size as a positive number (a
    space of plain indices counts from 1), for the models that divide by it."""

    axis: int
    floor: int
    top: int
    sizes: tuple[float, ...]

    @classmethod
    def of(cls, space: SearchSpace) -> BatchAxis | None:
        """The space's batch-size knob; None when it has none (the strategies then stand by)."""
        if not space.has(BATCH):
            return None
        axis = space.axis(BATCH)
        knob = space.knobs[axis]
        shift = max(0.0, 1.0 - float(min(knob.values)))
        return cls(axis, knob.floor, knob.top, tuple(float(v) + shift for v in knob.values))

    def indices(self) -> range:
        """The indices the tuner may choose, smallest first."""
        return range(self.floor, self.top + 1)

    def at(self, config: Config, index: int) -> Config:
        """``config`` with batch index ``index``."""
        axis = self.axis
        return config[:axis] + (index,) + config[axis + 1 :]

    def clocks(self, config: Config) -> Config:
        """``config`` without its batch size: what stretches a batch's time."""
        return config[: self.axis] + config[self.axis + 1 :]
