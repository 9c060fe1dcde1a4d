"""Durations written the way people type them on a command line: ``90s``, ``10m``, ``3h``.

One parser serves the CLI's ``--duration``, the generator specs (``fixed:50ms``) and
``load_trace(duration=...)`` so that every place accepts the same spellings.
"""

from __future__ import annotations

import math
import re

#: Seconds per unit; ``m`` is minutes (milliseconds are ``ms``).
UNITS: dict[str, float] = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|sec|min|s|m|h)\s*")
_BARE = re.compile(rf"\s*({_NUMBER})\s*")

DURATION_FORMS = (
    "a number of seconds, or number+unit with units ms, s, m, h (e.g. 50ms, 90s, 10m, 3h, 1h30m)"
)


def parse_duration(value: str | float | int, *, require_unit: bool = False) -> float:
    """Seconds in ``value``: ``"3h"``, ``"90s"``, ``"10m"``, ``"50ms"``, ``"1h30m"`` or a number.

    A bare number means seconds, as in most command-line tools, unless ``require_unit`` is
    set: the generator specs set it because ``fixed:50`` could mean 50 ms or 50 s, and a
    silent factor of 1000 in a benchmark is worse than an error.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        bare = _BARE.fullmatch(text)
        if bare and not require_unit:
            seconds = float(bare.group(1))
        else:
            seconds = _parse_units(text, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _parse_units(text: str, original: object) -> float:
    """Sum of ``number unit`` parts; the whole text must be consumed."""
    total, pos = 0.0, 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"cannot parse duration {original!r}: expected {DURATION_FORMS}")
    return total
