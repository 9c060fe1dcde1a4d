"""EcoGD's mechanics: neighbourhood, diagonal estimates, loops and jumps, expiry, options."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import pytest

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners import EcoGD

Cost = Callable[[Config], float]

#: The shape of the simulated costs of bursty:10@500ms on the Xavier NX twin, batch 1..16.
BURSTY_BY_BATCH = (0.80, 0.68, 0.70, 0.68, 0.60, 0.71, 0.76, 0.76, 0.81, 0.56, 0.86, 0.86, 0.93,
                   0.93, 0.87, 0.99)  # fmt: skip


def space_of(*sizes: int, names: tuple[str, ...] | None = None) -> SearchSpace:
    """Knobs named CPU, GPU, batch, then knob3, knob4, ... unless ``names`` says otherwise."""
    if names is None:
        names = (CPU, GPU, BATCH, *(f"knob{i}" for i in range(3, len(sizes))))[: len(sizes)]
    return SearchSpace.of(*(Knob(n, tuple(range(s))) for n, s in zip(names, sizes, strict=True)))


def bowl(optimum: Config, sizes: tuple[int, ...]) -> Cost:
    return lambda c: (
        1.0 + sum(3 * ((i - o) / (n - 1)) ** 2 for i, o, n in zip(c, optimum, sizes, strict=True))
    )


def step(tuner: EcoGD, cost: Cost) -> Config:
    config = tuner.ask()
    tuner.tell(config, cost(config))
    return config


def diff(a: Config, b: Config) -> list[int]:
    return [x - y for x, y in zip(a, b, strict=True)]


def test_starts_at_the_maximum_then_measures_each_axis_neighbour_once() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, opening_scan=False)
    cost = bowl((7, 9, 5), (25, 15, 16))
    asked = [step(tuner, cost) for _ in range(4)]
    assert asked[0] == space.maximum()
    assert sorted(asked[1:]) == sorted(space.neighbours(space.maximum()))


def test_the_unguided_opening_scan_measures_every_batch_size_then_climbs_from_the_cheapest() -> (
    None
):
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, guided_scan=False)
    cost = bowl((7, 9, 5), (25, 15, 16))
    assert tuner.describe()["scanning"]
    asked = [step(tuner, cost) for _ in range(16)]
    assert asked == [(24, 14, b) for b in range(15, -1, -1)]
    assert tuner.ask() in space.neighbours((24, 14, 5))
    assert tuner.centre == (24, 14, 5)
    assert not tuner.describe()["scanning"]


def test_the_opening_scan_alone_finds_a_batch_valley() -> None:
    """Batch 10 under bursts of 10 (the profile below) is cheapest, but both neighbours are worse."""
    sizes = (25, 15, 16)
    space = space_of(*sizes)
    freq_bowl = bowl((12, 10, 0), sizes)

    def cost(c: Config) -> float:
        return BURSTY_BY_BATCH[c[2]] * freq_bowl((c[0], c[1], 0))

    for opening_scan in (False, True):
        tuner = EcoGD(space, seed=3, probe_every=0, opening_scan=opening_scan)
        for _ in range(300):
            step(tuner, cost)
        assert (tuner.centre[2] + 1 == 10) is opening_scan


def batch_curve_cost(c: Config) -> float:
    """A smooth cost over batch size (``0.4 + 0.6 / b + 0.04 * b``, best at b = 4; b = 3, 5
    and 6 within 5% of it, b = 2 and 7 8-10% above), times a shallow bowl over the clocks."""
    b = c[2] + 1
    return (0.4 + 0.6 / b + 0.04 * b) * (1.0 + 0.01 * ((c[0] - 20) ** 2 + (c[1] - 10) ** 2) / 100)


def test_the_guided_opening_scan_skips_the_sizes_the_curve_calls_clear_losers() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, probe_every=0)
    asked = []
    while tuner.describe()["scanning"]:
        asked.append(step(tuner, batch_curve_cost))
    *scan, first_climb = asked  # the ask that ends the scan already climbs
    sizes = [c[2] + 1 for c in scan]
    assert sizes[:3] == [16, 4, 2]  # the largest, then halving the log-distance to 1 twice
    # then the sizes predicted within the 5% margin, and nothing else: 6 windows, not 16
    assert sorted(sizes) == [2, 3, 4, 5, 6, 16]
    assert tuner.centre == (24, 14, 3)  # batch 4, the curve's minimum
    assert first_climb in space.neighbours(tuner.centre)


def test_the_guided_scan_counts_skipped_sizes_as_probed_with_their_predicted_loss() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space)
    while tuner.describe()["scanning"]:
        step(tuner, batch_curve_cost)
    probed = {i: (w, life) for i, w, life in tuner.state_dict()["probed"]}
    assert set(probed) == set(range(16))  # measured or predicted, every size is accounted for
    # batch 16 (index 15) loses far more than batch 6 (index 5): it stays probed longer
    assert probed[15][1] > probed[5][1]


def test_a_diagonal_move_in_the_cpu_gpu_plane_takes_one_decision() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, opening_scan=False)

    # Lowering either frequency saves 0.1, the batch 0.05: the estimated diagonal saves 0.2.
    def cost(c: Config) -> float:
        return 1.0 + 0.1 * c[0] + 0.1 * c[1] + 0.05 * c[2]

    for _ in range(4):  # the centre and its three axis neighbours at the corner
        step(tuner, cost)
    assert tuner.ask() == (23, 13, 15)
    assert tuner.centre == (23, 13, 15)


def test_diagonals_involving_the_batch_size_are_not_estimated() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, opening_scan=False)

    # Lowering the CPU or the batch saves cost; the GPU is flat. A CPU–batch diagonal would
    # be best if it were estimated; only axis moves are allowed.
    def cost(c: Config) -> float:
        return 1.0 + 0.1 * c[0] + 0.1 * c[2]

    for _ in range(4):
        step(tuner, cost)
    tuner.ask()  # decides
    moved = diff(tuner.centre, space.maximum())
    assert sorted(abs(d) for d in moved) == [0, 0, 1]


def test_a_fresh_measurement_of_a_diagonal_beats_its_estimate() -> None:
    space = space_of(5, 5, names=(CPU, GPU))
    tuner = EcoGD(space)

    def cost(c: Config) -> float:  # additive estimate says (3, 3) is best, it is not
        return 10.0 if c == (3, 3) else 1.0 + 0.1 * (c[0] + c[1])

    tuner.tell((3, 3), cost((3, 3)))  # measured without being asked: still recorded
    for _ in range(3):
        step(tuner, cost)
    tuner.ask()  # decides
    assert tuner.centre in {(3, 4), (4, 3)}


def test_an_unasked_measurement_is_used_and_not_asked_again() -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, opening_scan=False)
    tuner.tell((23, 14, 15), 1.0)
    asked = [step(tuner, lambda c: 2.0) for _ in range(3)]
    assert (23, 14, 15) not in asked
    tuner.ask()
    assert tuner.centre == (23, 14, 15)


@pytest.mark.parametrize("sizes", [(30,), (12, 9), (6, 7, 5, 8)])
def test_works_for_any_number_of_knobs(sizes: tuple[int, ...]) -> None:
    space = space_of(*sizes)
    optimum = tuple(s // 3 for s in sizes)
    tuner = EcoGD(space, max_loops=1000)  # no jump to land on at the end
    cost = bowl(optimum, sizes)
    for _ in range(60 * len(sizes)):
        config = step(tuner, cost)
        assert len(space.neighbours(tuner.centre)) <= 2 * len(sizes)
        assert space.contains(config)
    assert tuner.centre == optimum


def test_loops_count_only_decisions_with_new_measurements_then_jump_off_axis() -> None:
    sizes = (25, 15, 16)
    space = space_of(*sizes)
    optimum = (7, 9, 5)
    tuner = EcoGD(space, max_loops=4)
    cost = bowl(optimum, sizes)
    loops, exploited, told = 0, 0, None
    while tuner.describe()["jumps"] == 0:
        config = tuner.ask()  # decisions (and loop counts) happen here
        now = tuner.describe()["loops"]
        if now > loops:
            assert told != optimum, "a loop counted without a new neighbour measurement"
        exploited += told == optimum == config
        loops = now
        tuner.tell(config, cost(config))
        told = config
        assert tuner.describe()["windows"] < 1000, "never jumped"
    assert loops == 0  # reset by the jump
    assert exploited >= 4, "the converged centre should be exploited between loops"
    offset = diff(tuner.centre, optimum)
    assert max(abs(d) for d in offset) == 1 and sum(d != 0 for d in offset) >= 2
    centres = []
    for _ in range(60):
        step(tuner, cost)
        centres.append(tuner.centre)
    assert optimum in centres, "it should climb back after the jump"


def test_more_loops_allowed_means_a_later_jump() -> None:
    space = space_of(25, 15, 16)
    cost = bowl((7, 9, 5), (25, 15, 16))
    first_jump = {}
    for max_loops in (2, 10):
        tuner = EcoGD(space, max_loops=max_loops)
        while tuner.describe()["jumps"] == 0:
            step(tuner, cost)
        first_jump[max_loops] = tuner.describe()["windows"]
    assert first_jump[10] > first_jump[2] + 8 * 5


def test_a_jump_in_one_dimension_steps_two_indices() -> None:
    space = space_of(20, names=(BATCH,))
    # A short memory, so the jump lands on an unmeasured index rather than one it would
    # leave again at once on fresh evidence.
    tuner = EcoGD(space, max_loops=1, memory_limit=3)
    cost = bowl((10,), (20,))
    while tuner.describe()["jumps"] == 0:
        step(tuner, cost)
    assert abs(tuner.centre[0] - 10) == 2


@pytest.mark.parametrize("loser_memory", [1.0, 4.0])
def test_measurements_expire_and_history_stays_bounded(loser_memory: float) -> None:
    space = space_of(25, 15, 16)
    # the memory as given: no longer life while the load holds
    tuner = EcoGD(space, memory_limit=20, loser_memory=loser_memory, steady_memory=1.0)
    cost = bowl((7, 9, 5), (25, 15, 16))
    last_seen: dict[Config, int] = {}
    for window in range(600):
        last_seen[step(tuner, cost)] = window
        assert tuner.describe()["known"] <= 20 * loser_memory
    # Once converged, every axis neighbour of the optimum is re-measured regularly (they lose
    # by under 1% on this bowl, so a longer memory for losers barely lengthens their life).
    for n in space.neighbours((7, 9, 5)):
        assert last_seen[n] >= 600 - 40


def test_a_neighbour_that_lost_by_far_is_remeasured_less_often() -> None:
    space = space_of(25, 15, 16)
    optimum = (7, 9, 5)
    bowl_cost = bowl(optimum, (25, 15, 16))

    def cost(c: Config) -> float:  # the batch neighbours of the optimum lose by 50%
        return bowl_cost(c) * (1.5 if c[2] != optimum[2] else 1.0)

    counts = {}
    for loser_memory in (1.0, 4.0):
        tuner = EcoGD(space, memory_limit=20, loser_memory=loser_memory, max_loops=10**6)
        tuner.load_state_dict({**tuner.state_dict(), "probe_queue": []})
        tuner.probe_every = 0
        told = [step(tuner, cost) for _ in range(800)][400:]
        counts[loser_memory] = sum(c in ((7, 9, 4), (7, 9, 6)) for c in told)
    assert counts[1.0] >= 30  # two of them every 20 windows
    assert counts[4.0] <= counts[1.0] / 3


def plateau_with_a_sharp_batch(noise_seed: int) -> Cost:
    """Frequencies flat within 1% noise; batch 5 cheapest, every other size 50% or more worse."""
    import random

    rng = random.Random(noise_seed)
    return lambda c: (1.0 if c[2] == 5 else 1.5 + 0.05 * abs(c[2] - 5)) * rng.gauss(1.0, 0.01)


def test_batch_neighbours_that_lost_by_far_are_inherited_across_frequency_moves() -> None:
    """On a flat plane the centre wanders; its batch neighbours need not be re-measured."""
    space = space_of(25, 15, 16)
    counts, moves = {}, {}
    for margin in (None, 0.2):
        tuner = EcoGD(space, seed=1, probe_every=0, inherit_margin=margin, max_loops=10**6)
        cost = plateau_with_a_sharp_batch(noise_seed=1)
        told = [step(tuner, cost) for _ in range(600)][100:]
        counts[margin] = sum(c[2] in (4, 6) for c in told)
        moves[margin] = tuner.describe()["moves"]
        assert tuner.centre[2] == 5
    assert moves[0.2] >= 50, "the noise should keep the centre moving on the plane"
    assert counts[0.2] * 4 <= counts[None], counts


@pytest.mark.parametrize(("loss", "inherited"), [(0.1, False), (0.3, True)])
def test_only_a_batch_neighbour_that_lost_by_the_margin_is_inherited(
    loss: float, inherited: bool
) -> None:
    space = space_of(25, 15, 16)
    tuner = EcoGD(space, probe_every=0, opening_scan=False, inherit_margin=0.2)
    tuner.tell((24, 14, 15), 1.0)  # the starting centre
    tuner.tell((24, 14, 14), 1.0 + loss)  # its batch neighbour
    tuner.tell((23, 14, 15), 0.9)  # one CPU step down wins: the centre moves there
    tuner.tell((24, 13, 15), 1.2)
    asked = []
    for _ in range(4):
        config = tuner.ask()
        asked.append(config)
        tuner.tell(config, 0.9 if config == (23, 14, 15) else 1.2)
    assert tuner.centre == (23, 14, 15)
    assert ((23, 14, 14) not in asked) is inherited, asked
    assert (22, 14, 15) in asked  # frequency neighbours are always measured


def test_the_opening_scan_counts_as_a_sweep_of_probes() -> None:
    """Sizes the scan saw lose by 50% or more are not probed again until that result is stale."""
    space = space_of(25, 15, 16)
    probes = {}
    for loser_memory in (1.0, 6.0):
        tuner = EcoGD(space, seed=2, loser_memory=loser_memory, max_loops=10**6)
        cost = plateau_with_a_sharp_batch(noise_seed=2)
        for _ in range(100):
            step(tuner, cost)
        probes[loser_memory] = tuner.describe()["probes"]
    assert probes[1.0] >= 4
    assert probes[6.0] == 0


def test_batch_probes_find_a_valley_that_axis_steps_cannot_reach() -> None:
    """Bursts of 10: only batch 10 leaves with every burst; 9 and 11 are both worse."""
    sizes = (25, 15, 16)
    space = space_of(*sizes)
    freq_bowl = bowl((12, 10, 0), sizes)

    def cost(c: Config) -> float:
        return BURSTY_BY_BATCH[c[2]] * freq_bowl((c[0], c[1], 0))

    ends = {}
    for probe_every in (0, 10):
        tuner = EcoGD(space, seed=3, probe_every=probe_every, opening_scan=False)
        for _ in range(300):
            step(tuner, cost)
        ends[probe_every] = tuner.centre[2] + 1
    assert ends[0] != 10, "without probes the climber should stop on the plateau"
    assert ends[10] == 10


def test_memory_limit_is_raised_to_fit_a_whole_neighbourhood() -> None:
    space = space_of(*(5,) * 6)
    tuner = EcoGD(space, memory_limit=3, max_loops=1000)
    cost = bowl((1, 2, 3, 1, 2, 3), (5,) * 6)
    for _ in range(400):
        step(tuner, cost)
    assert tuner.centre == (1, 2, 3, 1, 2, 3)


def test_a_rate_change_beyond_the_threshold_forgets_the_history() -> None:
    space = space_of(25, 15, 16)
    cost = bowl((7, 9, 5), (25, 15, 16))
    for threshold in (0.3, None):
        tuner = EcoGD(space, rate_change_threshold=threshold)
        for rate in [10.0] * 200 + [12.0]:  # +20%: below the threshold
            c = tuner.ask()
            tuner.tell(c, cost(c), {"arrival_rate": rate})
        assert tuner.describe()["known"] > 1
        c = tuner.ask()
        tuner.tell(c, cost(c), {"arrival_rate": 20.0})  # +100% against the centre's rate
        assert (tuner.describe()["known"] == 1) is (threshold is not None)


def test_adaptive_steps_grow_along_a_steep_slope() -> None:
    space = space_of(25, 15, 16)

    def cost(c: Config) -> float:  # every step down saves far more than 10%
        return math.exp(0.2 * sum(c))

    for adaptive, expect_long in ((False, False), (True, True)):
        tuner = EcoGD(space, adaptive_step=adaptive, opening_scan=False)
        longest = 0
        for _ in range(80):
            before = tuner.centre
            step(tuner, cost)
            longest = max(longest, *(abs(d) for d in diff(tuner.centre, before)))
        assert (longest >= 2) is expect_long, longest


def test_rejects_nonsense_parameters() -> None:
    space = space_of(5, 5)
    for kwargs in (
        {"memory_limit": 0},
        {"max_loops": 0},
        {"rate_change_threshold": 0.0},
        {"inherit_margin": -0.1},
        {"inherit_reach": -1},
    ):
        with pytest.raises(ValueError):
            EcoGD(space, **kwargs)


def test_step_time_is_small() -> None:
    """Cheap enough to run every window on a board: far below 100 µs per ask+tell."""
    space = space_of(25, 15, 16)
    tuner = EcoGD(space)
    cost = bowl((7, 9, 5), (25, 15, 16))
    start = time.perf_counter()
    for _ in range(2000):
        step(tuner, cost)
    assert (time.perf_counter() - start) / 2000 < 500e-6  # generous: shared CI machines


def probes_on_a_stepping_load(guided: bool, seed: int) -> tuple[int, list[tuple[int, float]]]:
    """Probes taken on a load stepping between 8 and 24 req/s every 60 windows (a smooth
    curve over batch size whose fill-wait term goes as one over the rate), and each probe's
    batch size and what it lost to the level's best size."""
    space = space_of(25, 15, 16)
    rng = random.Random(seed)

    def cost(c: Config, rate: float) -> float:
        b = c[2] + 1
        clocks = 1.0 + 0.01 * ((c[0] - 20) ** 2 + (c[1] - 10) ** 2) / 100
        return (0.4 + 0.3 / b + 0.4 * b / rate) * clocks * rng.gauss(1.0, 0.01)

    tuner = EcoGD(space, seed=seed, guided_probes=guided)
    losses = []
    for window in range(400):
        rate = 8.0 if (window // 60) % 2 == 0 else 24.0
        config = tuner.ask()
        value = cost(config, rate)
        if tuner.phase() == "probe":
            best = min(0.4 + 0.3 / b + 0.4 * b / rate for b in range(1, 17))
            losses.append((config[2] + 1, value / best - 1.0))
        metrics = {"arrival_rate": rate * rng.gauss(1.0, 0.03), "arrivals": rate * 30}
        tuner.tell(config, value, metrics)
    assert tuner.describe()["load_changes"] == 6
    return tuner.describe()["probes"], losses


def test_after_a_load_change_probes_skip_the_sizes_the_curve_calls_clear_losers() -> None:
    """Unguided, every change of load starts a full sweep of probes again, most of them at
    sizes the curve already calls clear losers; guided, the curve moved to the new rate keeps
    them out, and what is probed lies near the best."""
    counts, dear = {}, {}
    for guided in (True, False):
        runs = [probes_on_a_stepping_load(guided, seed) for seed in range(3)]
        counts[guided] = sum(n for n, _ in runs)
        dear[guided] = sum(loss > 0.2 for _, taken in runs for _, loss in taken)
    assert counts[True] < counts[False]
    assert dear[True] <= dear[False] / 3


def test_on_a_rugged_batch_axis_guided_probes_are_the_unguided_ones() -> None:
    """Bursts of 10: the curve's residuals call the axis rugged, it rules nothing out, and
    every probe is taken as before."""
    space = space_of(25, 15, 16)
    freq_bowl = bowl((12, 10, 0), (25, 15, 16))
    for seed in range(2):
        runs = []
        for guided in (True, False):
            rng = random.Random(seed)

            def cost(c: Config, rng: random.Random = rng) -> float:
                return BURSTY_BY_BATCH[c[2]] * freq_bowl((c[0], c[1], 0)) * rng.gauss(1.0, 0.01)

            tuner = EcoGD(space, seed=seed, guided_probes=guided)
            runs.append([step(tuner, cost) for _ in range(300)])
            assert tuner.describe()["probes"] > 10 and tuner.describe()["probes_skipped"] == 0
        assert runs[0] == runs[1]
