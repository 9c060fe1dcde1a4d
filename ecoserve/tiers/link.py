"""The network link to the next tier: a model of it, an online estimate, and an emulation.

The split planner and the cascade chooser both price a transfer as ``RTT + bytes / bandwidth``,
so they need the two figures; here is where they come from:

- :class:`Link` — the figures themselves, and the time a transfer takes under them.
- :class:`LinkEstimator` — sans-IO: told how long real transfers and pings took, it keeps an
  exponentially weighted estimate, so the choice follows a link that changes.
- :class:`EmulatedLink` — a bandwidth schedule over time (``"10mbit@0s,1mbit@60s"``) for tests
  and trace replay, where no real network exists.

Units: bandwidth in bits per second (as links are sold and as ``tc`` takes it), sizes in
bytes, times in seconds.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass


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
    estimate taken off first; if nothing is left, it says nothing about bandwidth.
    """

    def __init__(
        self,
        prior: Link | None = None,
        *,
        alpha: float = 0.2,
        rtt_alpha: float = 0.125,
    ) -> None:
        for label, value in (("alpha", alpha), ("rtt_alpha", rtt_alpha)):
            if not 0 < value <= 1:
                raise ValueError(f"{label} must be in (0, 1], got {value}")
        self.prior = prior
        self.alpha = alpha
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

    def observe_transfer(self, nbytes: float, seconds: float, *, includes_rtt: bool = True) -> None:
        """``nbytes`` took ``seconds`` to send (with one round trip inside when ``includes_rtt``)."""
        if not nbytes >= 0 or not seconds >= 0:
            raise ValueError(f"transfer needs bytes >= 0 and seconds >= 0, got {nbytes}, {seconds}")
        on_wire = seconds - (self.rtt_s if includes_rtt else 0.0)
        if nbytes == 0 or on_wire <= 0:
            return
        self.transfers += 1
        bits = 8.0 * nbytes
        if self._bits is None or self._seconds is None:
            self._bits, self._seconds = bits, on_wire
        else:
            self._bits += self.alpha * (bits - self._bits)
            self._seconds += self.alpha * (on_wire - self._seconds)

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


_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0}
_ITEM = re.compile(
    r"^\s*(?P<rate>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?P<runit>[a-z]+)"
    r"\s*(?:@\s*(?P<time>[0-9]*\.?[0-9]+)\s*(?P<tunit>[a-z]+))?\s*$",
    re.IGNORECASE,
)


def parse_rate(text: str) -> float:
    """``"10mbit"`` -> 1e7 bits/s. Units as ``tc``: bit, kbit, mbit, gbit (powers of 1000)."""
    m = _ITEM.match(text)
    if m is None or m.group("time") is not None:
        raise ValueError(f"bad rate {text!r}: expected e.g. '10mbit'")
    return float(m.group("rate")) * _rate_unit(m.group("runit"), text)


def _rate_unit(unit: str, spec: str) -> float:
    key = unit.lower()
    if key in _RATE_UNITS:
        return _RATE_UNITS[key]
    hint = " ('kbps' means kilobytes/s to tc; write 'kbit' or 'mbit')" if "bps" in key else ""
    raise ValueError(
        f"bad rate unit {unit!r} in {spec!r}{hint}; units are {', '.join(_RATE_UNITS)}"
    )


@dataclass(frozen=True)
class EmulatedLink:
    """A link whose bandwidth follows a piecewise-constant schedule in time.

    ``segments`` are ``(start_s, bandwidth_bps)`` pairs, the first starting at 0 and the
    starts strictly increasing; each bandwidth holds until the next start (the last one
    forever). A transfer that spans a change is integrated across it, which is what a
    replay of a link that degrades mid-request needs.
    """

    segments: tuple[tuple[float, float], ...]
    rtt_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("an emulated link needs at least one (start_s, bandwidth_bps)")
        if self.segments[0][0] != 0:
            raise ValueError(f"the schedule must start at 0 s, not {self.segments[0][0]} s")
        starts = [s for s, _ in self.segments]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"schedule start times must increase strictly: {starts}")
        if any(not bw >= 0 for _, bw in self.segments):
            raise ValueError("bandwidths must be >= 0 bits/s")
        if not self.rtt_s >= 0:
            raise ValueError(f"round-trip time must be >= 0 s, got {self.rtt_s}")

    @classmethod
    def parse(cls, spec: str, *, rtt_s: float = 0.0) -> EmulatedLink:
        """``"10mbit"`` or ``"10mbit@0s,1mbit@60s,500kbit@90.5s"`` (times: ms, s, min)."""
        segments: list[tuple[float, float]] = []
        for i, item in enumerate(spec.split(",")):
            m = _ITEM.match(item)
            if m is None:
                raise ValueError(
                    f"bad link schedule item {item!r} in {spec!r}: expected RATE[@TIME], "
                    "e.g. '10mbit@0s'"
                )
            rate = float(m.group("rate")) * _rate_unit(m.group("runit"), spec)
            if m.group("time") is None:
                if i != 0:
                    raise ValueError(f"item {item!r} in {spec!r} needs a start time (@TIME)")
                start = 0.0
            else:
                tunit = m.group("tunit").lower()
                if tunit not in _TIME_UNITS:
                    raise ValueError(
                        f"bad time unit {m.group('tunit')!r} in {spec!r}; units are "
                        f"{', '.join(_TIME_UNITS)}"
                    )
                start = float(m.group("time")) * _TIME_UNITS[tunit]
            segments.append((start, rate))
        return cls(tuple(segments), rtt_s=rtt_s)

    def _segment(self, t: float) -> int:
        idx = 0
        for i, (start, _) in enumerate(self.segments):
            if start <= t:
                idx = i
            else:
                break
        return idx

    def bandwidth_at(self, t: float) -> float:
        """Bandwidth (bits/s) in force at time ``t`` (before 0: the first segment's)."""
        return self.segments[self._segment(t)][1]

    def link_at(self, t: float) -> Link:
        """A :class:`Link` snapshot at time ``t`` (what the planners price with)."""
        return Link(bandwidth_bps=self.bandwidth_at(t), rtt_s=self.rtt_s)

    def transfer_end(self, nbytes: float, start_s: float) -> float:
        """When ``nbytes`` started at ``start_s`` have all been sent (round trip excluded).

        Walks the segments from ``start_s``, draining bits at each segment's rate; infinite
        if the schedule ends in an outage (0 bits/s) before the bytes are through.
        """
        bits = 8.0 * max(nbytes, 0.0)
        t = start_s
        i = self._segment(t)
        while bits > 0:
            bw = self.segments[i][1]
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else math.inf
            if bw > 0:
                needed = bits / bw
                if t + needed <= end:
                    return t + needed
                bits -= (end - t) * bw
            elif end == math.inf:
                return math.inf
            t, i = end, i + 1
        return t

    def transfer_time(self, nbytes: float, start_s: float = 0.0) -> float:
        """Seconds to send ``nbytes`` starting at ``start_s``, round trip excluded."""
        return self.transfer_end(nbytes, start_s) - start_s
