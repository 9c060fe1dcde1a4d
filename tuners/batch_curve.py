"""A model of window cost over batch size, for scans that skip clear losers.

At fixed clocks and load, a window's cost is a weighted sum of energy per request and mean
latency, and both follow batch size in a known shape:

- energy per request is the batch's power times its time, shared by its ``b`` requests; a
  batch's time is a fixed part plus a part per item (``t0 + t1 * b``), so energy per request
  is ``P * t1 + P * t0 / b``: a constant and a ``1 / b`` term;
- latency is the wait for a batch to fill, which grows with ``b`` (``(b - 1) / 2`` arrival
  gaps on average), plus the batch's own time: a constant and a ``b`` term.

So ``cost(b) ~ c0 + c1 / b + c2 * b``, three parameters fitted by least squares to the
sizes measured so far. Terms the shape lacks (a burst size that fills a batch at once, a
queue that builds behind small batches) show up as residuals, and the band of sizes still
worth measuring widens with them, and past a limit (``RUGGED_RMS``) the curve is not trusted
at all: on a smooth curve a scan measures three to ten sizes of sixteen, on a rugged one
every size.

The clocks are not modelled: on every board twin the best clocks are worth 0-5% of cost over
maximum (BENCHMARKS.md, "Where the gain comes from"), within the margin a model would need to
call anything a clear loser, while batch sizes far from the best lose 20-100%.

Sans-IO and dependency-free: the 3x3 normal equations are solved directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Sizes measured before the first fit (see ``seed_sizes``).
SEED_POINTS = 3

#: A fit whose relative residual exceeds this describes a rugged curve (on the Xavier NX
#: twin: 1.8-3.1% on Poisson-like loads, where window noise is the residual, and 6% once a
#: burst-aligned valley is measured under bursts of 10): the scan then measures every size.
RUGGED_RMS = 0.045


@dataclass(frozen=True)
class CurveFit:
    """``cost(b) = c0 + c1 / b + c2 * b`` and its residual relative to the best cost."""

    c0: float
    c1: float
    c2: float
    #: root-mean-square residual over the fitted points, divided by the lowest measured cost
    relative_rms: float

    def predict(self, size: float) -> float:
        return self.c0 + self.c1 / size + self.c2 * size


def _solve3(a: list[list[float]], y: list[float]) -> tuple[float, float, float] | None:
    """Gaussian elimination with partial pivoting on a 3x3 system; None when singular."""
    m = [row[:] + [v] for row, v in zip(a, y, strict=True)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for k in range(col, 4):
                m[r][k] -= f * m[col][k]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][k] * x[k] for k in range(r + 1, 3))) / m[r][r]
    return x[0], x[1], x[2]


def fit_curve(points: Mapping[float, float]) -> CurveFit | None:
    """Least-squares fit to ``{batch size: cost}``; None with fewer than three sizes.

    Sizes must be positive (the ``1 / b`` term). The features are scaled to the largest size
    so the normal equations stay well conditioned for any range of sizes.
    """
    if len(points) < 3:
        return None
    if any(not size > 0 for size in points):
        raise ValueError(f"batch sizes must be positive to fit 1/b, got {sorted(points)}")
    top = max(points)
    rows = [(1.0, top / b, b / top) for b in points]
    ys = list(points.values())
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(3)]
    solved = _solve3(ata, aty)
    if solved is None:
        return None
    k0, k1, k2 = solved
    fit = CurveFit(k0, k1 * top, k2 / top, 0.0)
    best = min(ys)
    rms = math.sqrt(sum((fit.predict(b) - y) ** 2 for b, y in points.items()) / len(points))
    return CurveFit(fit.c0, fit.c1, fit.c2, rms / best if best > 0 else math.inf)


def fills(size: float) -> bool:
    """True for the sizes the curve describes: batches that may wait for others to fill them.

    Batch 1 waits for nothing. When the timer runs out before any larger batch fills (a light
    load under a short timer), every larger size waits the whole timer and they cost alike,
    while batch 1 costs a third less: a step the curve's terms cannot express. An exact fit
    through three such sizes could call batch 1 a clear loser when it is the best size, and
    batch 1 in the fit would call a smooth curve rugged. So batch 1 is never fitted, and it is
    measured rather than predicted when the sizes measured cost alike (within ``FLAT``): the
    sign that the timer, not the size, sets their wait. Where they differ (a long buffer),
    the curve predicts batch 1 like any other size.
    """
    return size > 1


#: Sizes whose costs differ by no more than this (relative) are taken to be timer-bound.
FLAT = 0.10


def seed_sizes(indices: Sequence[int], sizes: Sequence[float]) -> list[int]:
    """The first indices a guided scan measures: the largest, then halving the log-distance
    to the smallest twice (sizes 16, 4 and 2 of 1..16).

    ``indices`` are the allowed batch indices (ascending), ``sizes`` their positive sizes.
    The smallest size itself is not a seed: its window is the dearest (a batch's fixed time
    borne by one request, or a queue), and sizes 2 and 4 pin the ``1 / b`` term well enough
    for the curve to say whether it is worth measuring.
    """
    if len(indices) <= SEED_POINTS:
        return list(reversed(indices))
    lo, hi = sizes[0], sizes[-1]
    upper = math.sqrt(lo * hi)
    lower = math.sqrt(lo * upper)

    def nearest(target: float) -> int:
        return indices[min(range(len(indices)), key=lambda i: abs(math.log(sizes[i] / target)))]

    return list(dict.fromkeys([indices[-1], nearest(upper), nearest(lower)]))


def next_size(
    measured: Mapping[int, float],
    indices: Sequence[int],
    sizes: Sequence[float],
    margin: float,
    rugged: float = RUGGED_RMS,
) -> tuple[int | None, dict[int, float]]:
    """The next batch index a guided scan measures, or None when the rest are clear losers.

    ``measured`` maps batch index to measured cost. Returns the index (the unmeasured one
    the curve predicts cheapest, while that prediction lies within ``margin`` plus twice the
    fit's relative residual of the best measured cost) and the predicted cost of every
    unmeasured index. While seeding, when no fit exists or when the fit's residual is above
    ``rugged`` (the curve's shape does not hold: a valley the terms cannot express), every
    size left is measured in turn, largest first, and the predictions are empty.

    Batch 1 is left out of the fit, and measured once the seeds are when the sizes measured
    cost within ``FLAT`` of each other (see ``fills``); otherwise the curve predicts it.
    """
    for index in seed_sizes(indices, sizes):
        if index not in measured:
            return index, {}
    size_of = dict(zip(indices, sizes, strict=True))
    left = [i for i in indices if i not in measured]
    if not left:
        return None, {}
    filling = {size_of[i]: c for i, c in measured.items() if fills(size_of.get(i, 0.0))}
    alone = [i for i in left if not fills(size_of[i])]
    if alone and filling and max(filling.values()) <= min(filling.values()) * (1.0 + FLAT):
        return alone[-1], {}  # timer-bound sizes: batch 1 may be a step below (see ``fills``)
    fit = fit_curve(filling)
    if fit is None or fit.relative_rms > rugged:
        return left[-1], {}
    predicted = {i: fit.predict(size_of[i]) for i in left}
    best = min(measured.values())
    band = best * (1.0 + margin + 2.0 * fit.relative_rms)
    candidate = min(left, key=predicted.__getitem__)
    return (candidate if predicted[candidate] < band else None), predicted
