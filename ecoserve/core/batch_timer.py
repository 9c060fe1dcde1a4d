"""How long the oldest queued request waits for its batch to fill: fixed, or from the load.

A fixed timer is a guess about the load. Short (the daemon's 50 ms), every batch size larger
than what arrives in 50 ms waits out the timer and leaves part-filled, so batch sizes cannot
be told apart at a few requests a second; long (the paper's 2 s buffer), a batch waits the
whole buffer whenever the rate drops below what fills it, and a lull costs seconds of
latency. Which is right depends on the rate, which changes.

The fill timer follows the load instead: after each window it sets the timer to
``fill_factor`` times the time the configured batch size takes to fill at that window's
arrival rate, ``(b - 1) / rate``, capped at ``ceiling_s``. At a steady rate batches fill
before the timer (it only cuts the wait when arrivals pause); when the rate drops, the timer
shortens the wait with it instead of holding every batch for the full buffer; batch 1 never
waits. The tuner still chooses the batch size, and each size is measured under the timer it
will run with.

Sans-IO: the engine tells it each closed window's arrival rate and asks it for the timer of
the batch size in force.
"""

from __future__ import annotations

import math

#: Timer kinds ``EngineSettings.batch_timer`` accepts.
TIMER_KINDS = ("fixed", "fill")


class BatchTimer:
    """The batching timer for a batch size: ``ceiling_s``, or derived from the arrival rate.

    ``kind``: ``fixed`` always answers ``ceiling_s``; ``fill`` answers ``fill_factor`` times
    the mean fill time of the batch at the last observed rate, at most ``ceiling_s`` (and
    ``ceiling_s`` until a rate is known).
    """

    def __init__(self, kind: str = "fixed", ceiling_s: float = 0.05, fill_factor: float = 2.0):
        if kind not in TIMER_KINDS:
            raise ValueError(f"batch timer must be one of {', '.join(TIMER_KINDS)}, got {kind!r}")
        if not ceiling_s >= 0:
            raise ValueError(f"the batching timer's ceiling must be >= 0 seconds, got {ceiling_s}")
        if not fill_factor > 0:
            raise ValueError(f"fill_factor must be > 0, got {fill_factor}")
        self.kind = kind
        self.ceiling_s = float(ceiling_s)
        self.fill_factor = float(fill_factor)
        self.rate: float | None = None

    def observe(self, arrival_rate: float) -> None:
        """A window closed with this arrival rate (requests/s); non-finite or 0 is ignored."""
        if math.isfinite(arrival_rate) and arrival_rate > 0:
            self.rate = float(arrival_rate)

    def timer_s(self, batch_size: int) -> float:
        """Seconds the oldest queued request may wait for a batch of ``batch_size``."""
        if self.kind == "fixed" or self.rate is None:
            return self.ceiling_s
        fill = max(0, batch_size - 1) / self.rate
        return min(self.ceiling_s, self.fill_factor * fill)
