"""Several models on one board, replayed in virtual time: tuned together or apart.

Three ways to serve the same models on one board twin, over the same arrival traces (one per
model), each replayed by ``ecoserve.sim.shared_board``:

- ``joint``: one engine, one queue and batch-size knob per model, one tuner (the settings'
  own, EcoGD by default) for the board's clocks, minimising the joint cost;
- ``daemons``: one engine per model, each with its own tuner over the clocks and its own batch
  size, the last to write the clocks wins; each measures energy on the board meter it shares;
- ``max``: every clock at maximum and each model at its largest batch, never tuned.

Every run is scored on one scale: each model's reference baseline is its figures over the
whole trace in the ``max`` run (simulated once, noise seed 0), and a run's joint cost is each
model's run cost (every request counted) on it, weighted by requests served. With the
oracles (``ecoserve.sim.joint_oracle``) the best fixed configuration and the best per window
are scored the same way.

The models' batch times are the board twin's scaled by each model's cost relative to the
twin's own (``twins.scaled``); ``MODEL_COSTS`` holds the factors and how they were measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, queue_cost_models
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import QueueSpec
from ecoserve.replay.runner import _interruptible_pool
from ecoserve.replay.suite import PAPER_MAX_WAIT_S, Workload, loop
from ecoserve.sim.joint_oracle import JointOracles, compute_joint_oracles, fixed_run
from ecoserve.sim.shared_board import (
    SharedBoard,
    SharedBoardResult,
    daemon_tenants,
    joint_run_cost,
    joint_tenants,
    model_runs,
    reference_baselines,
)
from traces import parse_duration
from twins.base import DeviceTwin
from twins.fitted import load_twin
from twins.scaled import ScaledTwin

SCENARIOS: tuple[str, ...] = ("joint", "daemons", "max")


@dataclass(frozen=True)
class ModelCost:
    """A built-in model's batch time relative to ``builtin:cnn``, measured with torch.

    ``by_batch``: the ratio of median batch times at batch sizes 1, 2, 4, 8, 16 (CPU, one
    thread); ``factor`` is their geometric mean. ``builtin:cnn`` stands for the twin's own
    model (a MobileNet-era CNN): that it costs what MobileNet costs is an assumption.
    """

    spec: str
    factor: float
    by_batch: tuple[float, ...]


#: Measured by ``python benchmarks/bench_shared_board.py --measure-models`` (2 shared cores,
#: torch 2.13 CPU, one thread, 15 interleaved rounds of 40 calls per batch size; three runs,
#: factors 0.775-0.803 and 0.421-0.427, the median run's kept). The ratio moves with batch
#: size (the transformer costs 1.5x the CNN at batch 1 and 0.4x at 16), which one factor
#: does not keep; and that the CPU's ratios hold on the board's GPU is an assumption.
MODEL_COSTS: dict[str, ModelCost] = {
    "cnn": ModelCost("builtin:cnn", 1.0, (1.0, 1.0, 1.0, 1.0, 1.0)),
    "transformer": ModelCost("builtin:transformer", 0.784, (1.545, 0.859, 0.772, 0.732, 0.395)),
    "digits-large": ModelCost("builtin:digits-large", 0.424, (0.657, 0.65, 0.507, 0.38, 0.167)),
}


@dataclass(frozen=True)
class BoardModel:
    """One model on the board: its cost factor, its arrivals, its queue's bounds and target.

    ``start``: where in its (looped) trace the model's arrivals begin, so that two models
    fed by the same recorded trace do not burst together.
    """

    name: str
    factor: float
    workload: Workload
    start: str | None = None
    max_batch: int | None = None
    slo_latency_s: float | None = None

    def queue(self) -> QueueSpec:
        """The model's queue: its own batch knob ``batch_size:<name>``, bounds and target."""
        return QueueSpec.for_model(
            self.name, max_batch=self.max_batch, slo_latency_s=self.slo_latency_s
        )

    def arrivals(self, duration: str) -> np.ndarray:
        """The model's arrival times over ``duration`` (seconds from 0), its trace looped
        as often as that takes, from ``start`` on."""
        offset = 0.0 if self.start is None else parse_duration(self.start)
        span = parse_duration(duration)
        looped = loop(self.workload.load(seed=0), offset + span).arrivals
        return looped[(looped >= offset) & (looped < offset + span)] - offset


#: Three models at different rates, each on a recorded Azure trace rescaled in time (the
#: paper suite's way): the CNN at 8 req/s on the steadier conversation trace, the transformer
#: at 16 req/s on the bursty code trace, the digits CNN at 30 req/s on the conversation trace
#: from its middle (its bursts fall elsewhere than the CNN's).
DEFAULT_MODELS: tuple[BoardModel, ...] = (
    BoardModel("cnn", MODEL_COSTS["cnn"].factor, Workload("conv@8", "azure-conv", rate=8.0)),
    BoardModel(
        "transformer",
        MODEL_COSTS["transformer"].factor,
        Workload("code@16", "azure-code", rate=16.0),
    ),
    BoardModel(
        "digits",
        MODEL_COSTS["digits-large"].factor,
        Workload("conv@30", "azure-conv", rate=30.0),
        start="15m",
    ),
)


@dataclass(frozen=True)
class SharedBoardPlan:
    """What to replay: the models, the board, the engine settings, the seeds."""

    models: tuple[BoardModel, ...] = DEFAULT_MODELS
    device: str = "xavier-nx"
    settings: EngineSettings = field(
        default_factory=lambda: EngineSettings(max_wait_s=PAPER_MAX_WAIT_S)
    )
    duration: str = "1h"
    seeds: tuple[int, ...] = (0, 1, 2)
    noise: float | None = None
    oracles: bool = True
    validate: int = 4

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"models need distinct names, at least one; got {names}")
        if not self.seeds:
            raise ValueError("give at least one seed")

    def board(self) -> DeviceTwin:
        return load_twin(self.device, noise=self.noise)

    def twins(self, board: DeviceTwin) -> dict[str, DeviceTwin]:
        return {m.name: ScaledTwin(board, m.factor) for m in self.models}

    def queues(self) -> list[QueueSpec]:
        return [m.queue() for m in self.models]

    def traces(self) -> dict[str, np.ndarray]:
        return {m.name: m.arrivals(self.duration) for m in self.models}


@dataclass
class ModelFigure:
    """One model's figures in one run."""

    requests: int
    served: int
    rejected: int
    energy_j: float
    energy_per_request_j: float
    latency_p50_s: float
    latency_p99_s: float
    cost: float


@dataclass
class ScenarioRecord:
    """One run of one way of serving the models, scored on the reference baselines."""

    scenario: str
    seed: int
    #: Joules of every batch (active) and of the board meter (idle included).
    active_energy_j: float
    total_energy_j: float
    #: The joint run cost: each model's run cost on its reference baseline, by requests.
    cost: float
    models: dict[str, ModelFigure]
    clock_changes: int
    windows: int
    virtual_s: float
    wall_s: float
    final_values: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_scenario(
    plan: SharedBoardPlan, scenario: str, seed: int, baselines: dict[str, Baseline]
) -> ScenarioRecord:
    """Replay one way of serving the plan's models with ``seed`` (tuners and noise)."""
    board = plan.board()
    twins, queues, traces = plan.twins(board), plan.queues(), plan.traces()
    settings = replace(plan.settings, seed=seed)
    result: SharedBoardResult
    if scenario == "joint":
        tenants = joint_tenants(board, queues, settings)
        result = SharedBoard(board, twins, tenants, noise_seed=seed).run(traces)
    elif scenario == "daemons":
        seeds = [seed + 1000 * k for k in range(len(queues))]
        tenants = daemon_tenants(board, queues, settings, seeds)
        result = SharedBoard(board, twins, tenants, noise_seed=seed).run(traces)
    elif scenario == "max":
        result = fixed_run(board, twins, queues, traces, settings, seed=seed)
    else:
        raise ValueError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
    return score(scenario, seed, result, baselines, settings, queues)


def score(
    scenario: str,
    seed: int,
    result: SharedBoardResult,
    baselines: dict[str, Baseline],
    settings: EngineSettings,
    queues: Sequence[QueueSpec],
) -> ScenarioRecord:
    """A run's figures, its costs on the reference ``baselines``."""
    runs = model_runs(result, settings.accounting, settings.slo_percentile)
    cost, per_model = joint_run_cost(runs, baselines, queue_cost_models(settings, queues))
    return ScenarioRecord(
        scenario=scenario,
        seed=seed,
        active_energy_j=sum(result.active_energy_j.values()),
        total_energy_j=result.total_energy_j,
        cost=cost,
        models={
            m: ModelFigure(
                requests=r.requests,
                served=r.served,
                rejected=r.rejected,
                energy_j=r.energy_j,
                energy_per_request_j=r.energy_per_request_j,
                latency_p50_s=r.latency_p50_s,
                latency_p99_s=r.latency_p99_s,
                cost=per_model.get(m, math.nan),
            )
            for m, r in runs.items()
        },
        clock_changes=result.clock_changes,
        windows=sum(len(r) for r in result.reports),
        virtual_s=result.end_s,
        wall_s=result.wall_s,
        final_values=[dict(r[-1].values) if r else {} for r in result.reports],
    )


def reference(plan: SharedBoardPlan) -> dict[str, Baseline]:
    """Each model's baseline: its figures over the whole trace in the all-maximum run."""
    board = plan.board()
    result = fixed_run(
        board, plan.twins(board), plan.queues(), plan.traces(), plan.settings, seed=0
    )
    return reference_baselines(
        model_runs(result, plan.settings.accounting), plan.settings.accounting
    )


def _oracle_task(plan: SharedBoardPlan) -> JointOracles:
    board = plan.board()
    return compute_joint_oracles(
        board,
        plan.twins(board),
        plan.queues(),
        plan.traces(),
        plan.settings,
        validate=plan.validate,
    )


@dataclass
class SharedBoardReport:
    plan: SharedBoardPlan
    baselines: dict[str, Baseline]
    records: list[ScenarioRecord]
    oracles: JointOracles | None


def run_shared_board(
    plan: SharedBoardPlan,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> SharedBoardReport:
    """The reference run, then every (scenario, seed) and the oracles, in ``workers``
    processes; ``progress(what, done, total)`` after each task."""
    baselines = reference(plan)
    tasks = [(s, seed) for seed in plan.seeds for s in SCENARIOS]
    total = len(tasks) + int(plan.oracles)
    done = 0
    records: list[ScenarioRecord] = []
    oracles: JointOracles | None = None

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, done, total)

    if workers <= 1:
        if plan.oracles:
            oracles = _oracle_task(plan)
            tick("oracles")
        for scenario, seed in tasks:
            records.append(run_scenario(plan, scenario, seed, baselines))
            tick(f"{scenario} seed {seed}")
    else:
        with _interruptible_pool(workers) as pool:
            oracle_future = pool.submit(_oracle_task, plan) if plan.oracles else None
            futures = {
                pool.submit(run_scenario, plan, s, seed, baselines): (s, seed) for s, seed in tasks
            }
            for future in as_completed(futures):
                records.append(future.result())
                s, seed = futures[future]
                tick(f"{s} seed {seed}")
            if oracle_future is not None:
                oracles = oracle_future.result()
                tick("oracles")
    order = {t: i for i, t in enumerate(tasks)}
    records.sort(key=lambda r: order[(r.scenario, r.seed)])
    return SharedBoardReport(plan, baselines, records, oracles)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def summary_rows(report: SharedBoardReport) -> list[dict[str, Any]]:
    """One row per scenario: medians over seeds, and ratios to the daemons measured per seed
    (each seed's joint or max run against the daemons run of the same seed)."""
    by = {(r.scenario, r.seed): r for r in report.records}
    names = [m.name for m in report.plan.models]
    rows = []
    for scenario in SCENARIOS:
        recs = [by[(scenario, s)] for s in report.plan.seeds if (scenario, s) in by]
        if not recs:
            continue
        pairs = [(r, by.get(("daemons", r.seed))) for r in recs]
        row: dict[str, Any] = {
            "scenario": scenario,
            "seeds": len(recs),
            "total_energy_j": _median([r.total_energy_j for r in recs]),
            "active_energy_j": _median([r.active_energy_j for r in recs]),
            "total_x_daemons": _median(
                [r.total_energy_j / d.total_energy_j for r, d in pairs if d is not None]
            ),
            "active_x_daemons": _median(
                [r.active_energy_j / d.active_energy_j for r, d in pairs if d is not None]
            ),
            "cost": _median([r.cost for r in recs]),
            "clock_changes": _median([float(r.clock_changes) for r in recs]),
            "wall_s": _median([r.wall_s for r in recs]),
        }
        for m in names:
            row[f"{m}_p99_ms"] = _median([r.models[m].latency_p99_s * 1e3 for r in recs])
            row[f"{m}_energy_j"] = _median([r.models[m].energy_j for r in recs])
            row[f"{m}_cost"] = _median([r.models[m].cost for r in recs])
            row[f"{m}_p99_x_daemons"] = _median(
                [
                    r.models[m].latency_p99_s / d.models[m].latency_p99_s
                    for r, d in pairs
                    if d is not None
                ]
            )
        rows.append(row)
    return rows


def target_verdict(report: SharedBoardReport, ratio: float = 0.85) -> list[str]:
    """Per seed: joint energy (active and total) against the daemons', and whether every
    model's p99 is equal or better."""
    by = {(r.scenario, r.seed): r for r in report.records}
    lines = []
    for seed in report.plan.seeds:
        joint, daemons = by.get(("joint", seed)), by.get(("daemons", seed))
        if joint is None or daemons is None:
            continue
        worse = [
            m for m, f in joint.models.items() if f.latency_p99_s > daemons.models[m].latency_p99_s
        ]
        active = joint.active_energy_j / daemons.active_energy_j
        total = joint.total_energy_j / daemons.total_energy_j
        met = active <= ratio and not worse
        lines.append(
            f"seed {seed}: joint/daemons energy {active:.3f} (batches) {total:.3f} (board meter); "
            f"p99 worse for {', '.join(worse) if worse else 'no model'} -> "
            f"{'met' if met else 'missed'}"
        )
    return lines


def markdown(report: SharedBoardReport) -> str:
    """The summary as a markdown table, then the oracles and the per-seed verdicts."""
    rows = summary_rows(report)
    names = [m.name for m in report.plan.models]
    head = (
        "| scenario | board J | batches J | x daemons (board / batches) | joint cost | "
        + " | ".join(f"{m} p99 ms" for m in names)
        + " | clock writes |"
    )
    lines = [head, "| --- " + "| ---: " * (4 + len(names) + 1) + "|"]
    for r in rows:
        p99 = " | ".join(f"{r[f'{m}_p99_ms']:,.0f}" for m in names)
        lines.append(
            f"| {r['scenario']} | {r['total_energy_j']:,.0f} | {r['active_energy_j']:,.0f} | "
            f"{r['total_x_daemons']:.3f} / {r['active_x_daemons']:.3f} | {r['cost']:.3f} | "
            f"{p99} | {r['clock_changes']:,.0f} |"
        )
    lines += [
        "",
        "| scenario | " + " | ".join(f"{m} J / cost" for m in names) + " |",
        "| --- " + "| ---: " * len(names) + "|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[f'{m}_energy_j']:,.0f} / {r[f'{m}_cost']:.3f}" for m in names)
        lines.append(f"| {r['scenario']} | {cells} |")
    o = report.oracles
    if o is not None:
        lines += [
            "",
            f"Oracles (joint run cost on the same baselines): static {o.static_cost:.3f} "
            f"({_values(o.static_values)}), dynamic {o.dynamic_cost:.3f} (estimated); "
            f"all-maximum {o.maximum_cost:.3f}.",
        ]
    lines += ["", *target_verdict(report)]
    return "\n".join(lines)


def _values(values: dict[str, float]) -> str:
    out = []
    for k, v in values.items():
        out.append(f"{k} {v / 1e6:.0f} MHz" if k.endswith("_hz") else f"{k} {v:g}")
    return ", ".join(out)
