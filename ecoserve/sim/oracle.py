"""Oracles: the lower bounds a tuner is judged against, computed on the device twin.

- The static oracle is the best single configuration for the whole workload (what a tuner
  that knew the twin and the trace in advance would pin).
- The dynamic oracle is the best configuration for each window on its own (a bound no online
  tuner reaches: it pays no exploration and no warm-up when switching).

Exhaustive search over a Xavier NX space (25 x 15 x 16 = 6000 configurations) by full
simulation would take hours, so every configuration is first estimated by a vectorised
replay: the trace is cut into windows of about ``window_requests`` arrivals (at the widest
gap near each boundary), each window is replayed from an empty queue for every configuration
at once (numpy, one step per batch, noise-free twin), with the same dispatch rule as
``BatchPolicy`` (a batch leaves when ``batch_size`` requests wait or the oldest has waited
``max_wait``; one batch at a time). Windows with the same arrival pattern (every window of a
fixed or bursty load) are replayed once. The estimate ignores queue carried across windows,
which flatters configurations that cannot keep up and misjudges batch sizes whose remainder
waits for the next burst, so the best candidates overall and the best few of every batch
size are then replayed by the real simulator, and the static oracle is the best of those
simulated costs.

Costs are normalised by a reference baseline: the all-maximum configuration over the whole
trace (simulated), so tuners and oracles of one workload share one scale.

Two scores come with each bound. The run cost counts every request of the run, warm-up and
exploration included: the cost of the run's total energy per request and mean latency
(``run_cost``), which is what a user pays. The window cost is the mean over the tuning
windows, the paper's view, which leaves out the requests served while a configuration warms
up. The dynamic oracle over every request is the request-weighted mean of each window's best
estimate, capped by the static oracle's simulated run cost (a per-window choice includes the
static one; only the estimate's bias could put it above).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_space
from ecoserve.core.batching import dispatch_start
from ecoserve.core.controller import WindowReport
from ecoserve.core.cost import Baseline, CostModel
from ecoserve.core.knobs import BATCH, CPU, GPU, Config, SearchSpace
from ecoserve.sim.driver import simulate
from twins.base import DeviceTwin
from twins.scaled import ScaledTwin


@dataclass(frozen=True)
class ConfigTable:
    """Noise-free batch time and energy of every configuration for each batch fill."""

    configs: np.ndarray  # (C, dims) indices
    batch_size: np.ndarray  # (C,) the configuration's batch size
    time_s: np.ndarray  # (C, max_batch + 1): seconds for a batch of n items (column n)
    energy_j: np.ndarray  # (C, max_batch + 1): joules of that batch
    idle_w: np.ndarray  # (C,) watts when idle


def config_table(twin: DeviceTwin, space: SearchSpace) -> ConfigTable:
    """Time and energy tables over the whole space (vectorised for fitted twins, and for
    another model on a fitted twin's board)."""
    if isinstance(twin, ScaledTwin):
        base = config_table(twin.base, space)
        f = twin.factor
        return ConfigTable(
            base.configs, base.batch_size, base.time_s * f, base.energy_j * f, base.idle_w
        )
    configs = np.array(list(space.all_configs()), dtype=np.int64)
    values = [
        np.asarray(k.values, dtype=np.float64)[configs[:, a]] for a, k in enumerate(space.knobs)
    ]
    by_name = dict(zip(space.names, values, strict=True))
    top = twin.max_freqs()
    fc = by_name.get(CPU, np.full(len(configs), top.get(CPU, 1.0)))
    fg = by_name.get(GPU, np.full(len(configs), top.get(GPU, 1.0)))
    batch = by_name[BATCH].astype(np.int64) if BATCH in by_name else np.ones(len(configs), np.int64)
    bmax = int(batch.max())
    fills = np.arange(1, bmax + 1, dtype=np.float64)
    params = getattr(twin, "params", None)
    time_s = np.zeros((len(configs), bmax + 1))
    energy = np.zeros_like(time_s)
    if params is not None:
        from twins.fitted import active_power, time_parts

        _, _, t = time_parts(params, fills[None, :], fc[:, None], fg[:, None])
        p = active_power(params, fills[None, :], fc[:, None], fg[:, None])
        time_s[:, 1:], energy[:, 1:] = t, p * t
        idle = np.full(len(configs), float(params.idle_w))
    else:
        idle = np.zeros(len(configs))
        for c in range(len(configs)):
            freqs = {CPU: float(fc[c]), GPU: float(fg[c])}
            idle[c] = twin.power(freqs, 0.0)
            for n in range(1, bmax + 1):
                t = twin.batch_time(n, freqs)
                time_s[c, n] = t
                energy[c, n] = twin.power(freqs, 1.0, batch=n) * t
    return ConfigTable(configs, batch, time_s, energy, idle)


@dataclass(frozen=True)
class WindowEstimates:
    """Per configuration and window: requests, mean energy per request, mean latency."""

    requests: np.ndarray  # (S,)
    energy_per_request_j: np.ndarray  # (C, S)
    latency_s: np.ndarray  # (C, S)


def _segments(arrivals: np.ndarray, size: int) -> list[np.ndarray]:
    """Windows of about ``size`` arrivals, each cut at the widest gap near its nominal end.

    Every window is replayed from an empty queue, which is closest to the truth where the
    queue really is empty: in a lull. A cut inside a burst would also split it, and a batch
    size that divides the burst would then look as bad as one that does not. The cut moves
    at most a tenth of a window; among equal gaps (a fixed load) the nearest one wins.
    """
    n = len(arrivals)
    slack = size // 10
    cuts = [0]
    nominal = size
    while nominal < n:
        lo, hi = max(cuts[-1] + 1, nominal - slack), min(n - 1, nominal + slack)
        gaps = arrivals[lo : hi + 1] - arrivals[lo - 1 : hi]
        widest = np.flatnonzero(gaps >= gaps.max() - 1e-9) + lo
        cut = int(widest[np.argmin(np.abs(widest - nominal))])
        cuts.append(cut)
        nominal = cut + size
    cuts.append(n)
    return [arrivals[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def estimate_windows(
    table: ConfigTable,
    arrivals: np.ndarray,
    *,
    window_requests: int = 416,
    max_wait: float = 0.05,
    accounting: str = "active",
    duration_s: float | None = None,
) -> WindowEstimates:
    """Replay every window from an empty queue for every configuration at once."""
    arrivals = np.asarray(arrivals, dtype=np.float64)
    segs = _segments(arrivals, window_requests)
    if not segs:
        raise ValueError("the trace has no arrivals")
    # time each window spans (for total accounting): to the next window's first arrival
    ends = [s[0] for s in segs[1:]] + [max(duration_s or 0.0, float(arrivals[-1]))]
    spans = np.array([max(e - s[0], 1e-9) for s, e in zip(segs, ends, strict=True)])
    keys: dict[bytes, int] = {}
    unique: list[np.ndarray] = []
    which = np.empty(len(segs), dtype=np.int64)
    for k, s in enumerate(segs):
        rel = s - s[0]
        key = np.round(rel, 9).tobytes()
        if key not in keys:
            keys[key] = len(unique)
            unique.append(rel)
        which[k] = keys[key]
    lat_u, en_u, busy_u = lockstep(table, unique, max_wait)
    lat = lat_u[:, which]
    en = en_u[:, which]
    n = np.array([len(s) for s in segs], dtype=np.float64)
    if accounting == "total":
        idle_s = np.maximum(0.0, spans[None, :] - busy_u[:, which])
        en = en + table.idle_w[:, None] * idle_s
    return WindowEstimates(n, en / n, lat / n)


def lockstep(
    table: ConfigTable, segments: Sequence[np.ndarray], max_wait: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed latency, energy and busy time per (configuration, segment)."""
    gap = 10.0 * max_wait + 1.0
    offsets, starts, pieces, pos, t0 = [], [], [], 0, 0.0
    for s in segments:
        offsets.append(t0)
        starts.append(pos)
        pieces.append(s + t0)
        pos += len(s)
        t0 += float(s[-1]) + gap
    g = np.concatenate(pieces)
    prefix = np.concatenate([[0.0], np.cumsum(g)])
    seg_start = np.array(starts, dtype=np.int64)
    seg_end = seg_start + np.array([len(s) for s in segments], dtype=np.int64)
    C, S = len(table.configs), len(segments)
    cfg = np.repeat(np.arange(C), S)
    seg = np.tile(np.arange(S), C)
    elem = np.arange(C * S)
    head = seg_start[seg].copy()
    end_idx = seg_end[seg]
    bsize = table.batch_size[cfg]
    width = table.time_s.shape[1]
    t_flat, e_flat = table.time_s.ravel(), table.energy_j.ravel()
    free = np.full(C * S, -np.inf)
    lat = np.zeros(C * S)
    en = np.zeros(C * S)
    busy = np.zeros(C * S)
    out_lat, out_en, out_busy = np.zeros(C * S), np.zeros(C * S), np.zeros(C * S)
    last = len(g) - 1
    while len(elem):
        a_head = g[head]
        full = head + bsize - 1
        a_full = np.where(full < end_idx, g[np.minimum(full, last)], np.inf)
        start = dispatch_start(free, a_head, a_full, max_wait)
        cnt = np.minimum(np.searchsorted(g, start, side="right"), end_idx) - head
        np.minimum(cnt, bsize, out=cnt)
        flat = cfg * width + cnt
        t = t_flat[flat]
        done_at = start + t
        lat += cnt * done_at - (prefix[head + cnt] - prefix[head])
        en += e_flat[flat]
        busy += t
        head += cnt
        free = done_at
        finished = head >= end_idx
        if finished.any():
            ids = elem[finished]
            out_lat[ids], out_en[ids], out_busy[ids] = lat[finished], en[finished], busy[finished]
            keep = ~finished
            elem, cfg, head, end_idx, bsize = (
                elem[keep],
                cfg[keep],
                head[keep],
                end_idx[keep],
                bsize[keep],
            )
            free, lat, en, busy = free[keep], lat[keep], en[keep], busy[keep]
    return out_lat.reshape(C, S), out_en.reshape(C, S), out_busy.reshape(C, S)


def window_costs(est: WindowEstimates, baseline: Baseline, alpha: float) -> np.ndarray:
    """(C, S) cost of every configuration in every window on the baseline's scale."""
    return CostModel(alpha=alpha).cost(est.energy_per_request_j, est.latency_s, baseline)


def run_cost(energy_j: float, latencies: np.ndarray, baseline: Baseline, alpha: float) -> float:
    """The cost of a whole run, every request counted: its energy per request and its mean
    latency, on ``baseline``'s scale (NaN when nothing was served)."""
    lat = np.asarray(latencies, dtype=np.float64)
    if not len(lat):
        return float("nan")
    return float(CostModel(alpha=alpha).cost(energy_j / len(lat), float(lat.mean()), baseline))


def run_energy(result: Any, accounting: str) -> float:
    """A simulated run's joules under ``accounting`` (active: batches only; total: metered)."""
    return float(result.active_energy_j if accounting == "active" else result.total_energy_j)


@dataclass(frozen=True)
class ReferenceRun:
    """A fixed run's figures over every request: joules per request and latency percentiles."""

    energy_per_request_j: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    window_costs: tuple[float, ...]
    #: Each tuning window's 95th percentile latency (for SLO violations).
    window_p95_s: tuple[float, ...] = ()

    @classmethod
    def of(cls, result: Any, accounting: str, costs: np.ndarray) -> ReferenceRun:
        lat = result.latencies
        p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
        energy = run_energy(result, accounting) / max(len(lat), 1)
        tails = tuple(r.latency_p95_s for r in result.reports if r.phase == "tuning")
        return cls(energy, p50, p95, p99, tuple(float(c) for c in costs), tails)


def renormalised_costs(
    reports: Sequence[WindowReport], baseline: Baseline, alpha: float
) -> np.ndarray:
    """Window costs recomputed on a shared baseline (tuning-phase windows only)."""
    rows = [(r.energy_per_request_j, r.latency_mean_s) for r in reports if r.phase == "tuning"]
    if not rows:
        return np.empty(0)
    e, lat = np.array(rows).T
    return CostModel(alpha=alpha).cost(e, lat, baseline)


class Candidate(TypedDict):
    """One configuration the static oracle simulated in full, with its costs."""

    config: list[int]
    values: dict[str, float]
    estimate: float  # mean window cost estimated without simulating
    simulated: float  # simulated mean window cost (inf when no window closed)
    run_cost: float  # every request counted (inf when not finite)


@dataclass
class Oracles:
    """The two bounds for one workload, and the reference baseline they are scaled by."""

    baseline: Baseline
    static_config: Config
    static_values: dict[str, float]
    static_cost: float  # simulated mean window cost of the static oracle's configuration
    static_cost_estimate: float
    dynamic_cost: float  # mean over windows of the best estimated cost in each window
    dynamic_configs: list[Config]
    candidates: list[Candidate] = field(default_factory=list)
    #: Every request counted (see the module notes); NaN where not computed.
    static_run_cost: float = float("nan")
    dynamic_run_cost: float = float("nan")
    #: The all-maximum configuration's run (``jetson_clocks`` and the largest batch).
    maximum: ReferenceRun | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": {
                "energy_per_request_j": self.baseline.energy_per_request_j,
                "latency_s": self.baseline.latency_s,
                "accounting": self.baseline.accounting,
            },
            "static_config": list(self.static_config),
            "static_values": self.static_values,
            "static_cost": self.static_cost,
            "static_cost_estimate": self.static_cost_estimate,
            "dynamic_cost": self.dynamic_cost,
            "static_run_cost": self.static_run_cost,
            "dynamic_run_cost": self.dynamic_run_cost,
            "candidates": self.candidates,
        }


def _fixed_run(
    arrivals: np.ndarray,
    twin: DeviceTwin,
    settings: EngineSettings,
    config: Config,
    seed: int,
    baseline: Baseline | None = None,
) -> Any:
    """``config`` held over the whole trace; with ``baseline`` it runs from the first request
    (no windows at maximum to measure one)."""
    return simulate(
        arrivals,
        twin,
        replace(settings, tuner="fixed", tuner_params={"config": list(config)}, seed=seed),
        baseline=baseline,
    )


def reference_baseline(
    arrivals: np.ndarray, twin: DeviceTwin, settings: EngineSettings, seed: int = 0
) -> tuple[Baseline, Any]:
    """The workload's reference baseline: the all-maximum configuration simulated over the
    whole trace; returned with that run."""
    space = build_space(twin.knobs(), settings)
    ref = _fixed_run(np.asarray(arrivals, dtype=np.float64), twin, settings, space.maximum(), seed)
    lat = ref.latencies
    energy = run_energy(ref, settings.accounting)
    return Baseline(energy / max(len(lat), 1), float(lat.mean()), settings.accounting), ref


def compute_oracles(
    arrivals: np.ndarray,
    twin: DeviceTwin,
    settings: EngineSettings | None = None,
    *,
    validate: int = 6,
    per_batch: int = 2,
    seed: int = 0,
    duration_s: float | None = None,
) -> Oracles:
    """Static and dynamic oracles for one workload on ``twin``.

    The ``validate`` best estimates, and the ``per_batch`` best of every batch size, are
    simulated in full; the static oracle is the best of them by simulated mean window cost.
    """
    settings = settings or EngineSettings()
    arrivals = np.asarray(arrivals, dtype=np.float64)
    space = build_space(twin.knobs(), settings)
    table = config_table(twin, space)
    est = estimate_windows(
        table,
        arrivals,
        window_requests=settings.window_requests or 416,
        max_wait=settings.max_wait_s,
        accounting=settings.accounting,
        duration_s=duration_s,
    )
    baseline, ref = reference_baseline(arrivals, twin, settings, seed)
    maximum = ReferenceRun.of(
        ref, settings.accounting, renormalised_costs(ref.reports, baseline, settings.alpha)
    )
    costs = window_costs(est, baseline, settings.alpha)
    static_est = costs.mean(axis=1)
    order = np.argsort(static_est)
    best_rows = costs.argmin(axis=0)
    best_per_window = costs[best_rows, np.arange(costs.shape[1])]
    dynamic_cost = float(best_per_window.mean())
    dynamic_run_est = float((best_per_window * est.requests).sum() / est.requests.sum())

    # The estimate ranks frequencies well, but a batch size's cost also depends on the queue
    # it inherits across windows (a remainder that waits for the next burst), which the
    # estimate cannot see; so the best estimates of every batch size are simulated too.
    rows = list(order[: max(1, validate)])
    for size in np.unique(table.batch_size):
        same = order[table.batch_size[order] == size]
        rows.extend(int(r) for r in same[:per_batch])
    candidates: list[Candidate] = []
    for row in dict.fromkeys(int(r) for r in rows):
        config = tuple(int(x) for x in table.configs[row])
        run = _fixed_run(arrivals, twin, settings, config, seed, baseline)
        sim_costs = renormalised_costs(run.reports, baseline, settings.alpha)
        every = run_cost(
            run_energy(run, settings.accounting), run.latencies, baseline, settings.alpha
        )
        candidates.append(
            {
                "config": list(config),
                "values": space.values(config),
                "estimate": float(static_est[row]),
                "simulated": float(sim_costs.mean()) if len(sim_costs) else float("inf"),
                "run_cost": every if np.isfinite(every) else float("inf"),
            }
        )
    best = min(candidates, key=lambda c: c["simulated"])
    static_run_cost = min(c["run_cost"] for c in candidates)
    config = tuple(best["config"])
    return Oracles(
        baseline=baseline,
        static_config=config,
        static_values=space.values(config),
        static_cost=best["simulated"],
        static_cost_estimate=best["estimate"],
        dynamic_cost=dynamic_cost,
        dynamic_configs=[tuple(int(x) for x in table.configs[r]) for r in best_rows],
        candidates=candidates,
        static_run_cost=static_run_cost,
        dynamic_run_cost=min(dynamic_run_est, static_run_cost),
        maximum=maximum,
    )
