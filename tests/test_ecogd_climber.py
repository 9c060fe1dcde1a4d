"""The paper's climber on its own, and the original EcoGD as that climber with nothing added."""

from __future__ import annotations

from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners import make_tuner
from tuners.ecogd.climber import Climber

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(8))), Knob(GPU, tuple(range(8))), Knob(BATCH, tuple(range(1, 9)))
)


def bowl(config: Config) -> float:
    return 1.0 + sum((i - o) ** 2 for i, o in zip(config, (3, 5, 2), strict=True)) / 10


def test_the_climber_alone_finds_the_bottom_of_a_bowl() -> None:
    climber = Climber(SPACE, seed=0)
    for _ in range(300):
        config = climber.ask()
        climber.tell(config, bowl(config))
    assert climber.centre == (3, 5, 2)


def test_the_original_is_the_climber_with_every_strategy_off() -> None:
    original, climber = make_tuner("ecogd-original", SPACE, seed=4), Climber(SPACE, seed=4)
    for window in range(300):
        config = original.ask()
        assert config == climber.ask()
        metrics = {"arrival_rate": 10.0 + window % 7, "batches": 5.0, "busy_s": 1.0}
        original.tell(config, bowl(config), metrics)
        climber.tell(config, bowl(config), metrics)
    keys = ("centre", "history", "window", "loops", "moves", "jumps", "rng")
    assert {k: original.state_dict()[k] for k in keys} == {k: climber.state_dict()[k] for k in keys}


class Guarded(Climber):
    """A climber whose ``_unsafe`` rules out every configuration below GPU index 4."""

    def _unsafe(self, config: Config) -> bool:
        return config[1] < 4


def test_a_jump_never_lands_where_the_guard_rules_out_and_stays_when_nothing_is_safe() -> None:
    climber = Guarded(SPACE, seed=1)
    for _ in range(200):
        target = climber._off_axis_neighbour((3, 4, 3))
        assert target is not None and target[1] >= 4
    # at GPU index 0 every off-axis neighbour has GPU index at most 1: no jump
    assert climber._off_axis_neighbour((3, 0, 3)) is None
    climber._jump((3, 0, 3))
    assert climber.centre == (3, 0, 3)
