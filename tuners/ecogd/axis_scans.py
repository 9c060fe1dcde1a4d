"""Opening scans over several batch-size knobs (models sharing a board), one after another.

With one batch-size knob per model the single-knob strategies stand by (``batch``), and a
climber starting from every knob at maximum would walk each model's batch size down one
step per decision, each step costing a measurement of every axis neighbour. So before it
climbs, each model's batch size is scanned in turn at the clocks in force, exactly as the
single-knob opening scan does (``scan``: guided by the cost curve over batch size), the
centre moving to each scan's cheapest size before the next model's scan.

A scan of one model's batch size reads that model's own cost (``cost:<model>`` in the
window's metrics, from the controller) where it is given: the joint cost is a mean weighted by
each window's traffic mix, and on bursty traces the mix moves it far more than one model's
batch size does (a window that happens to hold many requests of a cheap model looks cheap).
A window in which the model served nothing is measured again. Without per-model costs (a
tuner told only the joint cost) the joint cost is scanned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecoserve.core.knobs import Config
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.scan import BatchScan, ScanEnd


class AxisScans:
    """One opening scan per batch-size knob, run in knob order before the climb;
    ``models``: the model each knob belongs to (its ``cost:<model>`` in the metrics)."""

    def __init__(
        self,
        axes: Sequence[BatchAxis],
        models: Sequence[str],
        guided: bool = True,
        margin: float = 0.05,
    ):
        if len(axes) != len(models):
            raise ValueError(f"one model per batch knob: {len(axes)} knobs, {list(models)}")
        self.scans = [BatchScan(axis, True, guided, margin) for axis in axes]
        self.models = tuple(models)
        self.reset()

    def reset(self) -> None:
        for scan in self.scans:
            scan.reset()
        self.current = 0
        # what each scanned configuration cost each model (for the next scan's first size)
        self._seen: dict[Config, dict[str, float]] = {}

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
                    seen = self._seen.get(centre)
                    cost = (
                        step.costs[step.best]
                        if seen is None
                        else seen.get(self.models[self.current + 1])
                    )
                    if cost is not None:
                        self.scans[self.current + 1].record(centre, cost, centre)
            elif step is not None:
                return step, centre
            self.current += 1
        return None, centre

    def record(
        self, config: Config, cost: float, centre: Config, metrics: Mapping[str, float]
    ) -> bool:
        """Keep ``config``'s cost for the running scan (its model's own where the metrics
        give it); True when it was one of the scan's sizes."""
        if not self.running:
            return False
        own = {
            m: float(metrics[f"cost:{m}"])
            for m in self.models
            if f"cost:{m}" in metrics and metrics.get(f"requests:{m}", 0.0) > 0
        }
        if any(key.startswith("cost:") for key in metrics):
            self._seen[config] = own
            value = own.get(self.models[self.current])
            if value is None:
                return False  # the model served nothing: measure it again
            cost = value
        return self.scans[self.current].record(config, cost, centre)

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
