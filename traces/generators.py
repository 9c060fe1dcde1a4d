"""Synthetic arrival patterns named by a spec string.

The EcoEdgeInfer evaluation uses fixed inter-arrival times (50 ms, 90 ms) and bursts
(10 requests together every 500 ms or 900 ms); a Poisson process adds the memoryless
arrivals queueing results are usually stated for. A spec string names one of them so the
CLI, configs and tests can ask for a workload in one token:

- ``fixed:50ms``       one request every 50 ms
- ``bursty:10@500ms``  10 requests arriving together every 500 ms
- ``poisson:20``       Poisson arrivals at 20 requests/s (``poisson:20/s`` too), seeded
- ``step:8,24@5m``     Poisson at 8 req/s for 5 minutes, then 24, then 8 again... (seeded)
- ``diurnal:4-24@30m`` Poisson whose rate swings 4 -> 24 -> 4 req/s over 30 minutes
- ``mmpp:6,30@2m``     Markov-modulated Poisson: 6 or 30 req/s, exponential dwell of mean 2 min

The last three change the load over time (see ``traces.varying``).

Intervals need a unit (``ms`` or ``s``): ``fixed:50`` would be ambiguous.
"""

from __future__ import annotations

import re

import numpy as np

from traces.durations import parse_duration
from traces.trace import Trace
from traces.varying import diurnal_arrivals, mmpp_arrivals, step_arrivals

#: What a generator spec may look like; quoted in every error about a spec.
SPEC_FORMS = (
    "fixed:<interval> (e.g. fixed:50ms), "
    "bursty:<count>@<interval> (e.g. bursty:10@500ms), "
    "poisson:<rate per second> (e.g. poisson:20), "
    "step:<rates>@<period> (e.g. step:8,24@5m), "
    "diurnal:<low>-<high>@<period> (e.g. diurnal:4-24@30m), "
    "mmpp:<rates>@<mean dwell> (e.g. mmpp:6,30@2m)"
)
GENERATOR_KINDS = ("fixed", "bursty", "poisson", "step", "diurnal", "mmpp")

#: Length of a generated trace when none is asked for: long enough for a tuner to settle.
DEFAULT_DURATION_S = 600.0

_INTERVAL = r"\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s)\s*"
_FIXED = re.compile(rf"({_INTERVAL})")
_BURSTY = re.compile(rf"\s*(\d+)\s*@({_INTERVAL})")
_POISSON = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?:/\s*s)?\s*")
_NUMBER = r"\s*(?:\d+(?:\.\d*)?|\.\d+)\s*"
_PERIOD = r"\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h)\s*"
_LEVELS = re.compile(rf"({_NUMBER}(?:,{_NUMBER})*)@({_PERIOD})")
_RANGE = re.compile(rf"({_NUMBER})-({_NUMBER})@({_PERIOD})")


def is_generator_spec(text: str) -> bool:
    """True when ``text`` names a generator kind (whether or not the rest is valid)."""
    kind, sep, _ = text.partition(":")
    return bool(sep) and kind.strip().lower() in GENERATOR_KINDS


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad trace spec {spec!r}: {why}; accepted forms: {SPEC_FORMS}")


def _interval(spec: str, text: str) -> float:
    seconds = parse_duration(text, require_unit=True)
    if seconds <= 0:
        raise _bad(spec, "the interval must be > 0")
    return seconds


def fixed_arrivals(interval_s: float, duration_s: float) -> np.ndarray:
    """One request every ``interval_s`` seconds starting at 0, strictly before ``duration_s``."""
    count = int(np.ceil(duration_s / interval_s - 1e-9)) if duration_s > 0 else 0
    times = np.arange(count, dtype=np.float64) * interval_s
    return times[times < duration_s]


def bursty_arrivals(count: int, interval_s: float, duration_s: float) -> np.ndarray:
    """``count`` requests at the same instant, every ``interval_s`` seconds."""
    return np.repeat(fixed_arrivals(interval_s, duration_s), count)


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """A homogeneous Poisson process: exponential gaps with mean ``1/rate``, seeded."""
    rng = np.random.default_rng(seed)
    expected = rate * duration_s
    # Draw in chunks with headroom; one extra round is rarely needed.
    times: list[np.ndarray] = []
    start = 0.0
    while start < duration_s:
        n = int(expected + 6 * np.sqrt(expected) + 16)
        chunk = start + np.cumsum(rng.exponential(1.0 / rate, size=n))
        times.append(chunk)
        start = float(chunk[-1])
    arrivals = np.concatenate(times) if times else np.empty(0)
    return arrivals[arrivals < duration_s]


def generate(spec: str, duration_s: float = DEFAULT_DURATION_S, seed: int = 0) -> Trace:
    """The trace a spec string describes, ``duration_s`` seconds long.

    Raises ValueError (listing the accepted forms) for anything that is not a valid spec.
    """
    if not duration_s >= 0:
        raise ValueError(f"duration must be >= 0 s, got {duration_s!r}")
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in GENERATOR_KINDS:
        raise _bad(spec, f"unknown generator {kind!r}")
    if kind == "fixed":
        if not _FIXED.fullmatch(arg):
            raise _bad(spec, "fixed takes one interval with a unit")
        interval = _interval(spec, arg)
        arrivals = fixed_arrivals(interval, duration_s)
        source = f"generated: one request every {interval * 1e3:g} ms"
    elif kind == "bursty":
        match = _BURSTY.fullmatch(arg)
        if not match:
            raise _bad(spec, "bursty takes <count>@<interval with a unit>")
        count = int(match.group(1))
        if count < 1:
            raise _bad(spec, "the burst size must be >= 1")
        interval = _interval(spec, match.group(2))
        arrivals = bursty_arrivals(count, interval, duration_s)
        source = f"generated: {count} requests together every {interval * 1e3:g} ms"
    elif kind in ("step", "mmpp"):
        match = _LEVELS.fullmatch(arg)
        if not match:
            raise _bad(spec, f"{kind} takes <rate>,<rate>...@<duration with a unit>")
        rates = tuple(float(r) for r in match.group(1).split(","))
        period = parse_duration(match.group(2))
        if period <= 0 or not all(r >= 0 for r in rates) or not any(r > 0 for r in rates):
            raise _bad(spec, "the period must be > 0 and the rates >= 0, one of them > 0")
        if kind == "step":
            arrivals = step_arrivals(rates, period, duration_s, seed)
            source = f"generated: Poisson at {rates} req/s in turn, {period:g} s each (seed {seed})"
        else:
            arrivals = mmpp_arrivals(rates, period, duration_s, seed)
            source = f"generated: MMPP over {rates} req/s, mean dwell {period:g} s (seed {seed})"
    elif kind == "diurnal":
        match = _RANGE.fullmatch(arg)
        if not match:
            raise _bad(spec, "diurnal takes <low>-<high>@<period with a unit>")
        low, high = float(match.group(1)), float(match.group(2))
        period = parse_duration(match.group(3))
        if period <= 0 or not 0 <= low <= high or high <= 0:
            raise _bad(spec, "the period must be > 0 and 0 <= low <= high, high > 0")
        arrivals = diurnal_arrivals(low, high, period, duration_s, seed)
        source = (
            f"generated: Poisson from {low:g} to {high:g} req/s over {period:g} s (seed {seed})"
        )
    else:
        match = _POISSON.fullmatch(arg)
        if not match:
            raise _bad(spec, "poisson takes a rate in requests per second")
        rate = float(match.group(1))
        if not rate > 0:
            raise _bad(spec, "the rate must be > 0")
        arrivals = poisson_arrivals(rate, duration_s, seed)
        source = f"generated: Poisson arrivals at {rate:g} requests/s (seed {seed})"
    return Trace(name=spec.strip(), arrivals=arrivals, source=source, duration_s=duration_s)


def static_load_note(spec: str, duration_s: float) -> str | None:
    """Why a load-changing generator would not change within ``duration_s``, else None.

    ``step:8,24@10m`` over 5 minutes is a plain Poisson trace at 8 req/s: worth saying
    before a run that means to show tuners following a load change.
    """
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("step", "mmpp", "diurnal"):
        return None
    match = (_RANGE if kind == "diurnal" else _LEVELS).fullmatch(arg)
    if not match:
        return None
    period = parse_duration(match.group(3 if kind == "diurnal" else 2))
    if kind == "step" and duration_s <= period:
        return (
            f"{spec.strip()} steps every {period:g} s but the trace lasts {duration_s:g} s: "
            f"the rate never steps (give a --duration above {period:g} s)"
        )
    if kind == "diurnal" and duration_s < period / 2:
        return (
            f"{spec.strip()} swings over {period:g} s but the trace lasts {duration_s:g} s: "
            "it never reaches its high rate (give a --duration of at least half the period)"
        )
    if kind == "mmpp" and duration_s < period:
        return (
            f"{spec.strip()} dwells {period:g} s on a rate on average but the trace lasts "
            f"{duration_s:g} s: it may never switch (give a longer --duration)"
        )
    return None
