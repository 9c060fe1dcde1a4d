"""EcoGD's load following: alarms, what the next window settles, and the levels remembered."""

from __future__ import annotations

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.climber import Measurement
from tuners.ecogd.load_following import LoadFollowing, Settled

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(5))), Knob(GPU, tuple(range(5))), Knob(BATCH, tuple(range(1, 17)))
)
CENTRE = (2, 2, 7)  # batch 8
HISTORY: dict[Config, Measurement] = {
    CENTRE: (1.0, 38, 20),
    (1, 2, 7): (1.2, 39, 20),
    (2, 2, 8): (1.5, 40, 60),
    (4, 4, 0): (3.0, 30, 20),  # not a neighbour of the centre
}


def follower(**options: object) -> LoadFollowing:
    return LoadFollowing(memory=20, batch=BatchAxis.of(SPACE), **options)  # type: ignore[arg-type]


Change = tuple[dict[Config, Measurement], float | None] | None


def feed(load: LoadFollowing, rate: float, windows: int, **kw: object) -> list[Change]:
    args = {"opening": False, "scanning": False, "centre": CENTRE, "history": HISTORY, **kw}
    return [load.observe(rate, rate * 30, **args) for _ in range(windows)]  # type: ignore[arg-type]


def test_a_steady_load_raises_no_alarm() -> None:
    load = follower()
    assert feed(load, 8.0, 30) == [None] * 30
    assert load.changes == 0 and not load.refine and load.level_rate is not None


def test_a_step_alarms_then_the_next_window_hands_back_what_was_known() -> None:
    load = follower()
    feed(load, 8.0, 30)
    assert feed(load, 24.0, 1) == [None]
    assert load.refine and load.changes == 1 and load.before == HISTORY
    [change] = feed(load, 24.0, 1)
    assert change is not None and change[0] == HISTORY
    assert change[1] is not None and abs(change[1] - 8.0) < 1e-9  # the level left
    assert not load.refine and load.before == {}


def test_alarms_during_the_opening_scan_are_ignored() -> None:
    load = follower()
    feed(load, 8.0, 30, opening=True)
    assert feed(load, 24.0, 3, opening=True) == [None] * 3 and not load.refine


def test_a_new_far_level_carries_scaled_costs_and_researches_batch_sizes() -> None:
    load = follower(research_sizes=3, carry_life=0.5)
    feed(load, 8.0, 30)
    feed(load, 32.0, 1)
    [change] = feed(load, 32.0, 1)
    assert change is not None
    settled = load.settle(*change, CENTRE, 2.0, CENTRE, window=45)
    assert settled.centre is None
    # every cost doubled (the centre's own ratio), at most half a memory left to live
    assert settled.known[CENTRE] == (2.0, 45, 10) and settled.known[(2, 2, 8)] == (3.0, 45, 10)
    assert settled.known[(4, 4, 0)] == (6.0, 45, 5)  # no more than it had left
    # batch 8 x sqrt(4) = 16: the three sizes nearest it
    assert settled.research == [15, 14, 13]


def test_without_a_cost_on_both_sides_nothing_is_carried() -> None:
    load = follower()
    assert load.settle(HISTORY, 8.0, (0, 0, 0), 2.0, CENTRE, window=45) == Settled()


def test_a_level_met_again_comes_back_with_its_centre_and_neighbourhood() -> None:
    load = follower()
    feed(load, 8.0, 30)
    feed(load, 24.0, 1)  # leaving 8/s: its centre and neighbourhood are remembered
    assert list(load.levels.values()) == [(CENTRE, {CENTRE: 1.0, (1, 2, 7): 1.2, (2, 2, 8): 1.5})]
    [change] = feed(load, 24.0, 1)
    assert change is not None
    load.settle(*change, CENTRE, 2.0, CENTRE, window=45)
    elsewhere = (0, 0, 3)
    feed(load, 24.0, 30, centre=elsewhere, history={elsewhere: (2.5, 70, 20)})
    feed(load, 8.0, 1, centre=elsewhere, history={elsewhere: (2.5, 70, 20)})
    [change] = feed(load, 8.0, 1, centre=elsewhere, history={elsewhere: (2.5, 70, 20)})
    assert change is not None
    settled = load.settle(*change, elsewhere, 1.4, elsewhere, window=80)
    assert settled.centre == CENTRE and settled.known[CENTRE] == (1.0, 80, 20)
    assert settled.research == [] and len(load.levels) == 2


def test_without_level_memory_nothing_is_remembered() -> None:
    load = follower(level_memory=False)
    feed(load, 8.0, 30)
    feed(load, 24.0, 2)
    assert load.levels == {}


def test_the_state_round_trips() -> None:
    load = follower()
    feed(load, 8.0, 30)
    feed(load, 24.0, 1)
    state = load.state_dict()
    other = follower()
    other.load_state_dict(state, SPACE)
    assert other.state_dict() == state
