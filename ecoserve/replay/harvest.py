"""``ecoserve replay --background SPEC``: the troughs harvested, beside the serving figures.

Each workload is replayed four times on the twin, with the same serving tuner and noise:

- ``serving``: no background work (the reference for every ratio);
- ``harvest``: the engine's background slot (gap prediction, steps cut to the delay bound,
  its own clocks and knobs tuned for joules per item);
- ``queue-empty``: the same slot with no gap prediction: a step whenever the queues are empty;
- ``nice-19``: a model of the job as a separate process at nice 19. Nice orders CPU time,
  not the accelerator's: the job keeps the accelerator busy whenever no serving batch is
  due (waiting batches included), at its own largest micro-batch and at serving's clocks,
  and a batch that falls due waits for the step in flight. Modelled, not measured.

``capacity`` is the share of what the idle time could hold: the items harvested over what
the job run alone (largest micro-batch, every clock at maximum) would do in the serving run's
idle seconds. ``J/item vs max``: the slot's settled configuration over the same micro-batch
at every clock at maximum, from the twin without noise (derived, see ``ecoserve.sim.background``).

A built-in job's cost on the twin is derived from figures measured with torch and bundled in
``ecoserve.background.step_cost`` (re-measure with ``benchmarks/bench_background_step.py``),
never measured at replay start: a replay is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ecoserve.background.step_cost import DIGITS_FINETUNE_SMALL, StepCost
from ecoserve.core.assembly import EngineSettings
from ecoserve.core.harvest import (
    LOADER_WORKERS,
    MICRO_BATCH,
    HarvestPolicy,
    HarvestSettings,
    slot_space,
)
from ecoserve.core.knobs import SearchSpace
from ecoserve.sim.background import TwinStepCost
from ecoserve.sim.driver import SimResult, simulate
from tuners.registry import make_tuner
from twins.base import DeviceTwin

#: The built-in jobs' step costs measured here with torch; ``TwinStepCost.derived`` carries
#: them to a board twin. ``cost:`` specs give a job's cost on the board directly.
JOB_COSTS: Mapping[str, StepCost] = MappingProxyType(
    {"builtin:digits-finetune": DIGITS_FINETUNE_SMALL}
)

ARMS = ("serving", "harvest", "queue-empty", "nice-19")

#: The nice-19 model's slot: no prediction, no bound, serving's clocks, the job's maximum.
NICE_19 = HarvestSettings(
    predict_gap=False, while_filling=True, bounded=False, own_clocks=False, tune=False
)


def background_cost(spec: str, twin: DeviceTwin) -> TwinStepCost:
    """The step cost a ``--background`` spec names: ``builtin:NAME`` or
    ``cost:FIXED_MS,PER_ITEM_MS[,LOAD_MS]`` (milliseconds at maximum clocks)."""
    if spec in JOB_COSTS:
        return TwinStepCost.derived(twin, JOB_COSTS[spec])
    kind, _, rest = spec.partition(":")
    if kind == "cost":
        try:
            figures = [float(x) / 1e3 for x in rest.split(",")]
        except ValueError:
            figures = []
        if len(figures) in (2, 3):
            load_s = figures[2] if len(figures) == 3 else 0.0
            return TwinStepCost(twin, figures[0], figures[1], load_s)
    known = ", ".join(JOB_COSTS)
    raise ValueError(
        f"unknown background spec {spec!r}: give one of {known}, or "
        "cost:FIXED_MS,PER_ITEM_MS[,LOAD_MS] (the job's step cost at maximum clocks)"
    )


@dataclass(frozen=True)
class HarvestRow:
    """One arm of one workload."""

    workload: str
    arm: str
    steps: int
    items: int
    background_j: float
    energy_per_item_j: float
    clock_switches: int
    over_bound: int
    capacity: float
    latency_mean_s: float
    latency_p99_s: float
    p99_ratio: float
    serving_cost: float
    serving_energy_j: float
    slot_values: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HarvestReport:
    """Every arm of one workload, and the slot's joules per item against maximum clocks."""

    workload: str
    idle_s: float
    alone_items: float
    rows: tuple[HarvestRow, ...]
    tuned_vs_max_j: float

    def row(self, arm: str) -> HarvestRow:
        return next(r for r in self.rows if r.arm == arm)


def job_space(twin: DeviceTwin, cost: TwinStepCost) -> SearchSpace:
    """The slot's space for this job: micro-batches up to the most it takes in a step."""
    top = cost.max_micro_batch
    sizes = tuple(m for m in (1, 2, 4, 8, 16, 32, 64) if top is None or m <= top)
    return slot_space(twin.knobs(), micro_batches=sizes)


def _policy(space: SearchSpace, settings: HarvestSettings, tuner: str, seed: int) -> HarvestPolicy:
    return HarvestPolicy(space, make_tuner(tuner, space, seed=seed), settings)


def _joules_per_item(twin: DeviceTwin, cost: TwinStepCost, values: Mapping[str, float]) -> float:
    clocks = {k: values[k] for k in twin.max_freqs()}
    mb = int(values[MICRO_BATCH])
    return twin.power(clocks, 1.0) * cost(mb, values) / mb


def harvest_replay(
    arrivals: Sequence[float] | np.ndarray,
    twin: DeviceTwin,
    settings: EngineSettings,
    cost: TwinStepCost,
    *,
    workload: str = "trace",
    harvest: HarvestSettings | None = None,
    slot_tuner: str = "ecogd-original",
    arms: Sequence[str] = ARMS,
) -> HarvestReport:
    """Replay ``arrivals`` once per arm (``serving`` always) and compare them."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arms {unknown}; arms: {', '.join(ARMS)}")
    chosen = {
        "harvest": harvest or HarvestSettings(),
        "queue-empty": HarvestSettings.queue_empty(**_bound(harvest)),
        "nice-19": NICE_19,
    }
    space = job_space(twin, cost)
    results: dict[str, tuple[SimResult, HarvestPolicy | None]] = {}
    for arm in ("serving", *[a for a in arms if a != "serving"]):
        policy = (
            None if arm == "serving" else _policy(space, chosen[arm], slot_tuner, settings.seed)
        )
        result = simulate(arrivals, twin, settings, harvest=policy, background=cost)
        results[arm] = (result, policy)
    base, _ = results["serving"]
    idle_s = max(0.0, base.end_s - float(base.extra["serving_busy_s"]))
    top = {**twin.max_freqs(), **_top_slot(space)}
    top_mb = int(top[MICRO_BATCH])
    alone_items = idle_s * top_mb / cost(top_mb, top)
    e0, l0 = _serving_figures(base)
    rows = []
    for arm, (result, policy) in results.items():
        e, lat = _serving_figures(result)
        figures = result.extra.get("background", {})
        items = int(figures.get("items", 0))
        lats = result.latencies
        p99 = float(np.percentile(lats, 99)) if lats.size else math.nan
        base_p99 = float(np.percentile(base.latencies, 99)) if base.latencies.size else math.nan
        alpha = settings.alpha
        rows.append(
            HarvestRow(
                workload=workload,
                arm=arm,
                steps=int(figures.get("steps", 0)),
                items=items,
                background_j=float(figures.get("energy_j", 0.0)),
                energy_per_item_j=float(figures.get("energy_per_item_j", math.nan)),
                clock_switches=int(figures.get("clock_switches", 0)),
                over_bound=int(figures.get("over_bound", 0)),
                capacity=items / alone_items if alone_items > 0 else math.nan,
                latency_mean_s=lat,
                latency_p99_s=p99,
                p99_ratio=p99 / base_p99 if base_p99 > 0 else math.nan,
                serving_cost=alpha * e / e0 + (1 - alpha) * lat / l0,
                serving_energy_j=result.active_energy_j,
                slot_values={} if policy is None else policy.values(),
            )
        )
    tuned_vs_max = math.nan
    harvest_policy = results.get("harvest", (base, None))[1]
    if harvest_policy is not None:
        tuned = harvest_policy.values()
        at_max = {**tuned, **twin.max_freqs()}
        tuned_vs_max = _joules_per_item(twin, cost, tuned) / _joules_per_item(twin, cost, at_max)
    return HarvestReport(workload, idle_s, alone_items, tuple(rows), tuned_vs_max)


def _bound(harvest: HarvestSettings | None) -> dict[str, Any]:
    """The delay bound the baselines share with the policy they are compared to."""
    return {} if harvest is None else {"max_delay_s": harvest.max_delay_s}


def _top_slot(space: SearchSpace) -> dict[str, float]:
    values = space.values(space.maximum())
    return {MICRO_BATCH: values[MICRO_BATCH], LOADER_WORKERS: values[LOADER_WORKERS]}


def _serving_figures(result: SimResult) -> tuple[float, float]:
    """Serving's joules per request (active: its batches) and mean latency."""
    lat = result.latencies
    if not lat.size:
        return math.nan, math.nan
    return result.active_energy_j / lat.size, float(lat.mean())


def render(reports: Sequence[HarvestReport]) -> str:
    """A plain-text table, one line per arm."""
    head = (
        f"{'workload':<18} {'arm':<12} {'steps':>7} {'items':>8} {'capacity':>8} "
        f"{'J/item':>7} {'switches':>8} {'p99 s':>7} {'p99 x':>6} {'cost x':>6}"
    )
    lines = [head, "-" * len(head)]
    for rep in reports:
        for r in rep.rows:
            # no items, no joules per item (the serving arm runs no job)
            per_item = f"{r.energy_per_item_j:.4f}" if r.items else "-"
            lines.append(
                f"{rep.workload:<18} {r.arm:<12} {r.steps:>7} {r.items:>8} "
                f"{r.capacity:>8.2f} {per_item:>7} {r.clock_switches:>8} "
                f"{r.latency_p99_s:>7.3f} {r.p99_ratio:>6.3f} {r.serving_cost:>6.3f}"
            )
        lines.append(
            f"{'':<18} idle {rep.idle_s:.0f} s could hold {rep.alone_items:.0f} items; "
            f"tuned slot J/item vs maximum clocks {rep.tuned_vs_max_j:.3f}"
        )
    lines.append(
        "capacity: items over what the job alone (largest micro-batch, maximum clocks) does in "
        "the serving run's idle time; p99 x, cost x: over the serving run (cost: active "
        "joules and mean latency, alpha weighted); nice-19 is a model, not a measurement"
    )
    return "\n".join(lines)
