"""EcoGD's loss memory: how long losers live, which losses are kept, when one is inherited."""

from __future__ import annotations

from tuners.ecogd.losses import LossMemory

CENTRE = (5, 5, 8)  # cpu, gpu, batch index


def test_a_loser_lives_longer_the_more_it_lost_up_to_the_cap() -> None:
    losses = LossMemory(memory=20, axis=2, loser_memory=6.0)
    assert losses.life(0.0) == 20
    assert losses.life(-0.3) == 20  # a winner lives one memory
    assert losses.life(0.1) == 40
    assert losses.life(0.3) == 80
    assert losses.life(5.0) == 120  # at most loser_memory memories
    assert LossMemory(memory=20, axis=2, loser_memory=1.0).life(0.5) == 20  # off


def test_the_centre_and_an_unpriced_centre_give_one_memory() -> None:
    losses = LossMemory(memory=20, axis=2)
    assert losses.lifetime(CENTRE, 2.0, CENTRE, 1.0) == 20
    assert losses.lifetime((5, 5, 9), 2.0, CENTRE, None) == 20
    assert losses.lifetime((5, 5, 9), 1.2, CENTRE, 1.0) == 60


def test_only_batch_neighbours_of_the_centre_keep_their_loss() -> None:
    losses = LossMemory(memory=20, axis=2)
    losses.record((5, 5, 9), 1.5, CENTRE, 1.0)
    losses.record((5, 5, 10), 1.5, CENTRE, 1.0)  # two batch steps away
    losses.record((4, 5, 8), 1.5, CENTRE, 1.0)  # a clock neighbour
    losses.record((5, 5, 7), 1.5, CENTRE, None)  # the centre is not measured
    assert losses.losses == {(5, 5, 9): (8, 0.5)}
    losses.record((5, 5, 9), 0.9, (4, 4, 4), 1.0)  # re-measured elsewhere: the loss goes
    assert losses.losses == {}
    losses.record((5, 5, 9), 1.5, CENTRE, 1.0)
    losses.drop((5, 5, 9))
    assert losses.losses == {}


def test_a_clear_loss_is_inherited_by_a_nearby_centre_of_the_same_batch_size() -> None:
    losses = LossMemory(memory=20, axis=2, inherit_margin=0.2, inherit_reach=2)
    losses.record((5, 5, 9), 1.5, CENTRE, 1.0)  # lost 50%
    losses.record((5, 5, 7), 1.1, CENTRE, 1.0)  # lost 10%: below the margin
    fresh = {(5, 5, 9), (5, 5, 7)}
    here = (6, 4, 8)  # one step away on both clocks
    assert losses.inherited((6, 4, 9), here, 2.0, fresh) == 3.0  # 2.0 * (1 + 0.5)
    assert losses.inherited((6, 4, 7), here, 2.0, fresh) is None  # not a clear loser
    assert losses.inherited((7, 4, 8), here, 2.0, fresh) is None  # a clock neighbour
    assert losses.inherited((6, 4, 9), here, 2.0, set()) is None  # expired
    assert losses.inherited((9, 5, 9), (9, 5, 8), 2.0, fresh) is None  # out of reach
    assert losses.inherited((6, 4, 9), here, 0.0, fresh) is None
    off = LossMemory(memory=20, axis=2, inherit_margin=None)
    off.record((5, 5, 9), 1.5, CENTRE, 1.0)
    assert off.inherited((6, 4, 9), here, 2.0, fresh) is None
