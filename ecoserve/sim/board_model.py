"""A board's steady-state response to load, measured by running its own engine on its twin.

A day of fleet traffic is hundreds of millions of requests: replaying each through 60
engines would take hours. What the fleet decides, though, is only how many requests per
second each board gets, and it holds that for a control period. So each board kind is
measured once per tuner: the ordinary :class:`~ecoserve.sim.driver.Simulator` (the same
engine, batching policy, controller and tuner as the daemon) replays Poisson arrivals at a
grid of rates on the board's twin, and the :class:`BoardModel` keeps what each run gave:
mean whole-board power (idle included), the share of requests served, and the latency
distribution (a histogram). The fleet replay reads the model at the rate each board is sent.

Each point is measured after a warm-up of tuning windows (``RunLength``): the tuner's start from a
cold state is left out, since a board keeps its engine and tuner state while parked (the Ray
replica stays up at minimum clocks; a powered-off board would reload its saved state). What
the model leaves out, stated: the transient of a tuner re-settling after a board's share
changes, and queues carried from one control period into the next.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.knobs import Knob
from ecoserve.sim.driver import Simulator
from traces.generators import poisson_arrivals
from twins.base import BatchSample, DeviceTwin
from twins.fitted import load_twin

#: Latency histogram edges (seconds): log-spaced from 0.1 ms to 1000 s.
LATENCY_EDGES = np.geomspace(1e-4, 1e3, 141)
#: Offered load of each calibration run, as fractions of the board's rate at every knob max.
LOAD_FRACTIONS = (
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    1.0,
    1.1,
)


@dataclass(frozen=True)
class RunLength:
    """How long each calibration run is: windows of warm-up left out, then what is measured.

    The measured stretch holds about ``requests`` requests, kept within
    ``[min_span_s, max_span_s]`` of virtual time.
    """

    warmup_windows: int = 60
    requests: int = 60_000
    min_span_s: float = 200.0
    max_span_s: float = 1800.0

    def spans(self, rate: float, settings: EngineSettings) -> tuple[float, float]:
        """(warm-up, measured) seconds of a run at ``rate``."""
        per_window = (settings.window_requests or 416) / rate
        if settings.window_seconds:
            per_window = min(per_window, settings.window_seconds)
        measured = min(max(self.requests / rate, self.min_span_s), self.max_span_s)
        return self.warmup_windows * per_window, measured


def max_rate(twin: DeviceTwin, max_batch: int) -> float:
    """Requests per second the board serves with every knob at maximum, back to back."""
    return max_batch / twin.batch_time(max_batch, twin.max_freqs())


@dataclass(frozen=True)
class BoardModel:
    """Measured response of one board kind under one tuner, at a grid of offered rates."""

    kind: str
    tuner: str
    rates: np.ndarray
    power_w: np.ndarray
    served: np.ndarray
    latency_mean_s: np.ndarray
    histogram: np.ndarray
    idle_w: float
    min_clock_idle_w: float

    def _interp(self, values: np.ndarray, rate: np.ndarray | float) -> np.ndarray:
        return np.interp(rate, self.rates, values)

    def power(self, rate: np.ndarray | float) -> np.ndarray:
        """Mean whole-board watts when sent ``rate`` req/s (beyond the grid: the top point)."""
        return self._interp(self.power_w, rate)

    def served_rate(self, rate: np.ndarray | float) -> np.ndarray:
        """Requests per second served: the measured share, capped at the top point's rate."""
        r = np.asarray(rate, dtype=np.float64)
        top = self.rates[-1] * self.served[-1]
        return np.minimum(r * self._interp(self.served, r), top)

    def ongoing(self, rate: np.ndarray | float) -> np.ndarray:
        """Requests queued or running (Little's law on the measured mean latency)."""
        return self.served_rate(rate) * self._interp(self.latency_mean_s, rate)

    def histogram_at(self, rate: float) -> np.ndarray:
        """Share of served requests per latency bin at ``rate`` (interpolated)."""
        i = int(np.searchsorted(self.rates, rate))
        if i <= 0:
            return self.histogram[0]
        if i >= len(self.rates):
            return self.histogram[-1]
        lo, hi = self.rates[i - 1], self.rates[i]
        w = (rate - lo) / (hi - lo)
        return (1 - w) * self.histogram[i - 1] + w * self.histogram[i]

    def quantile_s(self, rate: float, q: float) -> float:
        return histogram_quantile(self.histogram_at(rate), q)

    def capacity(self, slo_s: float, percentile: float = 99.0, min_served: float = 0.999) -> float:
        """The highest measured rate whose latency percentile is within ``slo_s``."""
        best = 0.0
        for i, r in enumerate(self.rates):
            if r <= 0:
                continue
            ok = self.served[i] >= min_served
            ok = ok and histogram_quantile(self.histogram[i], percentile) <= slo_s
            if not ok:
                break
            best = float(r)
        return best


def histogram_quantile(hist: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of a latency histogram over ``LATENCY_EDGES`` (log-interpolated)."""
    total = float(hist.sum())
    if total <= 0:
        return math.nan
    cum = np.cumsum(hist) / total
    i = int(np.searchsorted(cum, q / 100.0))
    if i >= len(hist):
        return math.inf
    below = cum[i - 1] if i > 0 else 0.0
    frac = (q / 100.0 - below) / (cum[i] - below) if cum[i] > below else 0.0
    lo, hi = LATENCY_EDGES[i], LATENCY_EDGES[i + 1]
    return float(lo * (hi / lo) ** frac)


class _Recorder(DeviceTwin):
    """The twin, with every batch it runs after ``since`` written down (start, s, J).

    The simulator meters idle power between batches at the twin's idle draw, which for the
    fitted twins does not depend on the clocks; so the energy of any stretch of a run is
    its batches' energy plus idle power over the time no batch ran. Everything else is the
    wrapped twin's own answer.
    """

    def __init__(self, twin: DeviceTwin, since: float) -> None:
        self._twin = twin
        self.since = since
        self.busy_s = 0.0
        self.joules = 0.0
        self.name, self.noise, self.power_noise = twin.name, twin.noise, twin.power_noise
        self.observes_environment = twin.observes_environment

    def __getattr__(self, name: str) -> object:
        return getattr(self._twin, name)  # what a particular twin adds (a fitted twin's params)

    def knobs(self) -> list[Knob]:
        return self._twin.knobs()

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return self._twin.batch_time(batch, freqs)

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return self._twin.power(freqs, busy, batch=batch)

    def sample_batch_time(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random
    ) -> float:
        return self._twin.sample_batch_time(batch, freqs, rng)

    def sample_power(
        self,
        freqs: Mapping[str, float],
        busy: float,
        rng: random.Random,
        *,
        batch: int | None = None,
    ) -> float:
        return self._twin.sample_power(freqs, busy, rng, batch=batch)

    def max_freqs(self) -> dict[str, float]:
        return self._twin.max_freqs()

    def context(self, now: float) -> dict[str, float]:
        return self._twin.context(now)

    def sample_batch(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random, now: float
    ) -> BatchSample:
        sample = self._twin.sample_batch(batch, freqs, rng, now)
        if now >= self.since:
            self.busy_s += sample.seconds
            self.joules += sample.joules
        return sample


def _point(
    kind: str, tuner: str, rate: float, settings: EngineSettings, seed: int, length: RunLength
) -> tuple[float, float, float, np.ndarray]:
    """One calibration run: (power W, served share, mean latency s, histogram).

    Measured after the warm-up, so the tuner's start-up from a cold state is left out (a
    parked board keeps its engine and tuner state, see the module doc).
    """
    twin = load_twin(kind)
    low = {k.name: k.values[0] for k in twin.knobs()}
    if twin.power(low, 0.0) != twin.power(twin.max_freqs(), 0.0):
        raise ValueError(f"{kind}: idle draw depends on the clocks; the recorder assumes not")
    warm, measured = length.spans(rate, settings)
    arrivals = poisson_arrivals(rate, warm + measured, seed)
    recorder = _Recorder(twin, warm)
    sim = Simulator(
        recorder,
        build_engine(twin.knobs(), replace(settings, seed=seed)),
        noise_seed=seed,
    )
    res = sim.run(arrivals)
    keep = arrivals >= warm
    done = res.completions[keep]
    lat = done[~np.isnan(done)] - arrivals[keep][~np.isnan(done)]
    hist = np.histogram(np.clip(lat, LATENCY_EDGES[0], LATENCY_EDGES[-1] * 0.999), LATENCY_EDGES)[
        0
    ].astype(np.float64)
    span = max(res.end_s, warm + measured) - warm
    idle = float(twin.power(twin.max_freqs(), 0.0))
    power = (recorder.joules + idle * max(0.0, span - recorder.busy_s)) / span
    served = lat.size / max(1, int(keep.sum()))
    mean = float(lat.mean()) if lat.size else 0.0
    return power, served, mean, hist / max(1, lat.size)


def calibrate(
    kind: str,
    tuner: str,
    settings: EngineSettings | None = None,
    *,
    fractions: Sequence[float] = LOAD_FRACTIONS,
    seed: int = 0,
    workers: int = 1,
    length: RunLength | None = None,
) -> BoardModel:
    """Measure ``kind``'s board under ``tuner`` at each load fraction (see module doc)."""
    settings = replace(settings or EngineSettings(), tuner=tuner)
    twin = load_twin(kind)
    top = max_rate(twin, settings.max_batch)
    rates = [f * top for f in sorted(fractions) if f > 0]
    length = length or RunLength()
    args = [(kind, tuner, r, settings, seed + i, length) for i, r in enumerate(rates)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            points = list(pool.map(_point_star, args))
    else:
        points = [_point(*a) for a in args]
    idle = float(twin.power(twin.max_freqs(), 0.0))
    low = {k.name: k.values[0] for k in twin.knobs()}
    first_hist = points[0][3]
    return BoardModel(
        kind=kind,
        tuner=tuner,
        rates=np.array([0.0, *rates]),
        power_w=np.array([idle, *(p[0] for p in points)]),
        served=np.array([1.0, *(p[1] for p in points)]),
        latency_mean_s=np.array([points[0][2], *(p[2] for p in points)]),
        histogram=np.vstack([first_hist, *(p[3] for p in points)]),
        idle_w=idle,
        min_clock_idle_w=float(twin.power(low, 0.0)),
    )


def _point_star(
    a: tuple[str, str, float, EngineSettings, int, RunLength],
) -> tuple[float, float, float, np.ndarray]:
    return _point(*a)
