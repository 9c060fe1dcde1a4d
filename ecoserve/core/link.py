"""The link to the next tier as the engine knows it: its figures, and an online estimate.

- :class:`Link`: bandwidth and round-trip time, and how long a transfer takes under them.
- :class:`LinkEstimator`: told how long real transfers and pings took, it keeps an
  exponentially weighted estimate, so choices follow a link that changes.
- :func:`moved` / :func:`link_moved`: whether a figure or an estimate has moved enough to
  be worth acting on.
- :func:`link_context` / :func:`link_from_context`: the estimate as the figures a driver
  hands the engine (they reach the tuners with every window's metrics).

Sans-IO: the caller times its own transfers. Units: bandwidth in bits per second (as links
are sold and as ``tc`` takes it), sizes in bytes, times in seconds. A schedule of a link over
time, for replays and emulation, is a twin: ``twins.link.EmulatedLink``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

#: Names of the link estimate among a window's metrics.
LINK_BANDWIDTH = "link_bandwidth_bps"
LINK_RTT = "link_rtt_s"


@dataclass(frozen=True)
class Link:
    """Bandwidth (bits/s) and round-trip time (s) of the link to the next tier.

    ``downlink_bps`` is the return direction where it differs (edge uplinks are often
    slower than their downlinks); None means symmetric. A bandwidth of 0 is a link that is
    down: every non-empty transfer takes forever, so every plan stays local.
    """

    bandwidth_bps: float
    rtt_s: float = 0.0
    downlink_bps: float | None = None

    def __post_init__(self) -> None:
        if not self.bandwidth_bps >= 0:
            raise ValueError(f"bandwidth must be >= 0 bits/s, got {self.bandwidth_bps}")
        if not self.rtt_s >= 0:
            raise ValueError(f"round-trip time must be >= 0 s, got {self.rtt_s}")
        if self.downlink_bps is not None and not self.downlink_bps >= 0:
            raise ValueError(f"downlink bandwidth must be >= 0 bits/s, got {self.downlink_bps}")

    def transfer_time(self, nbytes: float, *, downlink: bool = False) -> float:
        """Seconds to push ``nbytes`` through the link one way, round trip excluded."""
        if nbytes <= 0:
            return 0.0
        bw = self.downlink_bps if downlink and self.downlink_bps is not None else self.bandwidth_bps
        return math.inf if bw == 0 else 8.0 * nbytes / bw

    def exchange_time(self, up_bytes: float, down_bytes: float = 0.0) -> float:
        """Seconds for a request of ``up_bytes`` and its reply of ``down_bytes``: RTT + both."""
        return (
            self.rtt_s
            + self.transfer_time(up_bytes)
            + self.transfer_time(down_bytes, downlink=True)
        )


class LinkEstimator:
    """Exponentially weighted estimate of a link from observed transfers (sans-IO).

    The caller times its own requests and reports them; nothing here reads a clock.

    Round-trip time: an EWMA of the samples given to :meth:`observe_rtt` (TCP's smoothed
    RTT, weight ``rtt_alpha`` on the newest). Bandwidth: the ratio of an EWMA of bits sent to
    an EWMA of the seconds they took, not an EWMA of per-transfer rates, because small
    transfers are dominated by latency jitter and their rates are noise; the ratio weights
    each transfer by its size. A transfer that includes a round trip has the current RTT
    estimate taken off first; if nothing is left, it says nothing about bandwidth. Nor does a
    transfer shorter than ``min_wire_s`` on the wire, as measured or as the current estimate
    would send it: a few hundred bytes on a fast link take microseconds, lost in the round
    trip's jitter, and their "rate" would read a 100 Mbit/s link as 1 Mbit/s.
    """

    def __init__(
        self,
        prior: Link | None = None,
        *,
        alpha: float = 0.2,
        rtt_alpha: float = 0.125,
        min_wire_s: float = 0.0,
    ) -> None:
        for label, value in (("alpha", alpha), ("rtt_alpha", rtt_alpha)):
            if not 0 < value <= 1:
                raise ValueError(f"{label} must be in (0, 1], got {value}")
        if not min_wire_s >= 0:
            raise ValueError(f"min_wire_s must be >= 0, got {min_wire_s}")
        self.prior = prior
        self.alpha = alpha
        self.min_wire_s = min_wire_s
        self.rtt_alpha = rtt_alpha
        self._rtt: float | None = None
        self._bits: float | None = None
        self._seconds: float | None = None
        self.transfers = 0
        self.rtt_samples = 0

    def observe_rtt(self, seconds: float) -> None:
        """One round-trip sample (e.g. a ping, or an empty request's duration)."""
        if not seconds >= 0:
            raise ValueError(f"round-trip sample must be >= 0 s, got {seconds}")
        self.rtt_samples += 1
        if self._rtt is None:
            self._rtt = float(seconds)
        else:
            self._rtt += self.rtt_alpha * (seconds - self._rtt)

    def observe_transfer(self, nbytes: float, seconds: float, *, includes_rtt: bool = True) -> bool:
        """``nbytes`` took ``seconds`` to send (with one round trip inside when ``includes_rtt``).

        True when the sample counted: its time on the wire was at least ``min_wire_s``.
        """
        if not nbytes >= 0 or not seconds >= 0:
            raise ValueError(f"transfer needs bytes >= 0 and seconds >= 0, got {nbytes}, {seconds}")
        on_wire = self.wire_time(seconds, includes_rtt=includes_rtt)
        if nbytes == 0 or on_wire <= 0 or on_wire < self.min_wire_s:
            return False
        known = self.bandwidth_bps
        if known and 8.0 * nbytes / known < self.min_wire_s:
            return False  # too small to tell this link's rate from its jitter
        self.transfers += 1
        bits = 8.0 * nbytes
        if self._bits is None or self._seconds is None:
            self._bits, self._seconds = bits, on_wire
        else:
            self._bits += self.alpha * (bits - self._bits)
            self._seconds += self.alpha * (on_wire - self._seconds)
        return True

    def wire_time(self, seconds: float, *, includes_rtt: bool = True) -> float:
        """The share of a transfer's ``seconds`` spent sending: less the RTT estimate."""
        return seconds - (self.rtt_s if includes_rtt else 0.0)

    @property
    def rtt_s(self) -> float:
        """Current RTT estimate: the samples' EWMA, else the prior's, else 0."""
        if self._rtt is not None:
            return self._rtt
        return self.prior.rtt_s if self.prior is not None else 0.0

    @property
    def bandwidth_bps(self) -> float | None:
        """Current bandwidth estimate, or the prior's, or None before anything is known."""
        if self._bits is not None and self._seconds:
            return self._bits / self._seconds
        return self.prior.bandwidth_bps if self.prior is not None else None

    def link(self) -> Link:
        """The estimate as a :class:`Link`; ValueError if no transfer and no prior yet."""
        bw = self.bandwidth_bps
        if bw is None:
            raise ValueError("no bandwidth known yet: observe a transfer or give a prior Link")
        return Link(bandwidth_bps=bw, rtt_s=self.rtt_s)


#: Round trips below this are treated as equal when deciding whether the link moved.
_RTT_FLOOR_S = 1e-4


def moved(before: float, after: float, tolerance: float) -> bool:
    """Whether ``after`` differs from ``before`` by more than ``tolerance``, relatively.

    A figure going to or from zero (a link going down or coming back) always counts.
    """
    if before == after:
        return False
    if before <= 0 or after <= 0:
        return True
    return not 1 / (1 + tolerance) <= after / before <= 1 + tolerance


def link_moved(a: Link | None, b: Link, tolerance: float) -> bool:
    """Whether ``b`` differs from ``a`` by more than ``tolerance`` (relative) in either figure."""
    if a is None:
        return True
    rtt_a, rtt_b = max(a.rtt_s, _RTT_FLOOR_S), max(b.rtt_s, _RTT_FLOOR_S)
    return moved(a.bandwidth_bps, b.bandwidth_bps, tolerance) or moved(rtt_a, rtt_b, tolerance)


def link_context(link: Link) -> dict[str, float]:
    """``link`` as the context figures a driver hands the engine."""
    return {LINK_BANDWIDTH: link.bandwidth_bps, LINK_RTT: link.rtt_s}


def link_from_context(metrics: Mapping[str, float] | None) -> Link | None:
    """The link estimate a driver put among a window's metrics, or None when it has none."""
    if not metrics or LINK_BANDWIDTH not in metrics:
        return None
    bw = float(metrics[LINK_BANDWIDTH])
    if not (bw >= 0 and math.isfinite(bw)):
        return None
    return Link(bandwidth_bps=bw, rtt_s=max(0.0, float(metrics.get(LINK_RTT, 0.0))))
