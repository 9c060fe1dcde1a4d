"""A fleet run replayed request by request: the check on the fleet replay's board models.

``run_fleet`` reads each board's energy and latency from a model measured at steady rates.
Here the same decisions (each period's traffic shares and board states, kept in the
:class:`FleetRun`) are carried out on individual requests: the arrivals of each step are
spread uniformly over it, each request is sent to a board drawn by that period's weights,
and every board's requests go through its own engine and tuner on its twin
(:mod:`ecoserve.sim.driver`). Each board starts cold (baseline, then tuning); a board
powered off and woken again resumes its engine's saved state, as the runtime does at boot
(see :func:`_run_board`).

Energy is each board's metered draw, with the time it was not serving billed at its parked
or waking draw instead of idle (the fitted twins' idle draw does not depend on the clocks,
so idle time is separable). Only for small fleets and short series: every request runs.

:func:`replay_board` does the same for one board of a large fleet (a sample of boards over a
60-board day), beside :func:`model_board`, what the fleet replay's model says of that board.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.sim.board_model import BoardModel, histogram_quantile
from ecoserve.sim.driver import Simulator
from ecoserve.sim.fleet import (
    FleetBoard,
    FleetRun,
    Parking,
    board_step_rates,
    latency_histogram,
)
from traces.rates import RateSeries
from twins.base import DeviceTwin
from twins.fitted import load_twin


@dataclass(frozen=True)
class DirectResult:
    energy_j: float
    offered: int
    served: int
    latencies_s: np.ndarray
    #: Arrival time of each answered request, aligned with ``latencies_s``, and of each
    #: rejected one (one board's replay).
    arrivals_s: np.ndarray | None = None
    rejected_at_s: np.ndarray | None = None

    @property
    def joules_per_request(self) -> float:
        return self.energy_j / self.served if self.served else float("inf")

    def quantile_s(self, q: float) -> float:
        """Percentile over offered requests, a rejected one counted as never answered."""
        if q / 100.0 * self.offered > self.served:  # the percentile falls among the rejected
            return float("inf") if self.offered else float("nan")
        lat = np.concatenate([self.latencies_s, np.full(self.offered - self.served, np.inf)])
        return float(np.percentile(lat, q)) if lat.size else float("nan")

    def quantile_after_s(self, starts: np.ndarray, span_s: float, q: float) -> tuple[float, int]:
        """Percentile over the requests that arrived within ``span_s`` after any of ``starts``
        (a rejected one counted as never answered), and how many there were."""
        if self.arrivals_s is None or self.rejected_at_s is None:
            raise ValueError("this result kept no arrival times (only replay_board keeps them)")

        def near(t: np.ndarray) -> np.ndarray:
            mask = np.zeros(t.size, dtype=bool)
            for start in starts:
                mask |= (t >= start) & (t < start + span_s)
            return mask

        lat = self.latencies_s[near(self.arrivals_s)]
        lost = int(near(self.rejected_at_s).sum())
        part = DirectResult(0.0, lat.size + lost, lat.size, lat)
        return part.quantile_s(q), part.offered

    def slo_violations(self, slo_s: float) -> float:
        late = int(np.count_nonzero(self.latencies_s > slo_s))
        return (late + self.offered - self.served) / self.offered if self.offered else 0.0


def spread(series: RateSeries, seed: int) -> np.ndarray:
    """Arrival times: each step's count spread uniformly over the step, sorted."""
    rng = np.random.default_rng(seed)
    counts = series.counts.astype(np.int64)
    starts = np.repeat(np.arange(counts.size) * series.step_s, counts)
    return np.sort(starts + rng.uniform(0.0, series.step_s, size=starts.size))


def replay_direct(
    run: FleetRun,
    boards: Sequence[FleetBoard],
    series: RateSeries,
    park: Parking,
    settings: EngineSettings,
    tuner: str,
    *,
    seed: int = 0,
) -> DirectResult:
    """Carry out ``run``'s decisions on every request (see the module doc)."""
    if run.weights is None or run.states is None:
        raise ValueError("this run kept no decisions to replay")
    arrivals = spread(series, seed)
    periods = run.weights.shape[0]
    end = periods * run.period_s
    arrivals = arrivals[arrivals < end]
    k = (arrivals // run.period_s).astype(np.int64)
    cum = np.cumsum(run.weights, axis=1)
    draw = np.random.default_rng(seed + 1).uniform(size=arrivals.size) * cum[k, -1]
    board_of = (draw[:, None] >= cum[k]).sum(axis=1)
    routed = cum[k, -1] > 0  # a period with no board serving: its requests are lost
    latencies: list[np.ndarray] = []
    energy = 0.0
    served = 0
    for i, b in enumerate(boards):
        one = _run_board(
            arrivals[routed & (board_of == i)],
            load_twin(b.kind),
            run.states[:, i],
            run.period_s,
            park,
            b.kind,
            replace(settings, tuner=tuner, seed=seed + i),
        )
        energy += one.energy_j
        served += one.served
        latencies.append(one.latencies_s)
    lat = np.concatenate(latencies) if latencies else np.empty(0)
    return DirectResult(energy, int(arrivals.size), served, lat)


def wake_starts(states: np.ndarray, period_s: float) -> np.ndarray:
    """Times (s from the first period) at which a board was woken: parked, then not."""
    at = np.nonzero((states[:-1] == 2) & (states[1:] <= 1))[0] + 1
    return at * period_s


def _run_board(
    arrivals: np.ndarray,
    twin: DeviceTwin,
    states: np.ndarray,
    period_s: float,
    park: Parking,
    kind: str,
    settings: EngineSettings,
    hand_over: Callable[[float], Mapping[str, Any]] | None = None,
) -> DirectResult:
    """One board's requests through its engine; the time it did not serve billed as parked.

    Parked powered off, the board's engine stops with the board, and at each wake a new one
    resumes a saved tuning state, as the runtime resumes its state file at start: the state
    the fleet hands it, ``hand_over(rate)`` for the rate it is sent in its first minute (a
    peer's serving that rate now, see :func:`peer_state`), else the one its own engine left.
    Parked at minimum clocks the board stays up, so one engine runs throughout.
    """
    end = len(states) * period_s
    idle_w = float(twin.power(twin.max_freqs(), 0.0))
    seconds = {code: float(np.count_nonzero(states == code)) * period_s for code in range(4)}
    cuts = wake_starts(states, period_s) if park.mode == "off" else np.empty(0)
    bounds = [0.0, *cuts.tolist(), end]
    metered, served = 0.0, 0
    lats: list[np.ndarray] = []
    answered: list[np.ndarray] = []
    lost: list[np.ndarray] = []
    saved: Mapping[str, Any] | None = None
    for j, (t0, t1) in enumerate(itertools.pairwise(bounds)):
        last = j == len(bounds) - 2
        mine = arrivals[(arrivals >= t0) & ((arrivals < t1) | last)] - t0
        if not mine.size:
            metered += idle_w * (t1 - t0)
            continue
        engine = build_engine(twin.knobs(), settings)
        resume = saved
        if j > 0 and hand_over is not None:
            resume = hand_over(float(np.count_nonzero(mine < mine[0] + 60.0)) / 60.0)
        if resume is not None:
            engine.load_state_dict(resume)
        res = Simulator(twin, engine, noise_seed=settings.seed + 7 * j).run(mine)
        saved = engine.state_dict()
        metered += res.total_energy_j + idle_w * max(0.0, (t1 - t0) - res.end_s)
        served += res.served
        lats.append(res.latencies)
        done = ~np.isnan(res.completions)
        answered.append(res.arrivals[done] + t0)
        lost.append(res.arrivals[~done] + t0)
    lat = np.concatenate(lats) if lats else np.empty(0)
    ans = np.concatenate(answered) if answered else np.empty(0)
    rej = np.concatenate(lost) if lost else np.empty(0)
    not_serving = seconds[1] + seconds[2] + seconds[3]
    energy = (
        metered
        - idle_w * not_serving
        + park.waking_w[kind] * seconds[1]
        + park.parked_w[kind] * seconds[2]
    )
    return DirectResult(energy, int(arrivals.size), int(served), lat, ans, rej)


def _window(run: FleetRun, window_s: tuple[float, float] | None) -> tuple[int, int]:
    """Control periods ``[k0, k1)`` covering ``window_s`` (the whole run when None)."""
    assert run.weights is not None
    npd = run.weights.shape[0]
    if window_s is None:
        return 0, npd
    t0, t1 = window_s
    k0 = max(0, int(t0 // run.period_s))
    k1 = min(npd, int(np.ceil(t1 / run.period_s)))
    if not (0 <= t0 < t1) or k1 <= k0:
        raise ValueError(
            f"window {t0:g}-{t1:g} s holds no control period of the run "
            f"(0-{npd * run.period_s:g} s); give 0 <= start < end within it"
        )
    return k0, k1


def board_arrivals(
    run: FleetRun,
    index: int,
    series: RateSeries,
    *,
    seed: int = 0,
    window_s: tuple[float, float] | None = None,
) -> np.ndarray:
    """The requests ``run`` sent one board while it served, times from the window's start.

    Each step's arrivals are thinned by the board's share that period (binomially: each
    request goes to the board with that probability, as the routing of :func:`replay_direct`
    draws them), then spread uniformly over the step; the rest of the fleet is not generated.
    """
    k0, k1 = _window(run, window_s)
    per = max(1, int(round(run.period_s / series.step_s)))
    lam = board_step_rates(run, index, series)[k0 * per : k1 * per]
    counts = np.round(series.counts[k0 * per : k1 * per]).astype(np.int64)
    step_rates = series.rates[k0 * per : k1 * per]
    share = np.divide(lam, step_rates, out=np.zeros_like(lam), where=step_rates > 0)
    rng = np.random.default_rng(seed)
    mine = rng.binomial(counts, np.clip(share, 0.0, 1.0))
    starts = np.repeat(np.arange(mine.size) * series.step_s, mine)
    return np.sort(starts + rng.uniform(0.0, series.step_s, size=starts.size))


def replay_board(
    run: FleetRun,
    index: int,
    board: FleetBoard,
    series: RateSeries,
    park: Parking,
    settings: EngineSettings,
    *,
    seed: int = 0,
    window_s: tuple[float, float] | None = None,
    peer_handover: bool = False,
) -> DirectResult:
    """Every request ``run`` sent board ``index`` (within ``window_s``) through its engine.

    The board starts cold at the window's start (baseline, then tuning); across parked spells
    it keeps its tuning: powered off, each wake starts a new engine from the state the last
    one saved, or with ``peer_handover`` from the state of a peer of its kind that has been
    serving the rate the board is now sent (:func:`peer_state`), as a fleet can copy a
    serving board's state file to the board it wakes (:func:`_run_board`).
    """
    assert run.states is not None
    k0, k1 = _window(run, window_s)
    arrivals = board_arrivals(run, index, series, seed=seed, window_s=window_s)
    chosen = tuned_settings(settings, run.slo_s) if models_tuner(run) == "ecogd" else settings
    chosen = replace(chosen, tuner=models_tuner(run), seed=seed + index)
    states = run.states[k0:k1, index]
    hand_over = None
    if peer_handover:

        def hand_over(rate_rps: float) -> dict[str, Any]:
            return peer_state(board.kind, max(rate_rps, 1.0), chosen, seed=seed)

    return _run_board(
        arrivals, load_twin(board.kind), states, run.period_s, park, board.kind, chosen, hand_over
    )


def peer_state(
    kind: str, rate_rps: float, settings: EngineSettings, *, seconds: float = 900.0, seed: int = 0
) -> dict[str, Any]:
    """The tuning state of a board of ``kind`` after serving ``rate_rps`` for ``seconds``.

    What a fleet can hand a board it wakes: the state file of a peer of the same kind that has
    been serving (``ecoserve.runtime.tuning_state`` saves it after every window), so the
    woken board starts at a tuned configuration with its tuner's probing done, rather than
    from its own state, which after minutes of serving is still young (a young EcoGD scans
    its batch axis down to size 1: at a full share that is seconds of queue).
    """
    if not (rate_rps > 0 and seconds > 0):
        raise ValueError(f"a peer's state needs a rate and a span > 0, got {rate_rps}, {seconds}")
    twin = load_twin(kind)
    engine = build_engine(twin.knobs(), settings)
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.uniform(0.0, seconds, rng.poisson(rate_rps * seconds)))
    Simulator(twin, engine, noise_seed=seed).run(arrivals)
    return engine.state_dict()


@dataclass(frozen=True)
class ModelBoard:
    """What the fleet replay's model says of one board: its bill, requests and latencies."""

    energy_j: float
    offered: float
    served: float
    histogram: np.ndarray

    def quantile_s(self, q: float) -> float:
        """Percentile over offered requests, a rejected one counted as never answered."""
        answered = float(self.histogram.sum())
        position = q / 100.0 * self.offered
        if answered <= 0 or position > answered:
            return float("nan") if answered <= 0 else float("inf")
        return histogram_quantile(self.histogram, 100.0 * position / answered)


def model_board(
    run: FleetRun,
    index: int,
    model: BoardModel,
    series: RateSeries,
    park: Parking,
    *,
    window_s: tuple[float, float] | None = None,
) -> ModelBoard:
    """The board models' account of board ``index`` over ``window_s``, as ``run_fleet`` bills it."""
    assert run.states is not None
    k0, k1 = _window(run, window_s)
    per = max(1, int(round(run.period_s / series.step_s)))
    lam = board_step_rates(run, index, series)[k0 * per : k1 * per]
    st = np.repeat(run.states[k0:k1, index], per)
    dt = series.step_s
    serving = st == 0
    power = np.where(
        serving,
        model.power(lam),
        np.where(
            st == 1, park.waking_w[model.kind], np.where(st == 2, park.parked_w[model.kind], 0.0)
        ),
    )
    got = model.served_rate(lam)
    hist = latency_histogram(model, lam[serving], got[serving] * dt)
    return ModelBoard(float(power.sum() * dt), float(lam.sum() * dt), float(got.sum() * dt), hist)


def tuned_settings(settings: EngineSettings, slo_s: float) -> EngineSettings:
    """EcoGD as the fleet replay runs it: the fleet's latency target as its SLO."""
    if settings.slo_latency_s is not None:
        return settings
    return replace(settings, slo_latency_s=slo_s, slo_percentile=99.0)


def models_tuner(run: FleetRun) -> str:
    return "fixed" if run.tuner == "fixed" else "ecogd"


def check(
    runs: Sequence[FleetRun],
    boards: Sequence[FleetBoard],
    series: RateSeries,
    parks: Mapping[str, Parking],
    settings: EngineSettings,
    *,
    seed: int = 0,
) -> dict[str, DirectResult]:
    """Every run of a fleet replay, replayed directly; keyed ``policy/parking``."""
    out = {}
    for run in runs:
        tuner = models_tuner(run)
        chosen = settings if tuner == "fixed" else tuned_settings(settings, run.slo_s)
        park = parks[run.parking if run.parking != "none" else "off"]
        out[f"{run.policy}/{run.parking}"] = replay_direct(
            run, boards, series, park, chosen, tuner, seed=seed
        )
    return out
