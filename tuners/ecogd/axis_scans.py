"""Opening scans over several batch-size knobs (models sharing a board), one after another.

With one batch-size knob per model the single-knob strategies stand by (``batch``), and a
climber starting from every knob at maximum would walk each model's batch size down one
step per decision, each step costing a measurement of every axis neighbour. So before it
climbs, each model's batch size is scanned in turn at the clocks in force, exactly as the
single-knob opening scan does (``scan``: guided by the cost curve over batch size), the
centre moving to each scan's cheapest size before the next model's scan. Changing one
model's batch size leaves the other models' costs alone, so the joint cost's curve over that
size has the single-model shape plus a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecoserve.core.knobs import Config
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.scan import BatchScan, ScanEnd


class AxisScans:
    """One opening scan per batch-size knob, run in knob order before the climb."""

    def __init__(self, axes: Sequence[BatchAxis], guided: bool = True, margin: float = 0.05):
        self.scans = [BatchScan(axis, True, guided, margin) for axis in axes]
        self.reset()

    def reset(self) -> None:
        for scan in self.scans:
            scan.reset()
        self.current = 0

    @property
    def running(self) -> bool:
        return self.current < len(self.scans)

    def ask(self, centre: Config) -> tuple[Config | None, Config]:
        """The next configuration to measure (None once every scan is over), and the centre
        (moved to the cheapest size of each scan that ended)."""
        while self.current < len(self.scans):
            scan = self.scans[self.current]
            step = scan.ask(centre, _never)
            if isinstance(step, ScanEnd):
                centre = scan.batch.at(centre, step.best)
                if self.current + 1 < len(self.scans):  # the centre is the next scan's first size
                    self.scans[self.current + 1].record(centre, step.costs[step.best], centre)
            elif step is not None:
                return step, centre
            self.current += 1
        return None, centre

    def record(self, config: Config, cost: float, centre: Config) -> bool:
        """Keep ``config``'s cost for the running scan; True when it was one of its sizes."""
        return self.running and self.scans[self.current].record(config, cost, centre)

    def state_dict(self) -> dict[str, Any]:
        return {"axis_scans": [s.state_dict() for s in self.scans], "axis_scan": self.current}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Absent from a state saved before the scans existed: past every scan. Raises
        ValueError on a malformed one."""
        saved = state.get("axis_scans")
        if saved is None:
            for scan in self.scans:
                scan.stop()
            self.current = len(self.scans)
            return
        if not isinstance(saved, list) or len(saved) != len(self.scans):
            raise ValueError(f"axis_scans: expected {len(self.scans)} scans, got {saved!r}")
        current = int(state.get("axis_scan", len(self.scans)))
        if not 0 <= current <= len(self.scans):
            raise ValueError(f"axis_scan {current} outside 0..{len(self.scans)}")
        for scan, part in zip(self.scans, saved, strict=True):
            if not isinstance(part, Mapping):
                raise ValueError(f"axis_scans: expected an object per scan, got {part!r}")
            scan.load_state_dict(part)
        self.current = current


def _never(config: Config) -> bool:
    return False
