"""The reference tuners' rules (grid, linear, DVFS, bandits, Bayesian, fixed, random) and
the registry, plus a property test of every cheap tuner on arbitrary small spaces."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace, batch_knob
from tuners import (
    DVFS,
    MAB,
    TUNERS,
    Bayesian,
    Fixed,
    Grid,
    Linear,
    MABJoint,
    Random,
    Tuner,
    make_tuner,
)


def nx_space(batch: Knob | None = None) -> SearchSpace:
    return SearchSpace.of(
        Knob(CPU, tuple(range(25))), Knob(GPU, tuple(range(15))), batch or batch_knob(16)
    )


def run(tuner: Tuner, cost: Callable[[Config], float], steps: int) -> list[Config]:
    asked = []
    for _ in range(steps):
        c = tuner.ask()
        tuner.tell(c, cost(c))
        asked.append(c)
    return asked


# -- grid ------------------------------------------------------------------------------------
def test_grid_points_include_each_maximum_and_respect_the_cap() -> None:
    space = nx_space()
    grid = Grid(space, points_per_knob=5)
    points = run(grid, lambda c: 1.0, grid.grid_size)
    assert points[0] == space.maximum()
    assert len(set(points)) == grid.grid_size
    for axis, knob in enumerate(space.knobs):
        values = {p[axis] for p in points}
        assert knob.top in values and len(values) <= 5
    assert {p[0] for p in points} == {24, 18, 12, 6, 0}


def test_grid_keeps_the_best_forever_even_when_costs_change() -> None:
    space = nx_space()
    grid = Grid(space, strides=(12, 7, 8))
    assert grid.grid_size == 3 * 3 * 2
    target = (12, 7, 15)
    run(grid, lambda c: 0.5 if c == target else 2.0, grid.grid_size)
    assert grid.done
    assert run(grid, lambda c: 9.0, 20) == [target] * 20


def test_grid_with_one_point_per_knob_is_the_maximum() -> None:
    space = nx_space()
    grid = Grid(space, points_per_knob=1)
    assert grid.grid_size == 1 and grid.ask() == space.maximum()


def test_grid_rejects_bad_strides() -> None:
    with pytest.raises(ValueError, match="strides"):
        Grid(nx_space(), strides=(1, 2))
    with pytest.raises(ValueError, match="strides"):
        Grid(nx_space(), strides=(1, 0, 1))


# -- linear ----------------------------------------------------------------------------------
def test_linear_sweeps_one_knob_at_a_time_from_the_best_so_far() -> None:
    space = SearchSpace.of(Knob(CPU, tuple(range(4))), Knob(GPU, tuple(range(3))))

    def cost(c: Config) -> float:
        return abs(c[0] - 1) + abs(c[1] - 2) * 0.5

    tuner = Linear(space)
    asked = run(tuner, cost, 4 + 3 + 4)
    assert asked[:4] == [(3, 2), (2, 2), (1, 2), (0, 2)]
    assert asked[4:7] == [(1, 2), (1, 1), (1, 0)]  # CPU settled on 1
    assert asked[7:] == [(3, 2), (2, 2), (1, 2), (0, 2)]  # and it cycles
    assert tuner.best == (1, 2)


def test_linear_credits_the_value_that_ran_when_a_knob_is_pinned() -> None:
    space = SearchSpace.of(Knob(CPU, tuple(range(4))), Knob(GPU, tuple(range(3))))
    tuner = Linear(space)
    for _ in range(4):  # the operator holds the CPU at index 2
        tuner.tell((2, tuner.ask()[1]), 1.0)
    assert tuner.best == (2, 2) and tuner.ask() == (2, 2)


# -- DVFS ------------------------------------------------------------------------------------
def test_dvfs_hands_the_frequencies_to_the_governors() -> None:
    space = nx_space()
    dvfs = DVFS(space)
    assert dvfs.governed_knobs() == frozenset({CPU, GPU})
    assert space.values(dvfs.ask())[BATCH] == 8
    assert space.values(DVFS(space, batch_size=16).ask())[BATCH] == 16
    # Nearest available batch size, and only the frequency knobs that exist are governed.
    only_cpu = SearchSpace.of(Knob(CPU, (1.0, 2.0)), Knob(BATCH, (1.0, 4.0, 12.0)))
    d = DVFS(only_cpu, batch_size=8)
    assert d.governed_knobs() == frozenset({CPU})
    assert only_cpu.values(d.ask())[BATCH] == 4.0
    assert run(d, lambda c: 1.0, 5) == [d.ask()] * 5


def test_other_tuners_govern_nothing() -> None:
    space = nx_space()
    for name, cls in TUNERS.items():
        if cls is not DVFS:
            assert make_tuner(name, space).governed_knobs() == frozenset(), name


# -- bandits ---------------------------------------------------------------------------------
def test_mab_changes_one_knob_per_ask_round_robin() -> None:
    space = nx_space()
    tuner = MAB(space, epsilon=0.5, seed=3)
    previous = space.maximum()
    rng = random.Random(0)
    moved_total = 0
    for i in range(60):
        c = tuner.ask()
        moved = {a for a in range(3) if c[a] != previous[a]}
        assert moved <= {i % 3}
        moved_total += len(moved)
        tuner.tell(c, rng.random())
        previous = c
    assert moved_total > 20


def test_mab_keeps_an_exponential_average_for_the_knob_that_chose() -> None:
    space = SearchSpace.of(Knob(CPU, (1.0, 2.0, 3.0)), Knob(GPU, (1.0, 2.0)))
    tuner = MAB(space, epsilon=0.0)
    c = tuner.ask()  # CPU's turn, nothing seen: explores
    tuner.tell(c, 1.0)
    c2 = tuner.ask()  # GPU's turn
    tuner.tell(c2, 5.0)
    state = tuner.state_dict()["estimates"]
    assert state[0] == [[c[0], 1.0]] and state[1] == [[c2[1], 5.0]]
    tuner.ask()  # CPU exploits its only seen value
    tuner.tell(c2, 2.0)
    assert dict(map(tuple, tuner.state_dict()["estimates"][0]))[c[0]] == pytest.approx(
        0.9 * 2.0 + 0.1 * 1.0
    )


def test_mab_exploits_the_cheapest_seen_value() -> None:
    space = SearchSpace.of(Knob(CPU, tuple(range(6))), Knob(GPU, tuple(range(4))))
    tuner = MAB(space, epsilon=0.0)
    for cpu, cost in ((5, 3.0), (2, 1.0), (4, 2.0)):
        tuner.tell((cpu, 3), cost)  # told without asking: credited to the knob that differs
    assert tuner.ask()[0] == 2


def test_joint_bandit_exploits_the_cheapest_arm_and_follows_changes() -> None:
    space = nx_space()
    tuner = MABJoint(space, epsilon=0.0)
    tuner.tell((1, 1, 1), 2.0)
    tuner.tell((2, 2, 2), 1.0)
    assert tuner.ask() == (2, 2, 2)
    tuner.tell((2, 2, 2), 5.0)  # estimate 0.9 * 5 + 0.1 * 1 = 4.6 > 2.0
    assert tuner.ask() == (1, 1, 1)
    for _ in range(1000):  # the heap stays bounded
        c = tuner.ask()
        tuner.tell(c, 1.0 + random.random())
    assert len(tuner._heap) <= 2 * len(tuner._arms) + 17


def test_bandits_explore_when_nothing_is_known() -> None:
    space = nx_space()
    assert len({MABJoint(space, seed=s, epsilon=0.0).ask() for s in range(8)}) > 1


# -- Bayesian --------------------------------------------------------------------------------
def test_bayesian_keeps_a_bounded_window_of_observations() -> None:
    space = nx_space()
    tuner = Bayesian(space, max_observations=12, n_points=200, n_initial_points=4)
    for i in range(20):
        c = tuner.ask()
        tuner.tell(c, 1.0 + (i % 5) * 0.1)
        assert space.contains(c)
    state = tuner.state_dict()
    assert len(state["observations"]) == 12 and state["told"] == 20


def test_bayesian_holds_knobs_with_a_single_allowed_value() -> None:
    space = SearchSpace.of(Knob(CPU, (1.0, 2.0, 3.0), floor=2), Knob(BATCH, tuple(range(1, 9))))
    tuner = Bayesian(space, n_initial_points=2, n_points=100)
    for c in run(tuner, lambda c: abs(c[1] - 3), 5):
        assert c[0] == 2


# -- fixed, random ---------------------------------------------------------------------------
def test_fixed_and_random() -> None:
    space = nx_space()
    assert run(Fixed(space), lambda c: 1.0, 3) == [space.maximum()] * 3
    assert run(Fixed(space, config=(1, 2, 3)), lambda c: 1.0, 2) == [(1, 2, 3)] * 2
    with pytest.raises(ValueError):
        Fixed(space, config=(99, 0, 0))
    asked = run(Random(space, seed=1), lambda c: 1.0, 200)
    assert len(set(asked)) > 150
    assert {c[0] for c in asked} == set(range(25))


# -- registry --------------------------------------------------------------------------------
def test_registry_names_and_aliases() -> None:
    assert set(TUNERS) == {
        "ecogd",
        "ecogd-original",
        "grid",
        "linear",
        "dvfs",
        "bayes",
        "bayesian",
        "mab",
        "mab-joint",
        "fixed",
        "random",
    }
    assert TUNERS["bayesian"] is TUNERS["bayes"] is Bayesian
    for name, cls in TUNERS.items():
        assert cls.name == name or name == "bayesian"
    with pytest.raises(TypeError):
        TUNERS["mine"] = Fixed  # type: ignore[index]


def test_make_tuner_passes_parameters_and_explains_mistakes() -> None:
    space = nx_space()
    tuner = make_tuner("Grid", space, seed=3, points_per_knob=3)
    assert isinstance(tuner, Grid) and tuner.grid_size == 3 * 3 * 3
    with pytest.raises(ValueError, match="valid names: bayes, bayesian, cascade, dvfs, ecogd"):
        make_tuner("gradient", space)
    with pytest.raises(ValueError, match="takes: points_per_knob, strides"):
        make_tuner("grid", space, stride=2)
    with pytest.raises(ValueError, match="takes no parameters"):
        make_tuner("random", space, epsilon=0.1)


def test_a_malformed_state_is_refused_with_a_clear_message() -> None:
    space = nx_space()
    for name in ("ecogd", "grid", "linear", "mab", "mab-joint", "random"):
        tuner = make_tuner(name, space)
        state = tuner.state_dict()
        broken = {k: v for k, v in state.items() if k in ("tuner", "rng")}
        with pytest.raises(ValueError, match="malformed"):
            tuner.load_state_dict(broken)


# -- any space -------------------------------------------------------------------------------
knob_sizes = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=4).map(
    lambda ks: [(size, min(floor, size - 1)) for size, floor in ks]
)


@settings(max_examples=40, deadline=None)
@given(knobs=knob_sizes, seed=st.integers(0, 1000), pick=st.sampled_from(["cpu-gpu", "plain"]))
def test_cheap_tuners_stay_inside_any_small_space(
    knobs: list[tuple[int, int]], seed: int, pick: str
) -> None:
    names = [CPU, GPU, BATCH, "split"] if pick == "cpu-gpu" else [f"k{i}" for i in range(4)]
    space = SearchSpace.of(
        *(
            Knob(n, tuple(range(size)), floor)
            for n, (size, floor) in zip(names[: len(knobs)], knobs, strict=True)
        )
    )
    rng = random.Random(seed)
    for name, cls in TUNERS.items():
        if cls is Bayesian:
            continue
        tuner = make_tuner(name, space, seed=seed)
        for _ in range(40):
            c = tuner.ask()
            assert space.contains(c), (name, c)
            tuner.tell(c, math.exp(rng.gauss(0, 0.3)))
        json.dumps(tuner.state_dict(), allow_nan=False)
