"""The arrival rate of a window's busy seconds, not of the window as a whole.

A window's mean rate counts its silences: bursts of 800 req/s between idle gaps can average
100 req/s over a window, and a configuration that carries 100 req/s but not 800 queues
every burst. A tuner that guards capacity needs the rate the configuration must carry while
requests come. Arrivals are counted per second of the clock (bins of ``bin_s``); the rate
is the median of the counts of the seconds that had any, so idle seconds do not dilute it.
The median, not a high quantile: a spike of a second or two is absorbed by the batching
queue (the paper's buffer waits up to 2 s anyway), and demanding capacity for it pushes a
bursty trace to large batches that wait to fill (on the Azure code trace a 90th percentile
cost EcoGD 10% and tripled its p99). A burst shorter than a bin counts as its size per bin.

Memory is one counter per non-empty bin, so at most one per arrival of the window.
"""

from __future__ import annotations

import math

#: Bin length in seconds: a tuning window is seconds long, a latency objective a tenth of one.
BIN_S = 1.0
#: The quantile of the non-empty bins' counts reported (the median: see above).
QUANTILE = 0.5


class BusyRate:
    """Arrivals per bin of ``bin_s`` seconds; ``rate`` is the ``quantile`` of the non-empty
    bins' rates."""

    def __init__(self, bin_s: float = BIN_S, quantile: float = QUANTILE) -> None:
        if not bin_s > 0:
            raise ValueError(f"bin_s must be > 0 seconds, got {bin_s}")
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.bin_s = float(bin_s)
        self.quantile = float(quantile)
        self._counts: dict[int, int] = {}

    def add(self, now: float) -> None:
        """One arrival at ``now`` (seconds; any origin, the same for every call)."""
        if not math.isfinite(now):
            return
        key = math.floor(now / self.bin_s)
        self._counts[key] = self._counts.get(key, 0) + 1

    def rate(self) -> float | None:
        """Requests/s of the busy bins (nearest-rank quantile); None before any arrival."""
        if not self._counts:
            return None
        counts = sorted(self._counts.values())
        rank = max(0, math.ceil(self.quantile * len(counts)) - 1)
        return counts[rank] / self.bin_s
