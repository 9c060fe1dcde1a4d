"""EcoGD's capacity guard: what the batch-time model calls unsafe, and where the centre goes."""

from __future__ import annotations

from ecoserve.core.knobs import BATCH, CPU, GPU, Knob, SearchSpace
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.capacity import CapacityGuard

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(3))), Knob(GPU, tuple(range(3))), Knob(BATCH, tuple(range(1, 9)))
)


def batch() -> BatchAxis:
    axis = BatchAxis.of(SPACE)
    assert axis is not None
    return axis


def guard(headroom: float = 1.0) -> CapacityGuard:
    g = CapacityGuard(SPACE, batch(), headroom)
    # at maximum clocks a batch takes 0.1 s + 0.05 s an item: 1 item 6.7/s ... 8 items 16/s
    for items in (1, 4, 8):
        busy = 0.1 + 0.05 * items
        g.observe(
            (2, 2, items - 1), {"batches": 10.0, "busy_s": 10 * busy, "requests": 10.0 * items}
        )
    return g


def test_nothing_is_unsafe_while_the_peak_or_the_model_is_unknown() -> None:
    g = guard()
    assert not g.unsafe((2, 2, 0), None)
    fresh = CapacityGuard(SPACE, batch())
    assert fresh.capacity((2, 2, 0)) is None and not fresh.unsafe((2, 2, 0), 1000.0)


def test_a_configuration_below_the_peak_is_unsafe() -> None:
    g = guard()
    small, large = g.capacity((2, 2, 0)), g.capacity((2, 2, 7))
    assert small is not None and large is not None and small < 10.0 < large
    assert g.unsafe((2, 2, 0), 10.0) and not g.unsafe((2, 2, 7), 10.0)
    assert guard(headroom=2.0).unsafe((2, 2, 7), 10.0)  # 16/s does not carry 2 x 10/s


def test_slower_clocks_are_bounded_by_a_measured_faster_setting() -> None:
    g = guard()
    assert g.capacity((1, 1, 7)) == g.capacity((2, 2, 7))  # unmeasured: at most that


def test_the_refuge_is_maximum_clocks_with_the_smallest_safe_batch() -> None:
    g = guard()
    refuge = g.refuge(10.0)
    assert refuge[:2] == (2, 2)
    assert not g.unsafe(refuge, 10.0) and g.unsafe((2, 2, refuge[2] - 1), 10.0)
    assert g.refuge(1000.0) == SPACE.maximum()  # none carries it: the largest
