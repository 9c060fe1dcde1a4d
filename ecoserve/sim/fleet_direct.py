"""A fleet run replayed request by request: the check on the fleet replay's board models.

``run_fleet`` reads each board's energy and latency from a model measured at steady rates.
Here the same decisions (each period's traffic shares and board states, kept in the
:class:`FleetRun`) are carried out on individual requests: the arrivals of each step are
spread uniformly over it, each request is sent to a board drawn by that period's weights,
and every board's requests go through its own engine and tuner on its twin
(:func:`ecoserve.sim.driver.simulate`). Each board starts cold (baseline, then tuning).

Energy is each board's metered draw, with the time it was not serving billed at its parked
or waking draw instead of idle (the fitted twins' idle draw does not depend on the clocks,
so idle time is separable). Only for small fleets and short series: every request runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.sim.driver import simulate
from ecoserve.sim.fleet import FleetBoard, FleetRun, Parking
from traces.rates import RateSeries
from twins.fitted import load_twin


@dataclass(frozen=True)
class DirectResult:
    energy_j: float
    offered: int
    served: int
    latencies_s: np.ndarray

    @property
    def joules_per_request(self) -> float:
        return self.energy_j / self.served if self.served else float("inf")

    def quantile_s(self, q: float) -> float:
        """Percentile over offered requests, a rejected one counted as never answered."""
        lat = np.concatenate([self.latencies_s, np.full(self.offered - self.served, np.inf)])
        return float(np.percentile(lat, q)) if lat.size else float("nan")

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
        mine = arrivals[routed & (board_of == i)]
        twin = load_twin(b.kind)
        idle_w = float(twin.power(twin.max_freqs(), 0.0))
        st = run.states[:, i]
        seconds = {code: float(np.count_nonzero(st == code)) * run.period_s for code in range(4)}
        if mine.size:
            res = simulate(mine, twin, replace(settings, tuner=tuner, seed=seed + i))
            metered = res.total_energy_j + idle_w * max(0.0, end - res.end_s)
            served += res.served
            latencies.append(res.latencies)
        else:
            metered = idle_w * end
        not_serving = seconds[1] + seconds[2] + seconds[3]
        energy += (
            metered
            - idle_w * not_serving
            + park.waking_w[b.kind] * seconds[1]
            + park.parked_w[b.kind] * seconds[2]
        )
    lat = np.concatenate(latencies) if latencies else np.empty(0)
    return DirectResult(energy, int(arrivals.size), served, lat)


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
