"""Arrival processes whose rate changes over time: steps, a diurnal curve, MMPP bursts.

A server's load is rarely one rate for an hour. These three shapes test whether a tuner
follows it, each a Poisson process whose rate is a function of time:

- step: the rate jumps between levels and holds each for a period, cycling, so every level
  comes back (``step:8,24@5m``: 8 req/s for 5 minutes, then 24, then 8 again...);
- diurnal: the rate swings smoothly, a cosine between a low and a high rate over one period
  (``diurnal:4-24@30m``), the shape of a day's traffic compressed;
- MMPP: a Markov-modulated Poisson process, the textbook bursty-load model: the rate jumps
  among levels at exponentially distributed times (mean dwell per state, ``mmpp:6,30@2m``),
  so bursts come at random and last a random time.

All are seeded, so one seed gives the same arrivals to every tuner of a comparison.
"""

from __future__ import annotations

import numpy as np


def _poisson_piecewise(
    edges: np.ndarray, rates: np.ndarray, duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Poisson arrivals at ``rates[k]`` between ``edges[k]`` and ``edges[k + 1]``."""
    pieces = []
    for start, end, rate in zip(edges[:-1], edges[1:], rates, strict=True):
        end = min(end, duration_s)
        if end <= start or rate <= 0:
            continue
        count = rng.poisson(rate * (end - start))
        pieces.append(np.sort(rng.uniform(start, end, size=count)))
    return np.concatenate(pieces) if pieces else np.empty(0)


def step_arrivals(
    rates: tuple[float, ...], period_s: float, duration_s: float, seed: int
) -> np.ndarray:
    """Poisson arrivals whose rate cycles through ``rates``, holding each for ``period_s``."""
    steps = int(np.ceil(duration_s / period_s)) if duration_s > 0 else 0
    edges = np.arange(steps + 1, dtype=np.float64) * period_s
    levels = np.array([rates[k % len(rates)] for k in range(steps)], dtype=np.float64)
    return _poisson_piecewise(edges, levels, duration_s, np.random.default_rng(seed))


def diurnal_arrivals(
    low: float, high: float, period_s: float, duration_s: float, seed: int
) -> np.ndarray:
    """Poisson arrivals whose rate follows a cosine from ``low`` (at 0) up to ``high`` (at
    half the period) and back, drawn by thinning a Poisson process at ``high``."""
    rng = np.random.default_rng(seed)
    count = rng.poisson(high * duration_s)
    candidates = np.sort(rng.uniform(0.0, duration_s, size=count))
    rate = low + (high - low) * 0.5 * (1.0 - np.cos(2.0 * np.pi * candidates / period_s))
    return candidates[rng.uniform(0.0, high, size=count) < rate]


def mmpp_arrivals(
    rates: tuple[float, ...], mean_dwell_s: float, duration_s: float, seed: int
) -> np.ndarray:
    """A Markov-modulated Poisson process: each state holds an exponential time (mean
    ``mean_dwell_s``), then moves to another state chosen uniformly."""
    rng = np.random.default_rng(seed)
    edges, levels, t, state = [0.0], [], 0.0, 0
    while t < duration_s:
        levels.append(rates[state])
        t += float(rng.exponential(mean_dwell_s))
        edges.append(t)
        if len(rates) > 1:
            state = (state + int(rng.integers(1, len(rates)))) % len(rates)
    return _poisson_piecewise(np.array(edges), np.array(levels), duration_s, rng)
