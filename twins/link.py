"""A twin of the network link: a bandwidth schedule over time, for replays and emulation.

``EmulatedLink.parse("10mbit@0s,1mbit@60s", rtt_s=0.02)``: 10 Mbit/s from the start, 1 Mbit/s
from the 60th second. A replay prices each transfer on it (integrated across bandwidth
changes), and the daemon's next-tier client can sleep on it to slow a loopback link down.
The engine itself only ever sees its estimate of the link (``ecoserve.core.link``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from ecoserve.core.link import Link

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
