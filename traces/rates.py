"""Arrivals counted per time step: the form a fleet-sized day of traffic is replayed in.

A fleet of 60 boards at a few thousand requests per second sees hundreds of millions of
requests a day: too many timestamps to hold, and more detail than a fleet decision (taken
every second or so) uses. A :class:`RateSeries` keeps the count of arrivals in each step.

:func:`diurnal` builds a day of traffic from two parts, both stated:

- the daily envelope is a model, not data: a cosine between ``trough_rps`` (at 04:00) and
  ``peak_rps`` (at 16:00);
- the minute-scale swings are real: the bundled Azure LLM inference trace (one hour, see
  ``traces/data/README.md``) is counted per ``burst_step_s``, divided by its mean, and
  repeated over the day as a multiplier of the envelope.

Counts are Poisson draws at the resulting rate, seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces.bundled import bundled_names, load_bundled
from traces.trace import Trace

DAY_S = 86_400.0
TROUGH_HOUR = 4.0


@dataclass(frozen=True, eq=False)
class RateSeries:
    """``counts[i]`` requests arrived in ``[i * step_s, (i + 1) * step_s)``."""

    name: str
    step_s: float
    counts: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.float64).reshape(-1)
        if not (self.step_s > 0 and math.isfinite(self.step_s)):
            raise ValueError(f"rate series {self.name!r}: step must be > 0 s")
        if counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError(f"rate series {self.name!r}: counts must be finite and >= 0")
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)

    @property
    def rates(self) -> np.ndarray:
        """Requests per second in each step."""
        return self.counts / self.step_s

    @property
    def duration_s(self) -> float:
        return float(self.counts.size * self.step_s)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def describe(self) -> str:
        r = self.rates
        return (
            f"{self.name}: {self.total:,.0f} requests over {self.duration_s / 3600:.1f} h "
            f"(mean {r.mean():.0f} req/s, peak {r.max():.0f} req/s per {self.step_s:g} s step)"
        )


def binned(trace: Trace, step_s: float = 1.0) -> RateSeries:
    """Any arrival trace counted per ``step_s``."""
    if not step_s > 0:
        raise ValueError(f"step must be > 0 s, got {step_s}")
    steps = max(1, math.ceil(trace.duration / step_s))
    counts = np.bincount(
        np.minimum((trace.arrivals / step_s).astype(np.int64), steps - 1), minlength=steps
    )
    return RateSeries(trace.name, step_s, counts, trace.source)


def burst_shape(name: str = "azure-conv", step_s: float = 60.0) -> np.ndarray:
    """A bundled trace's arrivals per ``step_s``, divided by their mean (mean 1)."""
    if name not in bundled_names():
        raise ValueError(f"no bundled trace {name!r}; bundled: {', '.join(bundled_names())}")
    trace = load_bundled(name)
    counts = binned(trace, step_s).counts
    full = counts[: max(1, int(trace.duration // step_s))]  # drop a partial tail
    return full / full.mean()


def diurnal(
    peak_rps: float,
    trough_rps: float,
    *,
    duration_s: float = DAY_S,
    step_s: float = 1.0,
    burst: str | None = "azure-conv",
    burst_step_s: float = 60.0,
    seed: int = 0,
    day_s: float = DAY_S,
) -> RateSeries:
    """A day (or ``duration_s``) of traffic: cosine envelope times a real trace's swings.

    ``day_s`` is the envelope's period: shorter than a day compresses the daily swing (for
    replays that must run every request).
    """
    if not (peak_rps > 0 and 0 <= trough_rps <= peak_rps):
        raise ValueError(f"need 0 <= trough <= peak, peak > 0; got {trough_rps}, {peak_rps}")
    if not (duration_s > 0 and step_s > 0 and burst_step_s >= step_s and day_s > 0):
        raise ValueError("duration and step must be > 0 s, burst step >= step")
    steps = math.ceil(duration_s / step_s)
    t = (np.arange(steps) + 0.5) * step_s
    phase = 2 * math.pi * (t / day_s - TROUGH_HOUR / 24.0)
    envelope = trough_rps + (peak_rps - trough_rps) * (1.0 - np.cos(phase)) / 2.0
    source = f"diurnal model: cosine {trough_rps:g}..{peak_rps:g} req/s (trough 04:00)"
    if burst:
        shape = burst_shape(burst, burst_step_s)
        idx = (t // burst_step_s).astype(np.int64) % shape.size
        envelope = envelope * shape[idx]
        source += f", times the minute-scale swings of {burst} (per {burst_step_s:g} s)"
    counts = np.random.default_rng(seed).poisson(envelope * step_s)
    return RateSeries(f"diurnal:{peak_rps:g}", step_s, counts, source + f", Poisson seed {seed}")
