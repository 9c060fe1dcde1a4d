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

Guided (the default), a probe is taken only where the models cannot rule it out: a size
the capacity guard calls unsafe, or one the cost curve over batch size (``BatchProfile``,
the scan's ``c0 + c1 / b + c2 * b`` fitted to every size measured at the centre's clocks)
calls a clear loser, is skipped. Where the curve is rugged (its residuals say so: bursts
that make a batch-aligned valley) it rules nothing out and the probes sweep every size as
before; that is what they are for. When the load changes, what is known is kept, rescaled:
the curve's ``c2 * b`` term is mostly the wait for a batch to fill, which goes as one over
the arrival rate, so every size's cost is moved by ``c2 * b * (old rate / new rate - 1)``
and the sizes the moved curve still calls clear losers stay skipped; without a smooth
curve every try is forgotten, as unguided.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import finite_cost
from tuners.batch_curve import RUGGED_RMS, CurveFit, fills, fit_curve
from tuners.ecogd.batch import BatchAxis

#: Windows a result stays fresh, from its relative loss to the centre.
Life = Callable[[float], int]

#: Sizes the profile needs before its curve may rule a size out: three fit any curve exactly,
#: so the residual says nothing until a fourth.
MIN_POINTS = 4

#: How far apart (a size ratio) the sizes measured must lie for the curve to speak for sizes
#: beyond them: the guided scan's first three (16, 4, 2 of 1..16) span eightfold.
MIN_SPAN = 2.0


class BatchProfile:
    """Every batch size's cost at the centre's clocks, on one relative scale, and the curve
    over batch size fitted to it.

    A size measured beside the centre (same clocks, same load) is put on the scale by its
    ratio to the centre's cost, anchored on the centre's size's value, so a frequency step of
    the centre, which moves every size's cost by much the same factor, leaves the scale
    alone. Each value lives as long as a measurement with its loss would (``life``); the
    curve is fitted to the fresh ones.
    """

    def __init__(self, batch: BatchAxis, margin: float = 0.05, rugged: float = RUGGED_RMS) -> None:
        self.batch = batch
        self.margin = float(margin)
        self.rugged = float(rugged)
        # batch index -> (value on the profile's scale, window measured, windows it lives)
        self.points: dict[int, tuple[float, int, int]] = {}
        # the last fit and the points it was fitted to (a probe's look asks it per size)
        self._fitted: tuple[dict[int, tuple[float, int, int]], CurveFit | None] | None = None

    def reset(self) -> None:
        self.points = {}

    def fresh(self, window: int) -> dict[int, float]:
        """The values still alive in ``window`` (the stale ones are dropped)."""
        stale = [i for i, (_, w, life) in self.points.items() if window - w >= life]
        if stale:
            self.points = {i: p for i, p in self.points.items() if i not in stale}
        return {i: v for i, (v, _, _) in self.points.items()}

    def fit(self, window: int) -> CurveFit | None:
        """The curve through the fresh values when it may rule sizes out: enough of them and
        residuals within ``rugged``; else None."""
        values = self.fresh(window)
        if self._fitted is not None and self._fitted[0] == self.points:
            return self._fitted[1]
        fit = None
        sizes = self.batch.sizes
        filling = {sizes[i]: v for i, v in values.items() if fills(sizes[i])}
        if len(filling) >= MIN_POINTS:
            fit = fit_curve(filling)
            if fit is not None and fit.relative_rms > self.rugged:
                fit = None
        self._fitted = (dict(self.points), fit)
        return fit

    def observe(
        self, index: int, cost: float, anchor: int, anchor_cost: float, window: int, life: int
    ) -> None:
        """Size ``index`` cost ``cost`` in ``window`` at the clocks and load where size
        ``anchor`` (the centre's) costs ``anchor_cost``; ``index == anchor`` refreshes the
        anchor. Without the anchor on the scale, the curve places it; without a curve, the
        profile starts over from these two."""
        if not (cost > 0 and anchor_cost > 0):
            return
        values = self.fresh(window)
        if anchor in values:
            scale = values[anchor] / anchor_cost
            self.points[anchor] = (values[anchor], window, max(life, self._left(anchor, window)))
        else:
            fit = self.fit(window) if self._within(anchor, values) else None
            predicted = None if fit is None else fit.predict(self.batch.sizes[anchor])
            if predicted is None or predicted <= 0:
                self.points = {}
                predicted = anchor_cost
            scale = predicted / anchor_cost
            self.points[anchor] = (predicted, window, life)
        if index != anchor:
            self.points[index] = (cost * scale, window, life)

    def _left(self, index: int, window: int) -> int:
        """Windows left to live, counted from ``window`` (0: not kept)."""
        _, w, life = self.points.get(index, (0.0, window, 0))
        return life - (window - w)

    def _within(self, index: int, values: Mapping[int, float]) -> bool:
        """True when the curve may speak for ``index``: the sizes measured span at least a
        factor ``MIN_SPAN`` (the ``1 / b`` and ``b`` terms both show), or ``index`` lies
        among them or one step beyond; a curve through a few neighbouring sizes says little
        of a far one."""
        if not values:
            return False
        sizes = self.batch.sizes
        lo, hi = min(values), max(values)
        return sizes[hi] >= MIN_SPAN * sizes[lo] or lo - 1 <= index <= hi + 1

    def loss(self, index: int, window: int) -> float | None:
        """``index``'s loss to the cheapest size (relative) by the curve, when the curve calls
        it a clear loser: predicted above the cheapest value by more than ``margin`` plus
        twice the fit's residual; else None (the curve cannot rule it out)."""
        return self.losses(window).get(index)

    def losses(self, window: int) -> dict[int, float]:
        """Every batch index the curve calls a clear loser, with its predicted loss; batch 1,
        once measured, is one by its own measurement (kept, and moved with the load, like the
        rest), not by the curve (see ``batch_curve.fills``)."""
        fit = self.fit(window)
        values = self.fresh(window)
        if fit is None or not values:
            return {}
        best = min(values.values())
        if best <= 0:
            return {}
        band = best * (1.0 + self.margin + 2.0 * fit.relative_rms)
        losers = {}
        for index in self.batch.indices():
            measured = values.get(index)
            if measured is not None and not fills(self.batch.sizes[index]):
                if measured >= band:  # batch 1, measured: by its measurement, not the curve
                    losers[index] = measured / best - 1.0
                continue
            predicted = fit.predict(self.batch.sizes[index])
            if predicted >= band and self._within(index, values):
                losers[index] = predicted / best - 1.0
        return losers

    def shift(self, ratio: float, window: int) -> bool:
        """The load changed; ``ratio`` is the old arrival rate over the new. Every value moves
        by the fill-wait term, ``c2 * b * (ratio - 1)``; False (and nothing kept) without a
        curve to take ``c2`` from."""
        fit = self.fit(window)
        if fit is None or not (ratio > 0 and math.isfinite(ratio)):
            self.points = {}
            return False
        c2 = max(fit.c2, 0.0)
        moved = {}
        for index, (value, w, life) in self.points.items():
            shifted = value + c2 * self.batch.sizes[index] * (ratio - 1.0)
            if shifted > 0:
                moved[index] = (shifted, w, life)
        self.points = moved
        return True

    def state_dict(self) -> list[list[float]]:
        return [[i, v, w, life] for i, (v, w, life) in self.points.items()]

    def load_state(self, saved: Iterable[Sequence[float]]) -> None:
        points = {int(i): (finite_cost(v), int(w), int(life)) for i, v, w, life in saved}
        if any(i not in self.batch.indices() for i in points):
            raise ValueError(f"profile batch indices {sorted(points)} outside the batch knob")
        self.points = points


class Probes:
    """The sweep of batch-size probes and what each size's last try said.

    ``every``: windows between probes once settled (0: never; the record of tries is still
    kept for the scans that fill it). ``guided``: skip the sizes the cost curve calls clear
    losers (by more than ``margin`` plus twice its residual), and keep what it knows, moved,
    across a change of load.
    """

    def __init__(
        self, batch: BatchAxis, every: int, guided: bool = True, margin: float = 0.05
    ) -> None:
        self.batch = batch
        self.every = every
        self.guided = guided
        self.profile = BatchProfile(batch, margin)
        self.reset()

    def reset(self) -> None:
        self.queue: list[int] = []  # batch indices still to probe in this sweep
        self.pending: Config | None = None  # the last probe asked, until a decision weighs it
        self.count = 0
        self.last = 0  # the window the last probe was asked after
        # batch index -> (window of its last probe or scan, windows that result stays fresh)
        self.tried: dict[int, tuple[int, int]] = {}
        self.profile.reset()
        self.skipped = 0  # probes the curve ruled out

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

    def observe(
        self,
        config: Config,
        cost: float,
        centre: Config,
        here: float | None,
        window: int,
        life: Life,
    ) -> None:
        """Any measurement: one of the centre at another batch size (or the centre itself)
        goes on the profile, against the centre's cost ``here`` (None: not measured)."""
        if not self.guided or here is None or here <= 0:
            return
        axis = self.batch.axis
        index = config[axis]
        if config != self.batch.at(centre, index):
            return
        self.profile.observe(index, cost, centre[axis], here, window, life(cost / here - 1.0))

    def ruled_out(self, index: int, window: int) -> bool:
        """True when the cost curve calls batch index ``index`` a clear loser (guided only)."""
        return self.guided and self.profile.loss(index, window) is not None

    def _ruled(self, window: int) -> Container[int]:
        """The batch indices the cost curve calls clear losers now (none unguided)."""
        return self.profile.losses(window) if self.guided else ()

    def load_changed(self, old_rate: float | None, new_rate: float | None, window: int) -> None:
        """The load moved from ``old_rate`` to ``new_rate`` (None: unknown). Unguided, or
        without a smooth curve or both rates, every try is forgotten; else the profile is
        moved to the new rate and a try is kept only where the moved curve still calls its
        size a clear loser."""
        ratio = old_rate / new_rate if old_rate and new_rate else math.nan
        if not (self.guided and self.profile.shift(ratio, window)):
            self.clear()
            return
        losers = self._ruled(window)
        self.tried = {i: t for i, t in self.tried.items() if i in losers}

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
        """The centre with another batch size, when a probe is due. When the curve ruled out
        sizes and nothing is left, none is taken and the next look is ``every`` windows on
        (where it rules nothing out, as on a rugged curve, the probes run as unguided)."""
        if not self.every or window - self.last < self.every:
            return None
        axis = self.batch.axis
        ruled = False
        losers: Container[int] | None = None  # asked once per look, when first needed
        for _ in range(2):
            while self.queue:
                index = self.queue.pop()
                tried, life = self.tried.get(index, (0, 0))
                if window - tried < life:
                    continue  # a size that lost by far is probed again only once that is stale
                probe = self.batch.at(centre, index)
                if abs(index - centre[axis]) <= 1 or unsafe(probe):
                    continue  # (±1 are axis neighbours, measured anyway)
                if losers is None:
                    losers = self._ruled(window)
                if index in losers:
                    self.skipped += 1
                    ruled = True
                    continue
                self.last, self.pending = window, probe
                self.count += 1
                return probe
            self.queue = list(self.batch.indices())
            rng.shuffle(self.queue)
        if ruled:
            self.last = window
        return None

    def clear(self) -> None:
        """Every try describes a load that is gone."""
        self.tried.clear()
        self.profile.reset()

    def forget(self) -> None:
        """A probe asked under the old load is not weighed."""
        self.pending = None

    def state_dict(self, window: int) -> dict[str, Any]:
        return {
            "since_probe": self.since(window),
            "probe_queue": list(self.queue),
            "probe": None if self.pending is None else list(self.pending),
            "probes": self.count,
            "probed": [[i, w, life] for i, (w, life) in self.tried.items()],
            "profile": self.profile.state_dict(),
            "probes_skipped": self.skipped,
        }

    def load_state_dict(self, state: Mapping[str, Any], space: SearchSpace, window: int) -> None:
        """``window``: the tuner's window count in the same state."""
        self.pending, self.queue, self.count, since, self.tried = read_state(state, space)
        self.last = window - since
        # absent from states saved before probes were guided
        self.profile.load_state(state.get("profile", []))
        self.skipped = int(state.get("probes_skipped", 0))


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
