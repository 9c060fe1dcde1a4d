"""The batch-size knob as the strategies see it: which axis, which indices, what sizes."""

from __future__ import annotations

from dataclasses import dataclass

from ecoserve.core.knobs import Config, SearchSpace, is_batch_knob


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
        """The space's one batch-size knob (``batch_size``, or one model's own
        ``batch_size:<model>``); None when it has none or several (models sharing a board):
        the strategies then stand by."""
        names = [k.name for k in space.knobs if is_batch_knob(k.name)]
        if len(names) != 1:
            return None
        axis = space.axis(names[0])
        knob = space.knobs[axis]
        shift = max(0.0, 1.0 - float(min(knob.values)))
        return cls(axis, knob.floor, knob.top, tuple(float(v) + shift for v in knob.values))

    @classmethod
    def every(cls, space: SearchSpace) -> list[BatchAxis]:
        """Every batch-size knob of the space (one per model on a shared board)."""
        out = []
        for axis, knob in enumerate(space.knobs):
            if is_batch_knob(knob.name):
                shift = max(0.0, 1.0 - float(min(knob.values)))
                sizes = tuple(float(v) + shift for v in knob.values)
                out.append(cls(axis, knob.floor, knob.top, sizes))
        return out

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
