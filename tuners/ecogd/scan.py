"""Batch-size scans: measure several batch sizes at the centre's clocks, then climb from the
cheapest.

The opening scan runs before any climbing. Walking down from the largest batch costs three
or more windows a step and stops at the first bump of a rugged landscape; a scan costs one
window a size. Unguided it measures every size, largest first. Guided, it fits a cost curve
over batch size, ``c0 + c1 / b + c2 * b``, after each size (``tuners.batch_curve``): it
measures sizes 16, 4 and 2 (of 1..16), then, cheapest predicted first, only the sizes
predicted within ``margin`` (plus the fit's residual) of the best measured, and every size
when the residuals say the curve is rugged (a burst-aligned valley). Sizes the capacity guard
calls unsafe are not scanned at all (the curve has no term for a queue), guided or not, in
the opening scan and in a re-search alike (when that leaves none, the scan ends and the
climb takes the centre to the guard's refuge). A re-search (``start``) measures a given list
of sizes instead.

At the end every size's cost, measured or predicted, is handed back so that it counts as a
sweep of probes: a skipped size is probed once its predicted loss is stale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.core.knobs import Config
from ecoserve.core.tuner import finite_cost
from tuners.batch_curve import next_size
from tuners.ecogd.batch import BatchAxis


@dataclass(frozen=True)
class ScanEnd:
    """A finished scan: the cheapest measured batch index and every size's cost (measured,
    or predicted by the curve for the sizes it skipped)."""

    best: int
    costs: Mapping[int, float]


class BatchScan:
    """The running scan, if any. ``opening``: a fresh tuner starts with one."""

    def __init__(
        self, batch: BatchAxis, opening: bool, guided: bool = True, margin: float = 0.05
    ) -> None:
        self.batch = batch
        self.opening_scan = opening
        self.guided = guided
        self.margin = float(margin)
        self.reset()

    def reset(self) -> None:
        # batch index -> cost, while a scan runs; None once it is over (or off)
        self.results: dict[int, float] | None = {} if self.opening_scan else None
        # batch indices the running scan measures, in order (None: the opening scan's)
        self.order: list[int] | None = None

    @property
    def running(self) -> bool:
        return self.results is not None

    @property
    def opening(self) -> bool:
        """True while the opening scan (not a re-search) runs."""
        return self.results is not None and self.order is None

    def start(self, order: Sequence[int]) -> None:
        """Re-search: measure these batch indices, in this order."""
        self.results, self.order = {}, list(order)

    def stop(self) -> None:
        self.results, self.order = None, None

    def record(self, config: Config, cost: float, centre: Config) -> bool:
        """Keep ``config``'s cost when it is the centre at some batch size; True if kept."""
        index = config[self.batch.axis]
        if self.results is None or config != self.batch.at(centre, index):
            return False
        self.results[index] = cost
        return True

    def ask(self, centre: Config, unsafe: Callable[[Config], bool]) -> Config | ScanEnd | None:
        """The next configuration to measure; at the scan's end the outcome (None when it
        measured nothing), and the scan is over."""
        results, batch = self.results, self.batch
        assert results is not None
        predicted: dict[int, float] = {}
        if self.order is None and self.guided:
            indices = [i for i in batch.indices() if not unsafe(batch.at(centre, i))]
            if indices:
                index, predicted = next_size(
                    results, indices, [batch.sizes[i] for i in indices], self.margin
                )
                if index is not None:
                    return batch.at(centre, index)
        else:
            for index in self.order or range(batch.top, batch.floor - 1, -1):
                if index not in results and not unsafe(batch.at(centre, index)):
                    return batch.at(centre, index)
        self.stop()
        if not results:
            return None
        return ScanEnd(min(results, key=results.__getitem__), {**predicted, **results})

    def state_dict(self) -> dict[str, Any]:
        results = self.results
        return {
            "scan": None if results is None else [[i, c] for i, c in results.items()],
            "scan_order": self.order,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Absent from states saved before the scans existed: past any scan."""
        saved = state.get("scan")
        results = None if saved is None else {int(i): finite_cost(c) for i, c in saved}
        order = state.get("scan_order")
        self.results, self.order = results, None if order is None else [int(i) for i in order]
