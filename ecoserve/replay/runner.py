"""Virtual-time replays of many (workload, tuner, seed) runs, in parallel processes.

Each workload's oracles are computed once; every run then replays the workload's trace
through ``ecoserve.sim.driver`` and is summarised against them. Seeds: the trace is generated
with seed 0 (every tuner and seed sees the same arrivals, and the oracles are its oracles);
run seed ``s`` seeds the tuner and the twin's noise. A plan's ``scale_load`` multiplies the
arrivals over the same clock (``traces.scale_load``), resampled with seed 0 for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.report import (
    RunRecord,
    WindowSeries,
    fill_ratio_dvfs,
    make_record,
    slo_violations,
)
from ecoserve.replay.suite import Workload
from ecoserve.sim.driver import simulate
from ecoserve.sim.oracle import (
    Oracles,
    compute_oracles,
    renormalised_costs,
    run_cost,
    run_energy,
)
from traces import Trace, scale_load
from twins.fitted import load_twin

#: Tuners known to take far longer per run; scheduled first so two workers finish together.
SLOW_TUNERS = ("bayes", "bayesian")


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay and how: everything a worker process needs to do one task."""

    workloads: tuple[Workload, ...]
    tuners: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str = "xavier-nx"
    settings: EngineSettings = field(default_factory=EngineSettings)
    noise: float | None = None
    oracle_candidates: int = 6
    #: Add the all-maximum reference row (``MAXIMUM_ROW``) before each workload's tuners.
    maximum_rows: bool = True
    #: K times each workload's arrivals over the same clock (``--scale-load``; 1: as recorded).
    scale_load: float = 1.0

    def trace(self, workload: Workload) -> Trace:
        """The arrivals every run of ``workload`` replays: seed 0, scaled by ``scale_load``."""
        return scale_load(workload.load(seed=0), self.scale_load, seed=0)


@dataclass
class ReplayResult:
    records: list[RunRecord]
    series: list[WindowSeries]
    oracles: dict[str, Oracles]


def _oracle_task(plan: ReplayPlan, workload: Workload) -> tuple[str, Oracles]:
    trace = plan.trace(workload)
    twin = load_twin(plan.device, noise=plan.noise)
    oracles = compute_oracles(
        trace.arrivals,
        twin,
        plan.settings,
        validate=plan.oracle_candidates,
        duration_s=trace.duration,
    )
    return workload.label, oracles


def _run_task(
    plan: ReplayPlan, workload: Workload, tuner: str, seed: int, oracles: Oracles
) -> tuple[RunRecord, WindowSeries]:
    trace = plan.trace(workload)
    twin = load_twin(plan.device, noise=plan.noise)
    settings = replace(plan.settings, tuner=tuner, seed=seed)
    result = simulate(trace.arrivals, twin, settings)
    alpha = settings.alpha
    costs = renormalised_costs(result.reports, oracles.baseline, alpha)
    tuning = [r for r in result.reports if r.phase == "tuning"]
    energy = run_energy(result, settings.accounting)
    record = make_record(
        workload=workload.label,
        tuner=tuner,
        seed=seed,
        mode="sim",
        device=plan.device,
        accounting=settings.accounting,
        alpha=alpha,
        costs=costs,
        latencies=result.latencies,
        energy_j=energy,
        requests=len(trace),
        rejected=result.rejected,
        static_cost=oracles.static_cost,
        dynamic_cost=oracles.dynamic_cost,
        virtual_s=result.end_s,
        wall_s=result.wall_s,
        final_config=result.reports[-1].values if result.reports else {},
        run_cost=run_cost(energy, result.latencies, oracles.baseline, alpha),
        static_run_cost=oracles.static_run_cost,
        dynamic_run_cost=oracles.dynamic_run_cost,
        slo_violations=slo_violations([r.latency_p95_s for r in tuning], settings.slo_latency_s),
    )
    series = WindowSeries(
        workload=workload.label,
        tuner=tuner,
        seed=seed,
        end_s=[r.end for r in tuning],
        cost=[float(c) for c in costs],
        energy_per_request_j=[r.energy_per_request_j for r in tuning],
        latency_s=[r.latency_mean_s for r in tuning],
    )
    return record, series


#: The row name of the all-maximum reference (every clock at maximum, as ``jetson_clocks``
#: pins them, and the largest batch): the run the costs are normalised by.
MAXIMUM_ROW = "all-max"


def maximum_record(plan: ReplayPlan, workload: Workload, oracles: Oracles) -> RunRecord | None:
    """The all-maximum reference as a row beside the tuners (its run cost is 1 by definition)."""
    ref = oracles.maximum
    if ref is None:
        return None
    lat = np.array([ref.latency_p50_s, ref.latency_p95_s, ref.latency_p99_s])
    record = make_record(
        workload=workload.label,
        tuner=MAXIMUM_ROW,
        seed=0,
        mode="sim",
        device=plan.device,
        accounting=plan.settings.accounting,
        alpha=plan.settings.alpha,
        costs=np.asarray(ref.window_costs),
        latencies=lat,
        energy_j=ref.energy_per_request_j * len(lat),
        requests=len(plan.trace(workload)),
        rejected=0,
        static_cost=oracles.static_cost,
        dynamic_cost=oracles.dynamic_cost,
        run_cost=1.0,
        static_run_cost=oracles.static_run_cost,
        dynamic_run_cost=oracles.dynamic_run_cost,
        slo_violations=slo_violations(ref.window_p95_s, plan.settings.slo_latency_s),
    )
    # the percentiles are the reference run's own, not those of the three figures above
    record.latency_p50_s, record.latency_p95_s = ref.latency_p50_s, ref.latency_p95_s
    record.latency_p99_s, record.served = ref.latency_p99_s, record.requests
    return record


def run_plan(
    plan: ReplayPlan,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    oracles: dict[str, Oracles] | None = None,
) -> ReplayResult:
    """Oracles, then every run; ``progress(what, done, total)`` after each task.

    ``oracles`` (by workload label) are reused instead of computed, for several plans over the
    same workloads, device and batching settings (the tuner's parameters do not enter them).
    """
    tasks = [(w, t, s) for w in plan.workloads for t in plan.tuners for s in plan.seeds]
    tasks.sort(key=lambda x: x[1] not in SLOW_TUNERS)
    oracles = dict(oracles or {})
    missing = [w for w in plan.workloads if w.label not in oracles]
    total = len(missing) + len(tasks)
    done = 0
    records: list[RunRecord] = []
    series: list[WindowSeries] = []

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, done, total)

    if workers <= 1:
        for w in missing:
            label, o = _oracle_task(plan, w)
            oracles[label] = o
            tick(f"oracle {label}")
        for w, t, s in tasks:
            rec, ser = _run_task(plan, w, t, s, oracles[w.label])
            records.append(rec)
            series.append(ser)
            tick(f"{w.label} {t} seed {s}")
    else:
        with _interruptible_pool(workers) as pool:
            futures = [pool.submit(_oracle_task, plan, w) for w in missing]
            for fut in as_completed(futures):
                label, o = fut.result()
                oracles[label] = o
                tick(f"oracle {label}")
            run_futures = {
                pool.submit(_run_task, plan, w, t, s, oracles[w.label]): (w, t, s)
                for w, t, s in tasks
            }
            for run_fut in as_completed(run_futures):
                rec, ser = run_fut.result()
                records.append(rec)
                series.append(ser)
                w, t, s = run_futures[run_fut]
                tick(f"{w.label} {t} seed {s}")
    order = {
        (w.label, t, s): i
        for i, (w, t, s) in enumerate(
            (w, t, s) for w in plan.workloads for t in plan.tuners for s in plan.seeds
        )
    }
    records.sort(key=lambda r: order[(r.workload, r.tuner, r.seed)])
    series.sort(key=lambda r: order[(r.workload, r.tuner, r.seed)])
    if plan.maximum_rows:
        by_label = {w.label: w for w in plan.workloads}
        for label in by_label:
            at = next((k for k, r in enumerate(records) if r.workload == label), len(records))
            row = maximum_record(plan, by_label[label], oracles[label])
            if row is not None:
                records.insert(at, row)
    fill_ratio_dvfs(records)
    return ReplayResult(records, series, oracles)


def _ignore_sigint() -> None:
    """A worker leaves Ctrl-C to its parent, which ends it (no traceback from each worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _interruptible_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool that Ctrl-C ends at once.

    On leaving by an exception (KeyboardInterrupt included) the queued tasks are cancelled
    and the workers terminated: a plain ``with`` would wait for the running tasks, and an
    oracle over a long trace runs for minutes.
    """
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        yield pool
    except BaseException:
        # The executor offers no terminate before Python 3.14; its worker table is the way.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def default_workers() -> int:
    """Two workers where two cores exist (the suite's budget is set for two)."""
    return max(1, min(2, os.cpu_count() or 1))
