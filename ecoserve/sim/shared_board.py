"""Several models on one board in virtual time: one or more engines share its clocks.

The board runs one batch at a time, in the order the engines dispatch them (a GPU serialises
the work of the processes that share it); each model's batch takes its own twin's time
(``twins.scaled``) at the clocks in force when it starts. The clocks are the board's: an
engine's ``ApplyConfig`` writes them, and whichever engine wrote last is what every batch
runs at. The meter is the board's: every engine reads the same cumulative joules.

Two ways to serve three models, replayed by the same loop:

- one engine with one queue per model (``build_engine(queues=...)``): one tuner sees every
  model and sets the clocks for all of them;
- one engine per model, as three independent daemons would run: each tunes the clocks (and
  its own batch size) for its model alone, and the last to write wins. Each daemon measures
  a batch's energy as a daemon does, from the board meter before and after its model call;
  a batch that waited for the board behind another daemon's batches therefore counts their
  joules (and the idle between) as its own, as a real shared meter would.

With a single engine of one queue the loop carries out exactly what ``Simulator`` does (the
same answers, in the same order, with the same noise), which a test checks.

Knobs handed to the OS governors are not modelled on a shared board: an engine that asks
for them is refused with a clear error.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.batching import Dispatch
from ecoserve.core.controller import DEFAULT_QUEUE, BatchOutcome, WindowReport
from ecoserve.core.cost import MIN_ENERGY_J, MIN_LATENCY_S, Baseline, CostModel, joint_cost
from ecoserve.core.engine import (
    Admission,
    ApplyConfig,
    Drained,
    Engine,
    QueueSpec,
    RunBackground,
    WindowClosed,
)
from twins.base import DeviceTwin


@dataclass(frozen=True)
class Tenant:
    """One engine on the board, and the model each of its queues serves (queue -> model)."""

    engine: Engine[int]
    models: Mapping[str, str]


@dataclass
class SharedBoardResult:
    """What one replay produced; per model, ``completions`` is NaN for rejected requests."""

    models: tuple[str, ...]
    arrivals: dict[str, np.ndarray]
    completions: dict[str, np.ndarray]
    #: Each tenant's window reports, in tenant order.
    reports: list[list[WindowReport]]
    rejected: dict[str, int]
    batches: dict[str, int]
    #: Joules of each model's batches (what the board really spent on it, not what a
    #: daemon's meter readings attributed to it).
    active_energy_j: dict[str, float]
    #: The board meter over the replay, idle included.
    total_energy_j: float
    #: How many times a write changed the board's clocks.
    clock_changes: int
    end_s: float
    wall_s: float

    def latencies(self, model: str) -> np.ndarray:
        """Seconds from arrival to completion of ``model``'s served requests."""
        lat = self.completions[model] - self.arrivals[model]
        return lat[~np.isnan(lat)]

    @property
    def served(self) -> int:
        return sum(int(np.count_nonzero(~np.isnan(c))) for c in self.completions.values())


@dataclass
class _Running:
    """The batch on the board: whose, when it was dispatched and started, what it costs."""

    tenant: int
    batch: Dispatch[int]
    model: str
    dispatched: float
    dispatch_meter: float
    start: float
    seconds: float
    joules: float
    errors: float
    meter_before: float  # the meter when it started

    @property
    def end(self) -> float:
        return self.start + self.seconds


class SharedBoard:
    """Drives engines over per-model traces on one board twin, in virtual time.

    ``board``: the board's twin (its knobs, its idle power); ``models``: each model's twin
    on that board (``twins.scaled.ScaledTwin``); ``tenants``: the engines and which model
    each of their queues serves.
    """

    def __init__(
        self,
        board: DeviceTwin,
        models: Mapping[str, DeviceTwin],
        tenants: Sequence[Tenant],
        *,
        noise_seed: int = 0,
    ) -> None:
        if not tenants:
            raise ValueError("a shared board needs at least one engine")
        served: dict[str, tuple[int, str]] = {}
        for t, tenant in enumerate(tenants):
            queues = set(tenant.engine.queue_names)
            if set(tenant.models) != queues:
                raise ValueError(
                    f"engine {t} has queues {sorted(queues)} but models are given for "
                    f"{sorted(tenant.models)}: name a model for every queue"
                )
            for queue, model in tenant.models.items():
                if model not in models:
                    raise ValueError(
                        f"no twin for model {model!r}; models: {', '.join(sorted(models))}"
                    )
                if model in served:
                    raise ValueError(f"model {model!r} is served by two queues")
                served[model] = (t, queue)
        self.board = board
        self.models = dict(models)
        self.tenants = list(tenants)
        self._route = served
        self._knobs = {k.name for k in board.knobs()}
        self.rng = random.Random(noise_seed)

    def run(
        self,
        traces: Mapping[str, Sequence[float] | np.ndarray],
        on_window: Callable[[int, WindowReport], None] | None = None,
    ) -> SharedBoardResult:
        """Replay each model's arrivals (seconds, sorted) to the end, draining every queue."""
        wall0 = time.perf_counter()
        missing = sorted(set(self._route) - set(traces))
        unknown = sorted(set(traces) - set(self._route))
        if missing or unknown:
            raise ValueError(
                f"traces must be given for exactly the served models: missing {missing}, "
                f"not served {unknown}"
            )
        names = tuple(self._route)
        per_model = {m: np.asarray(traces[m], dtype=np.float64) for m in names}
        for m, arr in per_model.items():
            if arr.size > 1 and np.any(np.diff(arr) < 0):
                raise ValueError(f"arrivals of model {m!r} must be sorted")
        model_of = np.concatenate(
            [np.full(len(per_model[m]), k, dtype=np.int64) for k, m in enumerate(names)]
        )
        merged = np.concatenate([per_model[m] for m in names]) if names else np.empty(0)
        order = np.argsort(merged, kind="stable")
        arr = merged[order].tolist()
        owner = model_of[order].tolist()
        n = len(arr)
        completions = np.full(n, np.nan)
        # requests still to come, per tenant (its engine may drain once none are left)
        pending = [0] * len(self.tenants)
        for k in owner:
            pending[self._route[names[k]][0]] += 1
        routes = [self._route[m] for m in names]

        tenants = self.tenants
        engines = [t.engine for t in tenants]
        board, rng = self.board, self.rng
        reports: list[list[WindowReport]] = [[] for _ in tenants]
        rejected = dict.fromkeys(names, 0)
        batches = dict.fromkeys(names, 0)
        active = dict.fromkeys(names, 0.0)
        in_flight = [False] * len(tenants)
        drained = [False] * len(tenants)
        wake = [math.inf] * len(tenants)
        queue: deque[tuple[int, Dispatch[int], float, float]] = deque()
        running: _Running | None = None
        clocks: dict[str, float] = {}
        changes = 0

        now = min(0.0, arr[0]) if n else 0.0
        meter = 0.0  # joules up to ``mark``
        mark = now
        idle_w = 0.0
        i = 0

        def meter_at(t: float) -> float:
            if running is not None:
                return running.meter_before + running.joules * (t - running.start) / max(
                    running.seconds, 1e-12
                )
            return meter + idle_w * (t - mark)

        def apply(action: ApplyConfig) -> None:
            """The engine writes the board's clocks: whatever it writes is what runs next."""
            nonlocal clocks, idle_w, meter, mark, changes
            if action.governed:
                raise ValueError(
                    f"knobs {sorted(action.governed)} were handed to the OS governors, which "
                    "a shared board does not model: use a tuner that pins every clock"
                )
            if running is None:  # a running batch's joules were fixed when it started
                meter += idle_w * (now - mark)
                mark = now
            new = {k: v for k, v in action.values.items() if k in self._knobs}
            changes += new != clocks
            clocks = new
            idle_w = board.power(clocks, 0.0)

        def admit(until: float) -> None:
            nonlocal i
            while i < n and arr[i] <= until:
                model = owner[i]
                t, q = routes[model]
                if engines[t].arrive(i, arr[i], q) is not Admission.ACCEPTED:
                    rejected[names[model]] += 1
                pending[t] -= 1
                if not in_flight[t]:
                    wake[t] = now  # it looks at the arrival now
                i += 1

        def drive(t: int) -> None:
            """Carry out tenant ``t``'s answers at ``now`` until it waits or dispatches."""
            engine = engines[t]
            while True:
                action = engine.next(now, meter_at(now), arrivals_over=pending[t] == 0)
                if isinstance(action, Dispatch):
                    in_flight[t] = True
                    wake[t] = math.inf
                    queue.append((t, action, now, meter_at(now)))
                    return
                if isinstance(action, WindowClosed):
                    reports[t].append(action.report)
                    if on_window is not None:
                        on_window(t, action.report)
                elif isinstance(action, ApplyConfig):
                    apply(action)
                elif isinstance(action, Drained):
                    drained[t] = True
                    wake[t] = math.inf
                    return
                elif isinstance(action, RunBackground):
                    raise RuntimeError("the shared-board replay runs no background work")
                else:  # WaitUntil
                    wake[t] = max(now, action.deadline)
                    return

        def start(t: int, batch: Dispatch[int], dispatched: float, dispatch_meter: float) -> None:
            nonlocal running, meter, mark
            model = names[owner[batch.items[0]]]
            seconds, joules, errors = self.models[model].sample_batch(
                len(batch.items), clocks, rng, now
            )
            idle_j = idle_w * (now - mark)
            before = meter + idle_j
            meter += idle_j + joules
            mark = now + seconds
            running = _Running(
                t, batch, model, dispatched, dispatch_meter, now, seconds, joules, errors, before
            )

        def finish(run: _Running) -> None:
            end = run.end
            items = run.batch.items
            completions[items] = end
            batches[run.model] += 1
            active[run.model] += run.joules
            waited = run.start > run.dispatched
            in_flight[run.tenant] = False
            wake[run.tenant] = end
            engines[run.tenant].batch_done(
                BatchOutcome(
                    config=run.batch.config,
                    latencies=[end - a for a in run.batch.arrivals],
                    energy_j=meter - run.dispatch_meter if waited else run.joules,
                    end=end,
                    meter_j=meter,
                    errors=run.errors,
                    busy_s=end - run.dispatched if waited else run.seconds,
                    queue=run.batch.queue,
                )
            )

        for t, engine in enumerate(engines):
            apply(engine.start(now, meter_at(now)))
            wake[t] = now
        while True:
            admit(now)
            if running is not None and running.end <= now:
                done, running = running, None
                now = done.end
                finish(done)
            for t in range(len(tenants)):
                if not in_flight[t] and not drained[t] and wake[t] <= now:
                    drive(t)
            if running is None and queue:
                start(*queue.popleft())
            if running is None and not queue and all(drained):
                break
            nxt = math.inf if running is None else running.end
            if i < n and arr[i] < nxt:
                nxt = arr[i]
            for t in range(len(tenants)):
                if not in_flight[t] and not drained[t] and wake[t] < nxt:
                    nxt = wake[t]
            if nxt == math.inf:
                raise RuntimeError("the shared board stalled: nothing runs, arrives or wakes")
            now = max(now, nxt)

        splits = np.cumsum([len(per_model[m]) for m in names])[:-1]
        back = np.empty(n, dtype=np.float64)
        back[order] = completions
        done_per_model = dict(zip(names, np.split(back, splits), strict=True))
        last = max((float(a[-1]) for a in per_model.values() if a.size), default=0.0)
        return SharedBoardResult(
            models=names,
            arrivals=per_model,
            completions=done_per_model,
            reports=reports,
            rejected=rejected,
            batches=batches,
            active_energy_j=active,
            total_energy_j=meter,
            clock_changes=changes,
            end_s=max(now, last),
            wall_s=time.perf_counter() - wall0,
        )


# -- the ways to serve several models, and what each run cost ---------------------------------


def joint_tenants(
    board: DeviceTwin,
    queues: Sequence[QueueSpec],
    settings: EngineSettings,
    baselines: Mapping[str, Baseline] | None = None,
) -> list[Tenant]:
    """One engine, one queue per model (named after it), one tuner for the board's clocks."""
    engine = build_engine(board.knobs(), settings, queues=queues, baselines=baselines)
    return [Tenant(engine, {q.name: q.name for q in queues})]


def daemon_tenants(
    board: DeviceTwin, queues: Sequence[QueueSpec], settings: EngineSettings, seeds: Sequence[int]
) -> list[Tenant]:
    """One single-model engine per model, each with its own tuner (seeded by ``seeds``) over
    the board's clocks and its own batch size, as independent daemons would run."""
    if len(seeds) != len(queues):
        raise ValueError(f"one seed per model: {len(queues)} models, {len(seeds)} seeds")
    tenants = []
    for q, seed in zip(queues, seeds, strict=True):
        own = replace(
            settings,
            seed=seed,
            max_batch=settings.max_batch if q.max_batch is None else q.max_batch,
            min_batch=settings.min_batch if q.min_batch is None else q.min_batch,
            slo_latency_s=settings.slo_latency_s if q.slo_latency_s is None else q.slo_latency_s,
        )
        tenants.append(Tenant(build_engine(board.knobs(), own), {DEFAULT_QUEUE: q.name}))
    return tenants


@dataclass(frozen=True)
class ModelRun:
    """One model's figures over a whole replay, every request counted.

    ``energy_j`` is the joules of its batches; under ``total`` accounting, plus its request
    share of the board's other joules (idle).
    """

    model: str
    requests: int
    served: int
    rejected: int
    energy_j: float
    energy_per_request_j: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p99_s: float
    #: The latency percentile an SLO is judged on (``tail_percentile`` of ``model_runs``).
    latency_tail_s: float


def model_runs(
    result: SharedBoardResult, accounting: str = "active", tail_percentile: float = 95.0
) -> dict[str, ModelRun]:
    """Each model's figures from a replay (what the board spent, not what a meter reading
    attributed)."""
    if accounting not in ("active", "total"):
        raise ValueError(f"accounting must be 'active' or 'total', got {accounting!r}")
    served = {m: len(result.latencies(m)) for m in result.models}
    everyone = sum(served.values())
    idle_j = max(0.0, result.total_energy_j - sum(result.active_energy_j.values()))
    runs = {}
    for m in result.models:
        lat = result.latencies(m)
        n = served[m]
        energy = result.active_energy_j[m]
        if accounting == "total" and everyone:
            energy += idle_j * n / everyone
        runs[m] = ModelRun(
            model=m,
            requests=len(result.arrivals[m]),
            served=n,
            rejected=result.rejected[m],
            energy_j=energy,
            energy_per_request_j=energy / n if n else math.nan,
            latency_mean_s=float(lat.mean()) if n else math.nan,
            latency_p50_s=float(np.percentile(lat, 50)) if n else math.nan,
            latency_p99_s=float(np.percentile(lat, 99)) if n else math.nan,
            latency_tail_s=float(np.percentile(lat, tail_percentile)) if n else math.nan,
        )
    return runs


def reference_baselines(runs: Mapping[str, ModelRun], accounting: str) -> dict[str, Baseline]:
    """Each model's baseline from a reference run (every clock and batch size at maximum)."""
    out = {}
    for m, r in runs.items():
        if not r.served:
            raise ValueError(f"model {m!r} served nothing in the reference run: no baseline")
        out[m] = Baseline(
            max(r.energy_per_request_j, MIN_ENERGY_J),
            max(r.latency_mean_s, MIN_LATENCY_S),
            accounting,
        )
    return out


def joint_run_cost(
    runs: Mapping[str, ModelRun],
    baselines: Mapping[str, Baseline],
    models: Mapping[str, CostModel],
) -> tuple[float, dict[str, float]]:
    """The joint cost of a whole run (each model's cost model on its baseline, weighted by
    requests served; an SLO judged on ``latency_tail_s``), and each model's cost."""
    costs = {
        m: float(
            models[m].cost(r.energy_per_request_j, r.latency_mean_s, baselines[m], r.latency_tail_s)
        )
        for m, r in runs.items()
        if r.served
    }
    return joint_cost((runs[m].served, c) for m, c in costs.items()), costs
