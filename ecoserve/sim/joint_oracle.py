"""Oracles for several models on one board: the best clocks and batch sizes for all of them.

The joint space (every clock x every model's batch size: 25 x 15 x 16^3 on a Xavier NX with
three models) is far too large to simulate, but it separates: at given clocks each model's
best batch size is its own, if the models did not wait for each other on the board. So each
model's trace is replayed alone for every (clocks, batch size) of its own space at once (the
vectorised replay of ``ecoserve.sim.oracle``), on windows cut at the same times for every
model, and:

- the static oracle: for each clock setting, each model's cheapest batch size over the whole
  run, the clock settings ranked by the joint cost (each model on its reference baseline,
  weighted by its requests); the ``validate`` best are then simulated in full on the shared
  board (where the models do wait for each other) and the cheapest simulated run is the
  oracle;
- the dynamic oracle: the same choice made again in every window (clocks and batch sizes
  that may change each window, with no exploration and no switching cost); the estimate,
  capped by the static oracle's simulated cost.

Estimates rank with ``active`` energy (a model replayed alone cannot tell its share of the
board's idle joules) and, in SLO mode, with the mean latency standing in for the percentile
(the estimate keeps no distribution); the simulated costs use the settings' accounting and
each model's real percentile. The reference
baselines are each model's figures over the whole trace with every clock and every batch
size at maximum, simulated on the shared board, so every way of serving the models is scored
on one scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_space, queue_cost_models
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import QueueSpec
from ecoserve.core.knobs import BATCH, Config
from ecoserve.sim.oracle import config_table, lockstep
from ecoserve.sim.shared_board import (
    ModelRun,
    SharedBoard,
    SharedBoardResult,
    joint_run_cost,
    joint_tenants,
    model_runs,
    reference_baselines,
)
from twins.base import DeviceTwin


@dataclass
class JointOracles:
    """The reference baselines and the two bounds for one set of models on one board."""

    baselines: dict[str, Baseline]
    #: The all-maximum reference run's figures per model (its joint cost is 1 or close).
    maximum: dict[str, ModelRun]
    maximum_cost: float
    static_config: Config
    static_values: dict[str, float]
    static_cost: float  # simulated joint run cost
    static_cost_estimate: float
    static_runs: dict[str, ModelRun]
    dynamic_cost: float  # estimated, capped by the static simulated cost
    candidates: list[dict[str, Any]] = field(default_factory=list)


def fixed_run(
    board: DeviceTwin,
    twins: Mapping[str, DeviceTwin],
    queues: Sequence[QueueSpec],
    traces: Mapping[str, np.ndarray],
    settings: EngineSettings,
    config: Config | None = None,
    *,
    seed: int = 0,
    baselines: Mapping[str, Baseline] | None = None,
) -> SharedBoardResult:
    """One engine holding ``config`` (default: every knob at maximum) over the whole trace;
    with ``baselines`` it runs it from the first request (no windows at maximum first)."""
    params = {} if config is None else {"config": list(config)}
    fixed = replace(settings, tuner="fixed", tuner_params=params, seed=seed)
    tenants = joint_tenants(board, queues, fixed, baselines)
    return SharedBoard(board, twins, tenants, noise_seed=seed).run(traces)


def _time_segments(traces: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    """Window boundaries (seconds): every ``size`` arrivals of all models together."""
    merged = np.sort(np.concatenate([np.asarray(a, dtype=np.float64) for a in traces.values()]))
    if not len(merged):
        raise ValueError("the traces have no arrivals")
    cuts = merged[size::size]
    return np.concatenate([[merged[0]], cuts, [np.inf]])


def _model_estimates(
    twin: DeviceTwin,
    settings: EngineSettings,
    queue: QueueSpec,
    board: DeviceTwin,
    arrivals: np.ndarray,
    bounds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per (clocks, batch, window): summed joules and latency, and per window requests."""
    own = replace(
        settings,
        max_batch=settings.max_batch if queue.max_batch is None else queue.max_batch,
        min_batch=settings.min_batch if queue.min_batch is None else queue.min_batch,
    )
    space = build_space(board.knobs(), own)
    if space.names[-1] != BATCH:
        raise AssertionError("the batch knob must be the space's last")
    table = config_table(twin, space)
    sizes = space.knobs[-1].size
    which = np.searchsorted(bounds, arrivals, side="right") - 1
    S = len(bounds) - 1
    counts = np.bincount(which, minlength=S)[:S]
    present = np.flatnonzero(counts)
    segments = [arrivals[which == s] - bounds[s] for s in present]
    lat_sum = np.zeros((len(table.configs), S))
    en_sum = np.zeros_like(lat_sum)
    if segments:
        lat, en, _ = lockstep(table, segments, settings.max_wait_s)
        lat_sum[:, present], en_sum[:, present] = lat, en
    clocks = len(table.configs) // sizes
    return (
        en_sum.reshape(clocks, sizes, S),
        lat_sum.reshape(clocks, sizes, S),
        counts.astype(np.float64),
        sizes,
    )


def compute_joint_oracles(
    board: DeviceTwin,
    twins: Mapping[str, DeviceTwin],
    queues: Sequence[QueueSpec],
    traces: Mapping[str, np.ndarray],
    settings: EngineSettings | None = None,
    *,
    validate: int = 4,
    seed: int = 0,
) -> JointOracles:
    """The reference baselines, and the static and dynamic oracles (module notes)."""
    settings = settings or EngineSettings()
    traces = {q.name: np.asarray(traces[q.name], dtype=np.float64) for q in queues}
    costs = queue_cost_models(settings, queues)
    tail = settings.slo_percentile
    ref = fixed_run(board, twins, queues, traces, settings, seed=seed)
    maximum = model_runs(ref, settings.accounting, tail)
    baselines = reference_baselines(maximum, settings.accounting)
    maximum_cost, _ = joint_run_cost(maximum, baselines, costs)

    bounds = _time_segments(traces, settings.window_requests or 416)
    static_parts = []  # per model: (clocks, sizes) run cost, requests
    window_parts = []  # per model: (clocks, S) best window cost, (S,) requests
    best_size = []  # per model: (clocks,) index of the cheapest batch size over the run
    for q in queues:
        en, lat, n, _ = _model_estimates(twins[q.name], settings, q, board, traces[q.name], bounds)
        model = costs[q.name]
        total = n.sum()
        run_e = en.sum(axis=2) / total
        run_l = lat.sum(axis=2) / total
        run = model.cost(run_e, run_l, baselines[q.name])
        static_parts.append((run.min(axis=1), total))
        best_size.append(run.argmin(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            per = model.cost(en / n, lat / n, baselines[q.name])
        window_parts.append((np.where(n > 0, np.nan_to_num(per, nan=0.0), 0.0).min(axis=1), n))
    everyone = sum(t for _, t in static_parts)
    static_est = np.sum([cost * (t / everyone) for cost, t in static_parts], axis=0)
    window_n = np.sum([n for _, n in window_parts], axis=0)
    window_cost = np.sum([cost * n for cost, n in window_parts], axis=0)  # (clocks, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        best_window = np.where(window_n > 0, window_cost.min(axis=0) / window_n, 0.0)
    dynamic_est = float((best_window * window_n).sum() / window_n.sum())

    space = build_space(board.knobs(), settings, queues)
    clock_knobs = space.dims - len(queues)
    clock_configs = list(
        np.ndindex(*(k.size for k in space.knobs[:clock_knobs]))
    )  # the product order of config_table's clock part
    order = np.argsort(static_est)
    candidates: list[dict[str, Any]] = []
    best: tuple[float, Config, float, dict[str, ModelRun]] | None = None
    for row in order[: max(1, validate)]:
        config = tuple(int(i) for i in clock_configs[row]) + tuple(
            int(best_size[k][row]) for k in range(len(queues))
        )
        run = fixed_run(
            board, twins, queues, traces, settings, config, seed=seed, baselines=baselines
        )
        runs = model_runs(run, settings.accounting, tail)
        cost, per_model = joint_run_cost(runs, baselines, costs)
        candidates.append(
            {
                "config": list(config),
                "values": space.values(config),
                "estimate": float(static_est[row]),
                "simulated": cost,
                "per_model": per_model,
            }
        )
        if best is None or cost < best[0]:
            best = (cost, config, float(static_est[row]), runs)
    assert best is not None
    static_cost, static_config, static_estimate, static_runs = best
    return JointOracles(
        baselines=baselines,
        maximum=maximum,
        maximum_cost=maximum_cost,
        static_config=static_config,
        static_values=space.values(static_config),
        static_cost=static_cost,
        static_cost_estimate=static_estimate,
        static_runs=static_runs,
        dynamic_cost=min(dynamic_est, static_cost),
        candidates=candidates,
    )
