"""Batch-size probes: a settled centre now and then tries a far batch size.

Frequencies act on a batch's time and energy smoothly, but the batch size also meets the
arrival pattern, and there the landscape is rugged: with bursts of 10, batch 10 leaves with
each burst while 9 and 11 both leave a remainder waiting for the next one, so batch 10 is a
deep valley whose axis neighbours are both worse, and a ±1 climber coming down from 16 stops
at the first bump. So once the centre stays, every ``every``-th window measures the centre
with another batch size, taken in a shuffled sweep over all of them, and a probe cheaper than
the whole neighbourhood becomes the centre. A probe is one window, far cheaper than a jump,
and a sweep covers every batch size in ``every`` x (sizes - 3) windows. A size whose last
probe (or scan) lost by far is skipped until that result is stale, like any losing
measurement.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from tuners.ecogd.batch import BatchAxis

#: Windows a result stays fresh, from its relative loss to the centre.
Life = Callable[[float], int]


class Probes:
    """The sweep of batch-size probes and what each size's last try said.

    ``every``: windows between probes once settled (0: never; the record of tries is still
    kept for the scans that fill it).
    """

    def __init__(self, batch: BatchAxis, every: int) -> None:
        self.batch = batch
        self.every = every
        self.reset()

    def reset(self) -> None:
        self.queue: list[int] = []  # batch indices still to probe in this sweep
        self.pending: Config | None = None  # the last probe asked, until a decision weighs it
        self.count = 0
        self.last = 0  # the window the last probe was asked after
        # batch index -> (window of its last probe or scan, windows that result stays fresh)
        self.tried: dict[int, tuple[int, int]] = {}

    def since(self, window: int) -> int:
        """Windows since the last probe was asked."""
        return window - self.last

    def note(self, index: int, window: int, life: int) -> None:
        """Batch index ``index`` was tried (probed, scanned or predicted) in ``window``; the
        result stays fresh for ``life`` windows."""
        self.tried[index] = (window, life)

    def measured(
        self, config: Config, cost: float, here: float | None, window: int, life: Life
    ) -> None:
        """When ``config`` is the pending probe, note its loss to the centre's cost ``here``
        (None: the centre is not measured, and nothing is noted)."""
        if config == self.pending and here is not None and here > 0:
            self.note(config[self.batch.axis], window, life(cost / here - 1.0))

    def take(self) -> Config | None:
        """The pending probe, for one decision to weigh; it is weighed once."""
        probe, self.pending = self.pending, None
        return probe

    def next(
        self,
        centre: Config,
        window: int,
        rng: random.Random,
        unsafe: Callable[[Config], bool],
    ) -> Config | None:
        """The centre with another batch size, when a probe is due."""
        if not self.every or window - self.last < self.every:
            return None
        axis = self.batch.axis
        for _ in range(2):
            while self.queue:
                index = self.queue.pop()
                tried, life = self.tried.get(index, (0, 0))
                if window - tried < life:
                    continue  # a size that lost by far is probed again only once that is stale
                probe = self.batch.at(centre, index)
                if abs(index - centre[axis]) > 1 and not unsafe(probe):
                    # (±1 are axis neighbours, measured anyway)
                    self.last, self.pending = window, probe
                    self.count += 1
                    return probe
            self.queue = list(self.batch.indices())
            rng.shuffle(self.queue)
        return None

    def clear(self) -> None:
        """Every try describes a load that is gone."""
        self.tried.clear()

    def forget(self) -> None:
        """As ``clear``, and a probe asked under the old load is not weighed."""
        self.tried.clear()
        self.pending = None

    def state_dict(self, window: int) -> dict[str, Any]:
        return {
            "since_probe": self.since(window),
            "probe_queue": list(self.queue),
            "probe": None if self.pending is None else list(self.pending),
            "probes": self.count,
            "probed": [[i, w, life] for i, (w, life) in self.tried.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any], space: SearchSpace, window: int) -> None:
        """``window``: the tuner's window count in the same state."""
        self.pending, self.queue, self.count, since, self.tried = read_state(state, space)
        self.last = window - since


def read_state(
    state: Mapping[str, Any], space: SearchSpace
) -> tuple[Config | None, list[int], int, int, dict[int, tuple[int, int]]]:
    """The probe fields of a saved state, checked: pending probe, queue, count, windows
    since the last probe, tries. A tuner without probes still keeps the windows since."""
    pending = None if state["probe"] is None else space.validate(state["probe"])
    queue = [int(i) for i in state["probe_queue"]]
    since, count = int(state["since_probe"]), int(state["probes"])
    # absent from states saved before the opening scan existed
    tried = {int(i): (int(w), int(life)) for i, w, life in state.get("probed", [])}
    return pending, queue, count, since, tried
