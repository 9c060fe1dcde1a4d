"""The controller: from finished batches to windows, costs and the next configuration.

Sans-IO: it is told what happened (arrivals, finished batches, the meter's cumulative
reading, the time) and answers with a window report when a window closes; the
configuration to run next is then ``controller.config``. The asyncio runtime and the
simulator both drive this one object, so the benchmark measures what the daemon does.

Life of a configuration: after each change the first ``warmup_requests`` completions
are dropped (caches, clocks and queues settle), then a window collects
``window_requests`` completions (or runs ``window_seconds``, whichever comes first, so a
slow arrival rate still tunes). The very first window runs every knob at its maximum and
becomes the cost's baseline (E0, L0) unless a baseline was given (the last of
``baseline_windows`` such windows, so start-up transients do not set it).

Several models on one board (``queues``: one request queue per model, one set of clocks):
each finished batch is one queue's, so its energy and latencies are that model's. A window
then also keeps each model's figures, and its cost is the joint cost of ``ecoserve.core.cost``:
each model's cost on its own baseline (E0_i, L0_i, measured in the same all-maximum windows,
each queue at its largest batch) and cost model (its latency target in SLO mode), weighted by
the requests it served. Under ``total`` accounting the energy between batches (idle) is split
among the models by their share of the window's requests. A model with no traffic in the
baseline windows has no baseline until one is measured again (``remeasure_baseline``); until
then it is left out of the cost, and with no model measured the cost falls back to the
whole board's (every request pooled, on the pooled baseline).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ecoserve.core.busy_rate import BusyRate
from ecoserve.core.cost import (
    MIN_ENERGY_J,
    MIN_LATENCY_S,
    Baseline,
    CostModel,
    EnergyAccounting,
    joint_cost,
)
from ecoserve.core.knobs import BATCH, Config, SearchSpace
from ecoserve.core.link import moved
from ecoserve.core.tuner import Tuner

#: The name of the queue of an engine that serves one model.
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class BatchOutcome:
    """What one finished batch tells the controller."""

    config: Config
    latencies: Sequence[float]
    energy_j: float
    end: float
    meter_j: float
    failed: int = 0
    #: Answers estimated wrong in this batch (a cascade's small model); 0 for most models.
    errors: float = 0.0
    #: Seconds the batch ran (dispatch to completion); 0 when the driver does not time it.
    busy_s: float = 0.0
    #: CPU seconds the serving loop's thread spent since the previous batch ended (less a
    #: synchronous model call or background step run on that thread): parsing and coding
    #: requests, dispatch, bookkeeping, whatever else the loop served. A live server's loop
    #: runs out before the model on a small board; 0 where nothing measures it (the
    #: simulator, whose twin times the batch alone). An ``async def`` model's own CPU is
    #: the loop's and is counted, as well as in ``busy_s``.
    loop_s: float = 0.0
    #: The queue (model) the batch came from (``Dispatch.queue``).
    queue: str = DEFAULT_QUEUE

    @property
    def served(self) -> int:
        return len(self.latencies)


@dataclass(frozen=True)
class ModelFigures:
    """One model's part of a window on a shared board (only models that served requests).

    ``energy_j`` is its batches' joules, plus its request share of the idle joules under
    ``total`` accounting. ``cost`` is on the model's own baseline (1.0 while the baseline is
    measured); None while the model has no baseline.
    """

    requests: int
    failed: int
    arrival_rate: float
    energy_j: float
    energy_per_request_j: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    cost: float | None
    error_rate: float = 0.0


@dataclass(frozen=True)
class WindowReport:
    index: int
    phase: str
    config: Config
    values: dict[str, float]
    requests: int
    failed: int
    start: float
    end: float
    energy_j: float
    energy_per_request_j: float
    latency_mean_s: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    arrival_rate: float
    cost: float
    accounting: str
    next_config: Config
    error_rate: float = 0.0
    #: Each model's figures, by queue name, when the controller scores several queues
    #: (empty for a controller of one anonymous queue).
    per_model: dict[str, ModelFigures] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = list(self.config)
        d["next_config"] = list(self.next_config)
        return d


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _baseline_of(data: Any, accounting: str) -> Baseline:
    """A saved baseline (an object of figures); raises on anything else."""
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    return Baseline(
        float(data["energy_per_request_j"]),
        float(data["latency_s"]),
        str(data.get("accounting", accounting)),
    )


@dataclass
class _Part:
    """One queue's share of a window."""

    latencies: list[float] = field(default_factory=list)
    active_energy_j: float = 0.0
    failed: int = 0
    arrivals: int = 0
    errors: float = 0.0


@dataclass
class _Window:
    opened_at: float
    meter_at_open: float
    latencies: list[float] = field(default_factory=list)
    active_energy_j: float = 0.0
    failed: int = 0
    arrivals: int = 0
    errors: float = 0.0
    busy_s: float = 0.0
    loop_s: float = 0.0
    batches: int = 0
    busy_rate: BusyRate = field(default_factory=BusyRate)
    context: dict[str, float] = field(default_factory=dict)
    #: Per queue, when the controller scores several (else empty).
    parts: dict[str, _Part] = field(default_factory=dict)


class Controller:
    """Windows, costs and the next configuration (see the module notes).

    ``queues``: the names of the queues (models) whose costs are scored jointly; None (the
    default) scores every request as one model's, as a one-model daemon does.
    ``queue_costs``: a cost model per queue (its SLO target); missing ones use
    ``cost_model``. ``baselines``: each queue's known baseline; given for every queue, the
    baseline windows are skipped (``baseline`` alone does not skip them when scoring
    several queues: it says nothing of each model).
    """

    def __init__(
        self,
        space: SearchSpace,
        tuner: Tuner,
        cost_model: CostModel | None = None,
        baseline: Baseline | None = None,
        window_requests: int | None = 416,
        warmup_requests: int = 100,
        window_seconds: float | None = None,
        accounting: EnergyAccounting | str = EnergyAccounting.ACTIVE,
        history: int = 256,
        baseline_windows: int = 2,
        context_tolerance: float | None = 0.5,
        *,
        queues: Sequence[str] | None = None,
        queue_costs: Mapping[str, CostModel] | None = None,
        baselines: Mapping[str, Baseline] | None = None,
    ) -> None:
        if window_requests is None and window_seconds is None:
            raise ValueError("a window needs window_requests, window_seconds, or both")
        if window_requests is not None and window_requests < 1:
            raise ValueError(f"window_requests must be >= 1, got {window_requests}")
        if warmup_requests < 0:
            raise ValueError(f"warmup_requests must be >= 0, got {warmup_requests}")
        self.space = space
        self.tuner = tuner
        self.cost_model = cost_model or CostModel()
        self.accounting = EnergyAccounting(accounting)
        self.queues: tuple[str, ...] | None = None
        #: Each queue's cost model and baseline (scoring several queues only).
        self.queue_costs: dict[str, CostModel] = {}
        self.baselines: dict[str, Baseline] = {}
        # the baselines the current baseline windows measured, queue by queue
        self._measured: dict[str, Baseline] = {}
        if queues is not None:
            baseline = self._joint_setup(queues, queue_costs or {}, baselines or {}, baseline)
        elif queue_costs or baselines:
            raise ValueError("queue_costs and baselines need the queues they are for (queues=)")
        self.baseline = baseline
        self.window_requests = window_requests
        self.warmup_requests = warmup_requests
        self.window_seconds = window_seconds
        if baseline_windows < 1:
            raise ValueError(f"baseline_windows must be >= 1, got {baseline_windows}")
        self.baseline_windows = baseline_windows
        if context_tolerance is not None and not context_tolerance > 0:
            raise ValueError(f"context_tolerance must be > 0 or None, got {context_tolerance}")
        self.context_tolerance = context_tolerance
        #: What the driver knows of the environment (a link estimate); goes to the tuner.
        self.context: dict[str, float] = {}
        self._baseline_windows_left = baseline_windows
        self._remeasuring = False
        self.reports: deque[WindowReport] = deque(maxlen=history)
        self.windows_closed = 0
        self.pinned: dict[str, int] = {}
        self._config: Config = space.maximum()
        self._changed_at = 0.0
        self._warmup_left = warmup_requests
        self._window: _Window | None = None
        self._started = False

    def _joint_setup(
        self,
        queues: Sequence[str],
        queue_costs: Mapping[str, CostModel],
        baselines: Mapping[str, Baseline],
        baseline: Baseline | None,
    ) -> Baseline | None:
        """Check and keep what scoring several queues needs; returns the pooled baseline."""
        names = tuple(queues)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"queues must be distinct names, at least one; got {list(names)}")
        for what, given in (("queue_costs", queue_costs), ("baselines", baselines)):
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise ValueError(f"{what} for unknown queues {unknown}; queues: {list(names)}")
        for name, b in baselines.items():
            if b.accounting != self.accounting.value:
                raise ValueError(
                    f"baseline of queue {name!r} was measured under {b.accounting!r} "
                    f"accounting, not {self.accounting.value!r}"
                )
        self.queues = names
        self.queue_costs = {q: queue_costs.get(q, self.cost_model) for q in names}
        if set(baselines) != set(names):
            return None  # measure every queue's at maximum
        self.baselines = dict(baselines)
        if baseline is not None:
            return baseline
        # the pooled figure only reports readiness (each queue is scored on its own)
        n = len(names)
        return Baseline(
            sum(b.energy_per_request_j for b in baselines.values()) / n,
            sum(b.latency_s for b in baselines.values()) / n,
            self.accounting.value,
        )

    # -- state ----------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The configuration to run now."""
        return self._config

    @property
    def phase(self) -> str:
        return "tuning" if self.baseline is not None and not self._remeasuring else "baseline"

    @property
    def ready(self) -> bool:
        """True once the baseline is known (measured or loaded)."""
        return self.baseline is not None

    def governed_knobs(self) -> frozenset[str]:
        return self.tuner.governed_knobs() - frozenset(self.pinned)

    def values(self) -> dict[str, float]:
        return self.space.values(self._config)

    def batch_size(self) -> int:
        return int(self.values()[BATCH]) if self.space.has(BATCH) else 1

    # -- events ---------------------------------------------------------------------------
    def start(self, now: float, meter_j: float) -> Config:
        """Choose the first configuration: the maximum for the baseline, else the tuner's."""
        self._started = True
        first = self.space.maximum() if self.baseline is None else self.tuner.ask()
        self._switch(self._with_pins(first), now, meter_j)
        return self._config

    def on_arrival(self, now: float, queue: str = DEFAULT_QUEUE) -> None:
        """A request arrived for ``queue`` (used for the window's arrival rates)."""
        w = self._window
        if w is not None:
            w.arrivals += 1
            w.busy_rate.add(now)
            if self.queues is not None:
                self._part(w, queue).arrivals += 1

    def on_batch(self, outcome: BatchOutcome) -> WindowReport | None:
        """Account one finished batch; returns a report when it closes a window."""
        if not self._started:
            raise RuntimeError("Controller.start() must be called before on_batch()")
        if tuple(outcome.config) != self._config:
            return None  # ran under the previous configuration: not this one's to judge
        if self._window is None:
            if outcome.failed:
                self._warmup_left -= outcome.failed
            self._warmup_left -= outcome.served
            if self._warmup_left > 0 and not self._warmup_timed_out(outcome.end):
                return None
            self._open_window(outcome.end, outcome.meter_j)
            return None
        w = self._window
        w.latencies.extend(outcome.latencies)
        w.active_energy_j += outcome.energy_j
        w.failed += outcome.failed
        w.errors += outcome.errors
        w.busy_s += outcome.busy_s
        w.loop_s += outcome.loop_s
        w.batches += 1
        if self.queues is not None:
            part = self._part(w, outcome.queue)
            part.latencies.extend(outcome.latencies)
            part.active_energy_j += outcome.energy_j
            part.failed += outcome.failed
            part.errors += outcome.errors
        return self._maybe_close(outcome.end, outcome.meter_j)

    def _part(self, window: _Window, queue: str) -> _Part:
        """``queue``'s part of ``window``; a queue the controller does not score is an error."""
        part = window.parts.get(queue)
        if part is None:
            assert self.queues is not None
            if queue not in self.queues:
                raise ValueError(
                    f"no queue named {queue!r} is scored; queues: {', '.join(self.queues)}"
                )
            part = window.parts[queue] = _Part()
        return part

    def observe_context(
        self, values: Mapping[str, float], now: float, meter_j: float
    ) -> WindowReport | None:
        """The driver's view of the environment changed (e.g. its link estimate).

        The values reach the tuner with every window's metrics. When one of them has moved by
        more than ``context_tolerance`` (relative) since the window opened, the conditions the
        window was measuring are gone: it closes now (if it served anything), so the tuner
        answers the change within one request instead of one window.
        """
        self.context.update(values)
        w = self._window
        if w is None or self.context_tolerance is None or not self._started:
            return None
        if not w.latencies:  # nothing measured yet: these are the window's conditions
            w.context.update({k: float(v) for k, v in values.items()})
            return None
        for name, value in values.items():
            before = w.context.setdefault(name, float(value))
            if moved(before, float(value), self.context_tolerance):
                return self._close(now, meter_j)
        return None

    def tick(self, now: float, meter_j: float) -> WindowReport | None:
        """Let time pass with no batch: closes a timed window or ends a timed warm-up."""
        if not self._started:
            return None
        if self._window is None:
            if self._warmup_timed_out(now):
                self._open_window(now, meter_j)
            return None
        return self._maybe_close(now, meter_j)

    def remeasure_baseline(self, now: float, meter_j: float) -> None:
        """Measure E0/L0 again at maximum, on whatever traffic arrives from now on.

        A daemon becomes ready on a baseline measured with synthetic items, which never
        queue; real traffic's latency includes queueing, so that baseline is provisional.
        It stays in force (the controller stays ready) until the new windows replace it.
        """
        self._remeasuring = True
        self._baseline_windows_left = self.baseline_windows
        self._measured = {}
        self._switch(self._with_pins(self.space.maximum()), now, meter_j)

    # -- run-time control -----------------------------------------------------------------
    def pin(self, values: Mapping[str, float], now: float, meter_j: float) -> Config:
        """Hold some knobs at given values (nearest available); the tuner moves the rest."""
        for name, value in values.items():
            knob = self.space.knobs[self.space.axis(name)]
            self.pinned[name] = knob.index_of(float(value))
        self._switch(self._with_pins(self._config), now, meter_j)
        return self._config

    def unpin(self, now: float, meter_j: float) -> None:
        self.pinned.clear()
        self._switch(self._config, now, meter_j)

    def set_tuner(self, tuner: Tuner, now: float, meter_j: float) -> Config:
        """Switch tuner mid-run; the new one starts from its own first ask."""
        if tuner.space != self.space:
            raise ValueError("the new tuner must work on the controller's search space")
        self.tuner = tuner
        if self.baseline is not None:
            self._switch(self._with_pins(tuner.ask()), now, meter_j)
        return self._config

    def drop_knob(self, name: str, tuner: Tuner, now: float, meter_j: float) -> Config:
        """Take knob ``name`` out of the space (its hardware failed); ``tuner`` works on the rest.

        The configuration keeps every other knob's value and a new window starts; the baseline
        stays (it was measured with every knob at its maximum, which the rest still are).
        """
        axis = self.space.axis(name)
        space = SearchSpace(tuple(k for k in self.space.knobs if k.name != name))
        if tuner.space != space:
            raise ValueError(f"the new tuner must work on the space without {name!r}")
        config = tuple(i for a, i in enumerate(self._config) if a != axis)
        self.space = space
        self.tuner = tuner
        self.pinned.pop(name, None)
        self._config = config
        self._switch(self._with_pins(config), now, meter_j)
        return self._config

    # -- resuming -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What resuming needs, as JSON-ready data: tuner state, baseline, pins, windows."""
        return {
            "accounting": self.accounting.value,
            "tuner": self.tuner.name,
            "tuner_state": self.tuner.state_dict(),
            "baseline": asdict(self.baseline) if self.baseline is not None else None,
            **(
                {}
                if self.queues is None
                else {"baselines": {q: asdict(b) for q, b in self.baselines.items()}}
            ),
            "config": list(self._config),
            "values": self.values(),
            "pinned": dict(self.pinned),
            "windows_closed": self.windows_closed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Resume ``state`` (before ``start``); returns (what was restored, what was not, why).

        Everything is checked (types, finiteness, indices inside the space, a tuner state
        whose next configuration lies in the space); whatever fails is skipped with the
        reason, and the controller measures afresh instead. Never raises on bad data.
        """
        restored: list[str] = []
        problems: list[str] = []
        base = state.get("baseline")
        if base is not None and state.get("accounting") != self.accounting.value:
            problems.append(
                f"baseline measured under {state.get('accounting')!r} accounting, not "
                f"{self.accounting.value!r}; measuring a new one"
            )
        elif base is not None:
            try:
                pooled = _baseline_of(base, self.accounting.value)
                if self.queues is not None:
                    self.baselines = self._queue_baselines(state.get("baselines"))
                self.baseline = pooled
                restored.append("baseline")
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"bad baseline ({exc}); measuring a new one")
        saved_tuner = state.get("tuner_state")
        before = self.tuner.state_dict()
        try:
            if not isinstance(saved_tuner, Mapping):
                raise TypeError(f"expected an object, got {type(saved_tuner).__name__}")
            self.tuner.load_state_dict(saved_tuner)
            self.space.validate(self.tuner.ask())  # an index outside the space fails here
            self.tuner.load_state_dict(saved_tuner)  # undo whatever the ask moved
            restored.append("tuner")
        except Exception as exc:  # any shape of bad state: start the tuner afresh
            self.tuner.load_state_dict(before)
            problems.append(f"tuner state not resumed ({type(exc).__name__}: {exc})")
        if "tuner" in restored:
            windows = state.get("windows_closed", 0)
            if isinstance(windows, int) and not isinstance(windows, bool) and windows >= 0:
                self.windows_closed = windows
            else:
                problems.append(f"windows_closed {windows!r} is not a count; starting at 0")
            pinned = state.get("pinned") or {}
            if not isinstance(pinned, Mapping):
                problems.append(f"pinned {pinned!r} is not an object; nothing pinned")
                pinned = {}
            for name, index in pinned.items():
                knob = self.space.knobs[self.space.axis(name)] if self.space.has(name) else None
                if (
                    knob is None
                    or not isinstance(index, int)
                    or not knob.floor <= index <= knob.top
                ):
                    problems.append(f"pin {name}={index!r} does not fit the space; not pinned")
                    continue
                self.pinned[name] = index
        return restored, problems

    def _queue_baselines(self, saved: Any) -> dict[str, Baseline]:
        """Every queue's saved baseline; raises (naming the queue) unless all are there."""
        assert self.queues is not None
        if not isinstance(saved, Mapping):
            raise TypeError(f"per-model baselines: expected an object, got {type(saved).__name__}")
        missing = [q for q in self.queues if q not in saved]
        if missing:
            raise ValueError(f"no saved baseline for models {missing}")
        return {q: _baseline_of(saved[q], self.accounting.value) for q in self.queues}

    # -- internals ------------------------------------------------------------------------
    def _with_pins(self, config: Config) -> Config:
        for name, index in self.pinned.items():
            config = self.space.with_value(config, name, index)
        return config

    def _warmup_timed_out(self, now: float) -> bool:
        return (
            self.window_seconds is not None and now - self._changed_at >= 0.25 * self.window_seconds
        )

    def _switch(self, config: Config, now: float, meter_j: float) -> None:
        changed = config != self._config
        self._config = config
        self._changed_at = now
        self._window = None
        self._warmup_left = self.warmup_requests if changed or self.windows_closed == 0 else 0
        if self._warmup_left <= 0:
            self._open_window(now, meter_j)

    def _open_window(self, now: float, meter_j: float) -> None:
        self._window = _Window(opened_at=now, meter_at_open=meter_j, context=dict(self.context))

    def _maybe_close(self, now: float, meter_j: float) -> WindowReport | None:
        w = self._window
        assert w is not None
        n = len(w.latencies)
        full = self.window_requests is not None and n >= self.window_requests
        timed = (
            self.window_seconds is not None and now - w.opened_at >= self.window_seconds and n > 0
        )
        if not (full or timed):
            return None
        return self._close(now, meter_j)

    def _close(self, now: float, meter_j: float) -> WindowReport:
        w = self._window
        assert w is not None
        n = len(w.latencies)
        lat = sorted(w.latencies)
        total_j = max(0.0, meter_j - w.meter_at_open)
        energy = w.active_energy_j if self.accounting is EnergyAccounting.ACTIVE else total_j
        e_req = energy / n
        l_mean = sum(lat) / n
        duration = max(now - w.opened_at, 1e-9)
        phase = self.phase
        p = self.cost_model.slo_percentile
        measuring = phase == "baseline"
        parts = self._parts(w, total_j, n) if self.queues is not None else []
        model_costs: dict[str, float | None] = {}
        if measuring:
            # Start-up transients (cold caches, the first backlog) inflate the first
            # windows, so the baseline is the last of ``baseline_windows`` at maximum.
            self._baseline_windows_left -= 1
            cost = 1.0
            for name, n_i, e_i, lat_i, _ in parts:
                model_costs[name] = 1.0
                self._measured[name] = Baseline(
                    max(e_i / n_i, MIN_ENERGY_J),
                    max(sum(lat_i) / n_i, MIN_LATENCY_S),
                    self.accounting.value,
                )
            if self._baseline_windows_left <= 0:
                self.baseline = Baseline(
                    max(e_req, MIN_ENERGY_J), max(l_mean, MIN_LATENCY_S), self.accounting.value
                )
                self.baselines.update(self._measured)
                self._measured = {}
                self._remeasuring = False
                measuring = False
        else:
            assert self.baseline is not None
            for name, n_i, e_i, lat_i, part in parts:
                own = self.baselines.get(name)
                model = self.queue_costs[name]
                model_costs[name] = (
                    None
                    if own is None
                    else model.cost(
                        e_i / n_i,
                        sum(lat_i) / n_i,
                        own,
                        percentile(lat_i, model.slo_percentile),
                        error_rate=part.errors / n_i,
                    )
                )
            scored = [(n_i, model_costs[name]) for name, n_i, *_ in parts]
            known = [(n_i, c) for n_i, c in scored if c is not None]
            if known:
                cost = joint_cost(known)
            else:  # one anonymous queue, or no model has a baseline yet: all pooled
                cost = self.cost_model.cost(
                    e_req, l_mean, self.baseline, percentile(lat, p), error_rate=w.errors / n
                )
        rate = w.arrivals / duration
        metrics = {
            **self.context,
            "arrival_rate": rate,
            "energy_per_request_j": e_req,
            "latency_mean_s": l_mean,
            "requests": float(n),
            "arrivals": float(w.arrivals),
            # the rate of the seconds that had arrivals: bursts between idle gaps, undiluted
            "busy_rate": max(rate, w.busy_rate.rate() or 0.0),
            "window_s": duration,
            "batches": float(w.batches),
            "busy_s": w.busy_s,
            "loop_s": w.loop_s,
            # 1 for the window that set the baseline: its traffic may be the daemon's own
            # synthetic warm-up, not the load
            "baseline": 1.0 if phase == "baseline" else 0.0,
        }
        for name, n_i, *_ in parts:  # each model's own figures, for tuners that credit them
            metrics[f"requests:{name}"] = float(n_i)
            if (model_cost := model_costs[name]) is not None:
                metrics[f"cost:{name}"] = model_cost
        done_config = self._config
        self.windows_closed += 1
        if measuring:
            self._switch(self._config, now, meter_j)  # keep measuring at maximum
        else:
            self.tuner.tell(self._config, cost, metrics)
            self._switch(self._with_pins(self.tuner.ask()), now, meter_j)
        report = WindowReport(
            index=self.windows_closed - 1,
            phase=phase,
            config=done_config,
            values=self.space.values(done_config),
            requests=n,
            failed=w.failed,
            start=w.opened_at,
            end=now,
            energy_j=energy,
            energy_per_request_j=e_req,
            latency_mean_s=l_mean,
            latency_p50_s=percentile(lat, 50),
            latency_p95_s=percentile(lat, 95),
            latency_p99_s=percentile(lat, 99),
            arrival_rate=rate,
            cost=cost,
            accounting=self.accounting.value,
            next_config=self._config,
            error_rate=w.errors / n,
            per_model={
                name: ModelFigures(
                    requests=n_i,
                    failed=part.failed,
                    arrival_rate=part.arrivals / duration,
                    energy_j=e_i,
                    energy_per_request_j=e_i / n_i,
                    latency_mean_s=sum(lat_i) / n_i,
                    latency_p50_s=percentile(lat_i, 50),
                    latency_p95_s=percentile(lat_i, 95),
                    latency_p99_s=percentile(lat_i, 99),
                    cost=model_costs[name],
                    error_rate=part.errors / n_i,
                )
                for name, n_i, e_i, lat_i, part in parts
            },
        )
        self.reports.append(report)
        return report

    def _parts(
        self, w: _Window, total_j: float, n: int
    ) -> list[tuple[str, int, float, list[float], _Part]]:
        """Each queue that served requests: (name, requests, joules, sorted latencies, part).

        A batch's joules are its queue's; under ``total`` accounting the window's other
        joules (idle, between batches) are split by request share. One queue alone is given
        the window's energy as it is, so its figures are the pooled ones exactly.
        """
        assert self.queues is not None
        parts = w.parts
        served = [(q, parts[q]) for q in self.queues if q in parts and parts[q].latencies]
        active = self.accounting is EnergyAccounting.ACTIVE
        if len(served) == 1 and len(served[0][1].latencies) == n:
            q, part = served[0]
            energy = part.active_energy_j if active else total_j
            return [(q, n, energy, sorted(part.latencies), part)]
        idle_j = max(0.0, total_j - w.active_energy_j)
        out = []
        for q, part in served:
            n_i = len(part.latencies)
            energy = part.active_energy_j if active else part.active_energy_j + idle_j * n_i / n
            out.append((q, n_i, energy, sorted(part.latencies), part))
        return out
