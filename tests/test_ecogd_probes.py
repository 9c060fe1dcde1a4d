"""EcoGD's batch-size probes: when one is due, which size, what its result is worth."""

from __future__ import annotations

import random

import pytest

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


# -- guided probes: the cost curve rules clear losers out ----------------------------------
def smooth(b: float, rate: float = 8.0) -> float:
    """A cost over batch size of the curve's shape: the fill wait (``b`` term) goes as one over
    the rate. At rate 8 b = 2 and 3 are best (0.65), b = 1 loses 15%, b = 7 and 8 22% and 29%."""
    return 0.4 + 0.3 / b + 0.4 * b / rate


def profiled(values: dict[int, float], every: int = 1, window: int = 1) -> Probes:
    """Probes whose profile holds ``values`` (batch index -> cost) against the centre's size."""
    p = probes(every)
    here = values[CENTRE[2]]
    for index, cost in values.items():
        p.observe((3, 3, index), cost, CENTRE, here, window, lambda loss: 100)
    return p


def sweep(p: Probes, start: int = 2, windows: int = 30) -> set[int]:
    rng, taken = random.Random(5), set()
    for window in range(start, start + windows):
        probe = p.next(CENTRE, window, rng, never)
        if probe is not None:
            taken.add(probe[2])
    return taken


def test_a_smooth_curve_rules_out_its_clear_losers_and_only_those() -> None:
    # sizes 1, 2, 4, 5 and 8 measured (indices 0, 1, 3, 4, 7); the centre is batch 5
    p = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)})
    # batch 1 measured 15% and more above the best, batch 7 and 8 predicted so
    assert all(p.ruled_out(i, 2) for i in (0, 6, 7))
    assert not p.ruled_out(1, 2) and not p.ruled_out(2, 2)  # the best, within the margin
    assert sweep(p) == {1, 2}  # of the far sizes 0, 1, 2, 6, 7 only those the curve keeps
    assert p.skipped > 0


def test_a_measured_batch_1_is_judged_by_its_measurement_not_by_the_curve() -> None:
    # sizes 2, 4, 5 and 8 on the smooth curve; batch 1 measured a third below the best (a
    # timer-bound load: it waits for nothing), which the curve through the rest cannot show
    values = {i: smooth(i + 1) for i in (1, 3, 4, 7)}
    unmeasured = profiled(values)
    assert unmeasured.ruled_out(0, 2)  # predicted by the curve, as any size
    values[0] = 0.66 * min(values.values())
    measured = profiled(values)
    assert not measured.ruled_out(0, 2) and measured.ruled_out(6, 2)


def test_a_rugged_curve_rules_nothing_out() -> None:
    """Bursts of 10 on sizes 1..8 scaled: batch 5 a valley between worse 4 and 6."""
    rugged = {0: 0.80, 1: 0.68, 2: 0.70, 3: 0.86, 4: 0.56, 5: 0.86, 6: 0.93, 7: 0.99}
    p = profiled(rugged)
    assert not any(p.ruled_out(i, 2) for i in rugged)
    assert sweep(p) == {0, 1, 2, 6, 7}  # every far size, as unguided
    unguided = Probes(p.batch, every=1, guided=False)
    unguided.profile.points = dict(p.profile.points)
    assert not unguided.ruled_out(7, 2)


def test_a_curve_through_a_few_near_sizes_does_not_speak_for_far_ones() -> None:
    near = profiled({i: smooth(i + 1) for i in (3, 4, 5)})  # three points: no residual yet
    assert not near.ruled_out(7, 2)
    # four neighbouring sizes (5..8, a span under 2x) speak only for one step beyond them
    span = probes()
    for index in (4, 5, 6, 7):
        span.observe((3, 3, index), smooth(index + 1), CENTRE, smooth(5), 1, lambda loss: 100)
    assert not span.ruled_out(0, 2)


def test_the_profile_is_anchored_on_the_centre_so_a_clock_step_leaves_it_alone() -> None:
    p = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)})
    before = p.profile.fresh(2)
    # every cost 10% lower at the centre's new clocks: each size keeps its ratio to the centre
    p.observe((2, 3, 7), 0.9 * smooth(8), (2, 3, 4), 0.9 * smooth(5), 3, lambda loss: 100)
    assert p.profile.fresh(3)[7] == pytest.approx(before[7])
    # a measurement at other clocks than the centre's is not on the profile
    p.observe((1, 1, 0), 5.0, CENTRE, smooth(5), 3, lambda loss: 100)
    assert p.profile.fresh(3)[0] == pytest.approx(before[0])


def test_a_load_change_keeps_the_clear_losers_moved_to_the_new_rate() -> None:
    p = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)})
    for index in (6, 7, 2):
        p.note(index, 1, 100)  # tried: batch 7 and 8 clear losers, batch 3 near the best
    p.load_changed(8.0, 24.0, 2)  # three times the rate: the fill wait a third
    moved = p.profile.fresh(2)
    # values moved by the fitted b term: near what the new rate's curve says
    for index, value in moved.items():
        b = index + 1
        assert value == pytest.approx(smooth(b, 24.0) * moved[4] / smooth(5, 24.0), rel=0.02)
    assert set(p.tried) == {i for i in (6, 7, 2) if p.ruled_out(i, 2)}
    # and back down to rate 4: batch 7 and 8 are clear losers again, and stay tried
    p.note(7, 2, 100)
    p.load_changed(24.0, 4.0, 3)
    assert p.ruled_out(7, 3) and 7 in p.tried


def test_without_a_curve_or_unguided_a_load_change_forgets_every_try() -> None:
    rugged = profiled({0: 0.80, 1: 0.68, 2: 0.70, 3: 0.86, 4: 0.56, 5: 0.86, 6: 0.93, 7: 0.99})
    rugged.note(7, 1, 100)
    rugged.load_changed(8.0, 24.0, 2)
    assert rugged.tried == {} and rugged.profile.points == {}
    smooth_one = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)})
    smooth_one.note(7, 1, 100)
    smooth_one.load_changed(None, 24.0, 2)  # the old rate unknown: nothing to move by
    assert smooth_one.tried == {}
    unguided = Probes(smooth_one.batch, every=1, guided=False)
    unguided.note(7, 1, 100)
    unguided.load_changed(8.0, 24.0, 2)
    assert unguided.tried == {}


def test_when_every_size_left_is_ruled_out_the_next_look_waits_a_period() -> None:
    p = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)}, every=5)
    for index in (0, 1, 2):
        p.note(index, 1, 100)  # the rest fresh from earlier tries
    assert p.next(CENTRE, 6, random.Random(0), never) is None
    assert p.since(6) == 0 and p.next(CENTRE, 7, random.Random(0), never) is None


def test_the_profile_survives_a_restart() -> None:
    p = profiled({i: smooth(i + 1) for i in (0, 1, 3, 4, 7)})
    state = p.state_dict(window=2)
    q = probes()
    q.load_state_dict(state, SPACE, window=2)
    assert q.state_dict(window=2) == state and q.ruled_out(7, 2)
    with pytest.raises(ValueError):
        probes().load_state_dict({**state, "profile": [[99, 1.0, 1, 10]]}, SPACE, window=2)
