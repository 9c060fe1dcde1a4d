"""EcoGD's batch-size scans: which sizes they measure, in what order, and what they hand back."""

from __future__ import annotations

from collections.abc import Callable

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.scan import BatchScan, ScanEnd

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(3))), Knob(GPU, tuple(range(3))), Knob(BATCH, tuple(range(1, 17)))
)
CENTRE = (2, 2, 15)


def batch() -> BatchAxis:
    axis = BatchAxis.of(SPACE)
    assert axis is not None
    return axis


def smooth(config: Config) -> float:
    """``0.4 + 0.6 / b + 0.04 * b``: best at b = 4."""
    b = config[2] + 1
    return 0.4 + 0.6 / b + 0.04 * b


def safe(config: Config) -> bool:
    return False


def run(
    scan: BatchScan,
    cost: Callable[[Config], float] = smooth,
    unsafe: Callable[[Config], bool] = safe,
) -> tuple[list[int], ScanEnd | None]:
    """Run the scan to its end; the batch sizes it measured, in order, and its outcome."""
    asked: list[int] = []
    while True:
        step = scan.ask(CENTRE, unsafe)
        if not isinstance(step, tuple):
            return asked, step
        asked.append(step[2] + 1)
        assert scan.record(step, cost(step), CENTRE)


def test_the_unguided_scan_measures_every_size_largest_first() -> None:
    scan = BatchScan(batch(), opening=True, guided=False)
    assert scan.opening
    asked, end = run(scan)
    assert asked == list(range(16, 0, -1))
    assert end is not None and end.best == 3 and len(end.costs) == 16
    assert not scan.running


def test_the_guided_scan_skips_clear_losers_and_predicts_them() -> None:
    scan = BatchScan(batch(), opening=True, guided=True, margin=0.05)
    asked, end = run(scan)
    assert asked[:3] == [16, 4, 2] and sorted(asked) == [2, 3, 4, 5, 6, 16]
    assert end is not None and end.best == 3
    assert set(end.costs) == set(range(16))  # skipped sizes carry their predicted cost
    assert end.costs[10] > end.costs[3]


def test_the_guided_scan_leaves_out_unsafe_sizes() -> None:
    scan = BatchScan(batch(), opening=True, guided=True)
    asked, _ = run(scan, unsafe=lambda c: c[2] < 4)  # sizes 1-4 cannot carry the peak
    assert min(asked) >= 5


def test_a_research_measures_the_given_sizes_then_ends() -> None:
    scan = BatchScan(batch(), opening=False)
    assert not scan.running and scan.state_dict() == {"scan": None, "scan_order": None}
    scan.start([7, 8, 6])
    assert scan.running and not scan.opening
    asked, end = run(scan)
    assert asked == [8, 9, 7] and end is not None and end.best == 6  # size 7


def test_only_the_centre_at_some_batch_size_is_recorded() -> None:
    scan = BatchScan(batch(), opening=True)
    assert not scan.record((1, 2, 4), 1.0, CENTRE)  # other clocks
    assert scan.record((2, 2, 4), 1.0, CENTRE)
    scan.stop()
    assert not scan.record((2, 2, 4), 1.0, CENTRE)


def test_an_empty_scan_ends_with_nothing_and_the_state_round_trips() -> None:
    scan = BatchScan(batch(), opening=True, guided=False)
    scan.start([])
    assert scan.ask(CENTRE, lambda c: False) == (2, 2, 15)  # an empty order means every size
    scan.record((2, 2, 15), 0.5, CENTRE)
    state = scan.state_dict()
    other = BatchScan(batch(), opening=False)
    other.load_state_dict(state)
    assert other.state_dict() == state == {"scan": [[15, 0.5]], "scan_order": []}
