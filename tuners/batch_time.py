"""An online model of batch time over batch size and clocks, and the capacity it implies.

A batch of ``n`` items takes ``t0 + t1 * n`` seconds at the reference clocks (the maximum,
where the baseline and the opening scan run): a fixed part (launch, synchronisation, the
Python around the model) and a part per item. Other clocks stretch both parts by one factor
``g`` (the batch's work runs on the same units whatever its size), so

    batch_time(n, clocks) = (t0 + t1 * n) * g(clocks)

``t0`` and ``t1`` are fitted by least squares to the windows at the reference clocks (each
window gives its mean items per batch and mean batch time); ``g`` of a clock setting is the
mean ratio of its windows' batch time to the reference line. The capacity of a configuration
is then ``b / batch_time(b, clocks)`` requests per second with full batches; a clock setting
not yet measured is bounded by the measured ones at least as fast on every clock (lower
clocks never serve faster), so a climb cannot step below what is known to be too slow.

Why a tuner wants it: on bursty traces a window's cost depends as much on the load it
happened to get as on its configuration, so a quiet window can make a configuration that
cannot carry the next burst look cheapest (on the Nano under the Azure code trace, a climber
walked the GPU clock down into seconds of queueing). A configuration whose capacity is
below the busiest recent window's arrival rate is a clear loser whatever its last cost said.

Sans-IO and dependency-free; memory is bounded (``MAX_POINTS`` reference windows,
``MAX_CLOCKS`` clock settings, least recently measured dropped first).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

MAX_POINTS = 64
MAX_CLOCKS = 256


class BatchTimeModel:
    """``batch_time(n, clocks) = (t0 + t1 * n) * g(clocks)``, fitted as windows close."""

    def __init__(self) -> None:
        self._reference: Hashable | None = None
        self._points: deque[tuple[float, float]] = deque(maxlen=MAX_POINTS)
        self._line: tuple[float, float] | None = None
        # clocks -> (sum of measured / reference ratios, windows)
        self._stretch: dict[Hashable, tuple[float, int]] = {}

    def set_reference(self, clocks: Hashable) -> None:
        """The clock setting the line is fitted at (the tuner's maximum)."""
        self._reference = clocks

    def observe(self, clocks: Hashable, items_per_batch: float, batch_s: float) -> None:
        """One window: its clocks, mean items per batch and mean batch time (seconds)."""
        if not (items_per_batch > 0 and batch_s > 0 and math.isfinite(batch_s)):
            return
        if clocks == self._reference:
            self._points.append((items_per_batch, batch_s))
            self._line = self._fit()
        line = self._line
        if line is None:
            return
        reference = line[0] + line[1] * items_per_batch
        if reference <= 0:
            return
        total, count = self._stretch.pop(clocks, (0.0, 0))
        self._stretch[clocks] = (total + batch_s / reference, count + 1)
        while len(self._stretch) > MAX_CLOCKS:
            del self._stretch[next(iter(self._stretch))]

    def _fit(self) -> tuple[float, float] | None:
        """Least squares of batch time on items. With one batch size seen, a line through the
        origin: every size is credited with that size's time per item, which overstates a
        smaller batch's capacity, so the guard errs towards allowing it."""
        points = self._points
        n = len(points)
        if n == 0:
            return None
        mean_x = sum(x for x, _ in points) / n
        mean_y = sum(y for _, y in points) / n
        sxx = sum((x - mean_x) ** 2 for x, _ in points)
        if sxx <= 1e-9 * max(1.0, mean_x**2):
            return 0.0, mean_y / mean_x
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
        slope = max(slope, 0.0)
        return max(mean_y - slope * mean_x, 0.0), slope

    def only_size(self) -> float | None:
        """The one batch size (mean items per batch) the reference line was fitted on, while
        only one has been seen; None once the fit has two sizes or none."""
        points = self._points
        if not points:
            return None
        first = points[0][0]
        spread = max(abs(x - first) for x, _ in points)
        return first if spread <= 1e-4 * max(1.0, first) else None

    def batch_time(self, clocks: Hashable, batch_size: float) -> float | None:
        """Predicted seconds for a full batch; None until the clocks have been measured."""
        line = self._line
        stretch = self._stretch.get(clocks)
        if line is None or stretch is None:
            return None
        return (line[0] + line[1] * batch_size) * stretch[0] / stretch[1]

    def capacity(self, clocks: Hashable, batch_size: float) -> float | None:
        """Requests per second served with full batches; None while unknown."""
        seconds = self.batch_time(clocks, batch_size)
        return None if seconds is None or seconds <= 0 else batch_size / seconds

    def capacity_bound(
        self, clocks: tuple[int, ...], batch_size: float, monotone: tuple[bool, ...]
    ) -> float | None:
        """The capacity if ``clocks`` were measured, else the most it can be: a clock setting
        never serves faster than a measured one that is at least as fast on every clock.

        ``clocks`` are index tuples; ``monotone`` marks the positions that are clocks (higher
        index, faster); the other positions must match. None when nothing bounds it.
        """
        known = self.capacity(clocks, batch_size)
        if known is not None:
            return known
        bound: float | None = None
        for measured in self._stretch:
            if not isinstance(measured, tuple) or len(measured) != len(clocks):
                continue
            if all(
                (m >= c) if clock else (m == c)
                for m, c, clock in zip(measured, clocks, monotone, strict=True)
            ):
                value = self.capacity(measured, batch_size)
                if value is not None and (bound is None or value < bound):
                    bound = value
        return bound
