"""EcoGD's batch-size probes: when one is due, which size, what its result is worth."""

from __future__ import annotations

import random

from ecoserve.core.knobs import BATCH, CPU, GPU, Knob, SearchSpace
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.probes import Probes

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(4))), Knob(GPU, tuple(range(4))), Knob(BATCH, tuple(range(1, 9)))
)
BATCH_AXIS = BatchAxis.of(SPACE)
CENTRE = (3, 3, 4)


def probes(every: int = 5) -> Probes:
    assert BATCH_AXIS is not None
    return Probes(BATCH_AXIS, every)


def never(_: object) -> bool:
    return False


def test_a_probe_is_due_every_few_windows_at_a_far_batch_size() -> None:
    p, rng = probes(every=5), random.Random(0)
    assert p.next(CENTRE, 4, rng, never) is None
    probe = p.next(CENTRE, 5, rng, never)
    assert probe is not None and probe[:2] == CENTRE[:2] and abs(probe[2] - CENTRE[2]) > 1
    assert p.pending == probe and p.count == 1 and p.since(5) == 0
    assert p.next(CENTRE, 9, rng, never) is None  # the next is due five windows on
    assert p.take() == probe and p.take() is None  # weighed by one decision only


def test_a_sweep_takes_every_far_size_once_then_starts_over() -> None:
    p, rng = probes(every=1), random.Random(1)
    sizes = []
    for window in range(1, 6):
        probe = p.next(CENTRE, window, rng, never)
        assert probe is not None
        sizes.append(probe[2])
    assert sorted(sizes) == [0, 1, 2, 6, 7]  # all but the centre's and its ±1
    assert p.next(CENTRE, 6, rng, never) is not None  # a new shuffled sweep


def test_sizes_that_lost_by_far_or_are_unsafe_are_skipped() -> None:
    p, rng = probes(every=1), random.Random(2)
    for index in (0, 1, 2, 6):
        p.note(index, 10, 50)  # tried at window 10, fresh for 50
    assert p.next(CENTRE, 11, rng, lambda c: False) == (3, 3, 7)
    q = probes(every=1)
    assert q.next(CENTRE, 11, random.Random(2), lambda c: c[2] != 0) == (3, 3, 0)
    assert probes(every=0).next(CENTRE, 100, rng, never) is None  # off


def test_a_probe_result_is_kept_with_the_life_of_its_loss() -> None:
    p, rng = probes(every=1), random.Random(3)
    probe = p.next(CENTRE, 1, rng, never)
    assert probe is not None
    p.measured(probe, 1.5, 1.0, 2, lambda loss: round(100 * loss))
    assert p.tried == {probe[2]: (2, 50)}
    p.measured((0, 0, 0), 1.5, 1.0, 2, lambda loss: 1)  # not the probe: nothing noted
    assert p.tried == {probe[2]: (2, 50)}


def test_the_state_keeps_the_windows_since_the_last_probe() -> None:
    p = probes(every=3)
    p.next(CENTRE, 7, random.Random(4), never)
    state = p.state_dict(window=12)
    assert state["since_probe"] == 5 and state["probes"] == 1
    q = probes(every=3)
    q.load_state_dict(state, SPACE, window=12)
    assert q.state_dict(window=12) == state and q.since(13) == 6
