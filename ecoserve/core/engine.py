"""The engine: queues, batching and the controller as one sans-IO object that orders events.

A driver (the asyncio runtime, the virtual-time simulator) owns the clock, the device and the
model; the engine owns every decision *and their order*. The driver only tells it what
happened and carries out what it answers, in the style of h11:

- what happened: :meth:`Engine.arrive` (a request; the engine admits or refuses it),
  :meth:`Engine.batch_done` (a batch finished, with what the driver measured), and the time,
  meter reading and environment (``context``) handed to every :meth:`Engine.next`;
- what to do, one answer per :meth:`Engine.next` call:

  - :class:`~ecoserve.core.batching.Dispatch`: run these items now as one batch, under the
    configuration it names, then call :meth:`Engine.batch_done`;
  - :class:`WindowClosed`: a window was scored; its report (log it, show it);
  - :class:`ApplyConfig`: put these knob values on the device (``governed`` knobs go to the
    OS governors); the batch sizes are already in force in the engine's queues;
  - :class:`~ecoserve.core.batching.WaitUntil`: nothing to do before ``deadline`` unless a
    request arrives; call :meth:`Engine.next` again then;
  - :class:`Drained`: nothing is queued and nothing more will come: the loop may end.

Answers that follow from an event (a window closing after a batch, the configuration after a
window) wait in the engine's outbox and come out, in order, from the next calls to
:meth:`Engine.next`, before any new batch. An :class:`ApplyConfig` is built when it is handed
out, so it always carries the configuration in force then (never one a pin has replaced
meanwhile). Run-time control (``pin``, ``unpin``, ``set_tuner``, ``freeze``, ``hold``,
``remeasure_baseline``) answers its :class:`ApplyConfig` at once: its caller applies it.

The engine holds one request queue per served model, each with its own batch-size knob and
batching timer, and one controller (one tuner) for the device's clock knobs they share. A
batch is one queue's: among the queues whose batch is due, the one whose oldest request
arrived first goes. A controller that scores its queues jointly (``Controller(queues=...)``)
must score exactly the engine's queues, each batch knob in its space.

Background work (``harvest``, a :class:`~ecoserve.core.harvest.HarvestPolicy`) takes the slot
:meth:`Engine.next` would otherwise answer with ``WaitUntil``, when the policy allows it:
:class:`RunBackground` asks for one step, then :meth:`Engine.background_done`. Requests that
arrive meanwhile queue; the next answer after a step is a batch if one is due (serving takes
the board back at every step boundary). The slot's clocks go on the device as an
:class:`ApplyConfig` marked ``background`` before its step, and the serving configuration goes
back before the next batch; each switch between the two is counted. The step's joules are
taken out of the meter readings the controller sees, so serving is tuned on serving's joules.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Generic, TypeVar

from ecoserve.core.batch_timer import BatchTimer
from ecoserve.core.batching import BatchPolicy, Dispatch, WaitUntil
from ecoserve.core.controller import DEFAULT_QUEUE, BatchOutcome, Controller, WindowReport
from ecoserve.core.cost import Baseline
from ecoserve.core.harvest import HarvestPolicy, StepOutcome
from ecoserve.core.knobs import BATCH, SearchSpace, model_batch_knob
from ecoserve.core.tuner import Tuner

T = TypeVar("T")


@dataclass(frozen=True)
class ApplyConfig:
    """Put these values on the device; knobs in ``governed`` go to the OS governors.

    ``background``: the background slot's clocks, in force until serving's come back (not
    the serving configuration: status pages should not show them as such).
    """

    values: dict[str, float]
    governed: frozenset[str]
    background: bool = False


@dataclass(frozen=True)
class RunBackground:
    """Run one background step of ``micro_batch`` items, then call ``background_done``.

    ``values``: the slot's knob values (loader workers, and its clocks, already applied);
    ``expected_s``: the step's expected seconds.
    """

    micro_batch: int
    values: dict[str, float]
    expected_s: float


@dataclass(frozen=True)
class WindowClosed:
    """A window was scored; the configuration chosen next follows as an :class:`ApplyConfig`."""

    report: WindowReport


@dataclass(frozen=True)
class Drained:
    """Nothing queued, nothing in the outbox, and no more requests will come."""


class Admission(Enum):
    """What :meth:`Engine.arrive` did with a request."""

    ACCEPTED = "accepted"
    QUEUE_FULL = "queue_full"
    CLOSED = "closed"


@dataclass(frozen=True)
class QueueSpec:
    """One request queue: its name and the knob that sets its batch size.

    For a model on a shared board (``build_engine(queues=...)``) also its batch-size bounds,
    its latency target in SLO mode, the longest its oldest request waits for a batch to fill,
    and the batch sizes it prefers (a Triton ``dynamic_batching`` block: the knob then takes
    those and ``max_batch`` only); None takes the engine settings' own.
    """

    name: str = DEFAULT_QUEUE
    batch_knob: str = BATCH
    max_batch: int | None = None
    min_batch: int | None = None
    slo_latency_s: float | None = None
    max_wait_s: float | None = None
    batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.batch_knob:
            raise ValueError(f"a queue needs a name and a batch knob name, got {self}")
        lo, hi = self.min_batch, self.max_batch
        if (lo is not None and lo < 1) or (hi is not None and hi < max(1, lo or 1)):
            raise ValueError(
                f"queue {self.name!r}: batch sizes need 1 <= min_batch ({lo}) <= max_batch ({hi})"
            )
        if self.slo_latency_s is not None and not self.slo_latency_s > 0:
            raise ValueError(
                f"queue {self.name!r}: slo_latency_s must be > 0 seconds, got {self.slo_latency_s}"
            )
        if self.max_wait_s is not None and not self.max_wait_s >= 0:
            raise ValueError(
                f"queue {self.name!r}: max_wait_s must be >= 0 seconds, got {self.max_wait_s}"
            )
        if self.batch_sizes is not None and (
            not self.batch_sizes
            or min(self.batch_sizes) < 1
            or (hi is not None and max(self.batch_sizes) > hi)
        ):
            raise ValueError(
                f"queue {self.name!r}: batch_sizes {self.batch_sizes} must be 1..max_batch ({hi})"
            )

    @classmethod
    def for_model(
        cls,
        model: str,
        *,
        max_batch: int | None = None,
        min_batch: int | None = None,
        slo_latency_s: float | None = None,
        max_wait_s: float | None = None,
        batch_sizes: tuple[int, ...] | None = None,
    ) -> QueueSpec:
        """Model ``model``'s queue, tuned by its own knob ``batch_size:<model>``."""
        return cls(
            model,
            model_batch_knob(model),
            max_batch,
            min_batch,
            slo_latency_s,
            max_wait_s,
            batch_sizes,
        )


Answer = Dispatch[T] | WindowClosed | ApplyConfig | WaitUntil | Drained | RunBackground

#: Reads the driver's view of its environment (a link estimate) at a time.
Context = Callable[[float], Mapping[str, float]]


class _Queue(Generic[T]):
    """A queue's batching policy, its timer, and its arrivals since the last window closed."""

    __slots__ = ("spec", "policy", "timer", "arrived")

    def __init__(self, spec: QueueSpec, timer: BatchTimer, max_queue: int | None) -> None:
        self.spec = spec
        self.timer = timer
        self.policy: BatchPolicy[T] = BatchPolicy(
            1, max_wait=timer.ceiling_s, max_queue=max_queue, name=spec.name
        )
        self.arrived = 0


#: The one instance an answer needs; ``Drained`` carries nothing.
_DRAINED = Drained()


class Engine(Generic[T]):
    """Every decision of a serving loop, and the order in which a driver carries them out."""

    def __init__(
        self,
        controller: Controller,
        *,
        max_wait: float = 0.05,
        max_queue: int | None = 1024,
        tuner_factory: Callable[[SearchSpace], Tuner] | None = None,
        timer_kind: str = "fixed",
        queues: Sequence[QueueSpec] = (QueueSpec(),),
        tick_s: float = 0.5,
        harvest: HarvestPolicy | None = None,
    ) -> None:
        if not queues:
            raise ValueError("an engine needs at least one queue")
        names = [q.name for q in queues]
        if len(set(names)) != len(names):
            raise ValueError(f"queue names must differ, got {names}")
        if not tick_s > 0:
            raise ValueError(f"tick_s must be > 0 seconds, got {tick_s}")
        scored = controller.queues
        if scored is not None:
            if set(scored) != set(names):
                raise ValueError(
                    f"the controller scores queues {sorted(scored)}, the engine has "
                    f"{sorted(names)}: build both from the same queue specs"
                )
            absent = [q.batch_knob for q in queues if not controller.space.has(q.batch_knob)]
            if absent:
                raise ValueError(
                    f"batch knobs {absent} are not in the search space "
                    f"({controller.space.describe()})"
                )
        self._controller = controller
        #: Builds the same kind of tuner on a smaller space, when a knob is frozen.
        self._tuner_factory = tuner_factory
        #: How long the engine lets pass without a look at timed windows when idle.
        self.tick_s = float(tick_s)
        #: Knobs taken out of the space after their hardware failed, with the reason.
        self.frozen: dict[str, str] = {}
        self._queues: dict[str, _Queue[T]] = {
            q.name: _Queue(
                q,
                BatchTimer(timer_kind, max_wait if q.max_wait_s is None else q.max_wait_s),
                max_queue,
            )
            for q in queues
        }
        # One queue is the common case; its hot path skips the choice between queues.
        self._only: _Queue[T] | None = (
            next(iter(self._queues.values())) if len(queues) == 1 else None
        )
        self._outbox: deque[WindowClosed | None] = deque()  # None: the config in force
        self._admitting = False
        self._running = False  # a batch dispatched whose batch_done has not come
        #: The background slot's policy, or None: no background work.
        self.harvest = harvest
        self._stepping = False  # a step handed out whose background_done has not come
        self._slot_clocks: dict[str, float] | None = None  # the slot's clocks, while in force
        self._held: Dispatch[T] | RunBackground | None = None  # what follows a clock switch
        self._background_j = 0.0  # the steps' joules, kept out of the controller's meter
        self._sync_queues()

    # -- what happened ----------------------------------------------------------------------
    def start(self, now: float, meter_j: float) -> ApplyConfig:
        """Open admission; the first configuration (every knob at maximum for the baseline)."""
        self._controller.start(now, meter_j)
        self._admitting = True
        return self._apply_now()

    def close(self) -> None:
        """Refuse new requests from now on; :meth:`next` drains what is queued, at once."""
        self._admitting = False

    @property
    def admitting(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._admitting

    def arrive(self, item: T, now: float, queue: str = DEFAULT_QUEUE) -> Admission:
        """A request arrived for ``queue``: queued, or refused (full, or admission closed)."""
        if not self._admitting:
            return Admission.CLOSED
        q = self._only
        if q is None or queue != q.spec.name:
            q = self._queue(queue)
        if not q.policy.offer(item, now):
            return Admission.QUEUE_FULL
        q.arrived += 1
        self._controller.on_arrival(now, q.spec.name)
        if self.harvest is not None:
            self.harvest.on_arrival(now)
        return Admission.ACCEPTED

    def discard(self, gone: Callable[[T], bool]) -> list[T]:
        """Requests whose caller has gone leave the queues unrun; returns them."""
        dropped: list[T] = []
        for q in self._queues.values():
            dropped += q.policy.discard(gone)
        return dropped

    def batch_done(self, outcome: BatchOutcome, context: Context | None = None) -> None:
        """The batch last dispatched finished; the environment (``context``) is looked at after it.

        A window it closes, and the configuration chosen next, wait in the outbox.
        """
        self._running = False
        c = self._controller
        if self._background_j:
            outcome = replace(outcome, meter_j=outcome.meter_j - self._background_j)
        self._closed(c.on_batch(outcome))
        if context is not None:
            self._closed(c.observe_context(context(outcome.end), outcome.end, outcome.meter_j))

    def background_done(self, outcome: StepOutcome) -> None:
        """The background step last handed out finished (or failed), as the driver measured."""
        if not self._stepping or self.harvest is None:
            raise RuntimeError("background_done() without a background step running")
        self._stepping = False
        self._background_j += max(0.0, outcome.energy_j)
        self.harvest.step_done(outcome)

    # -- what to do -------------------------------------------------------------------------
    def next(
        self,
        now: float,
        meter_j: float,
        context: Context | None = None,
        *,
        arrivals_over: bool = False,
    ) -> Answer[T]:
        """The next thing to do at ``now`` (``meter_j``: the meter's cumulative joules).

        In order: what an earlier event left in the outbox; a batch that is due (any batch,
        without waiting, once admission is closed); :class:`Drained` when nothing is queued and
        nothing more will come (``arrivals_over``, or admission closed); the environment
        and the passing of time, which may close a window; else how long to wait.

        ``context`` reads the driver's view of its environment (a link estimate) at a time;
        the engine calls it after every batch and whenever the loop is idle, never otherwise
        (reading it may cost a probe).
        """
        if self._outbox:
            return self._pop()
        if self._running:
            raise RuntimeError("a batch is running: call batch_done() before next()")
        if self._stepping:
            raise RuntimeError("a background step is running: call background_done() first")
        held = self._held
        if held is not None:  # its clocks were applied by the last answer
            self._held = None
            if isinstance(held, RunBackground):
                self._stepping = True
            else:
                self._running = True
            return held
        meter_j -= self._background_j
        draining = not self._admitting
        action = self._poll(now, draining)
        if isinstance(action, Dispatch):
            if self._slot_clocks is not None:  # serving's clocks go back first
                self._held = action
                return self._serving_clocks()
            self._running = True
            return action
        if action is None and (arrivals_over or draining):
            if self._slot_clocks is not None:
                return self._serving_clocks()
            return _DRAINED
        c = self._controller
        if context is not None:
            self._closed(c.observe_context(context(now), now, meter_j))
        if not self._outbox:
            self._closed(c.tick(now, meter_j))
        if self._outbox:
            return self._pop()
        if self.harvest is not None and not draining:
            step = self._background(now, action)
            if step is not None:
                return step
        wake = now + self.tick_s
        if action is not None and action.deadline < wake:
            return action
        return WaitUntil(wake)

    def _background(self, now: float, waiting: WaitUntil | None) -> Answer[T] | None:
        """A step the slot's policy allows now (its clocks first, when they differ)."""
        harvest = self.harvest
        assert harvest is not None
        only = self._only
        if only is not None:
            policy = only.policy
            missing, timer_s = policy.batch_size - len(policy), policy.max_wait
        else:
            queues = [q.policy for q in self._queues.values()]
            missing = min(p.batch_size - len(p) for p in queues)
            timer_s = min(p.max_wait for p in queues)
        due_at = None if waiting is None else waiting.deadline
        step = harvest.offer(now, due_at, max(1, missing), timer_s)
        if step is None:
            return None
        run = RunBackground(step.micro_batch, step.values, step.expected_s)
        if not harvest.settings.own_clocks:
            self._stepping = True
            return run
        space = self._controller.space
        clocks = {k: step.values[k] for k in harvest.clock_knobs if space.has(k)}
        if not clocks or clocks == self._slot_clocks:
            self._stepping = True
            return run
        if self._slot_clocks is None:
            harvest.figures.clock_switches += 1
        self._slot_clocks = clocks
        self._held = run
        return ApplyConfig(dict(clocks), frozenset(), background=True)

    def _serving_clocks(self) -> ApplyConfig:
        """Serving's configuration back on the device after background steps."""
        self._leave_slot_clocks()
        c = self._controller
        return ApplyConfig(c.values(), c.governed_knobs())

    def _leave_slot_clocks(self) -> None:
        """Serving's clocks go back on the device: a switch, if the slot's were in force."""
        if self._slot_clocks is not None:
            assert self.harvest is not None
            self.harvest.figures.clock_switches += 1
            self._slot_clocks = None

    def _poll(self, now: float, draining: bool) -> Dispatch[T] | WaitUntil | None:
        """The batch due now, else the earliest deadline (None: every queue is empty)."""
        only = self._only
        if only is not None:
            policy = only.policy
            return policy.flush() if draining else policy.poll(now)
        first: _Queue[T] | None = None
        first_arrival = math.inf
        wake: WaitUntil | None = None
        for q in self._queues.values():
            oldest = q.policy.oldest_arrival()
            if oldest is None:
                continue
            deadline = q.policy.due(now)
            if draining or deadline <= now:
                if oldest < first_arrival:
                    first, first_arrival = q, oldest
            elif wake is None or deadline < wake.deadline:
                wake = WaitUntil(deadline)
        if first is not None:
            return first.policy.flush()
        return wake

    def _queue(self, name: str) -> _Queue[T]:
        try:
            return self._queues[name]
        except KeyError:
            known = ", ".join(sorted(self._queues))
            raise ValueError(f"no queue named {name!r}; the engine's queues: {known}") from None

    # -- run-time control -------------------------------------------------------------------
    def pin(self, values: Mapping[str, float], now: float, meter_j: float) -> ApplyConfig:
        """Hold some knobs at given values (nearest available); the tuner moves the rest."""
        self._controller.pin(values, now, meter_j - self._background_j)
        return self._apply_now()

    def unpin(self, now: float, meter_j: float) -> ApplyConfig:
        self._controller.unpin(now, meter_j - self._background_j)
        return self._apply_now()

    def hold(self, now: float, meter_j: float) -> ApplyConfig:
        """Pin the configuration in force (the meter failed: no tuning on invented joules)."""
        return self.pin(self._controller.values(), now, meter_j)

    def set_tuner(self, tuner: Tuner, now: float, meter_j: float) -> ApplyConfig:
        self._controller.set_tuner(tuner, now, meter_j - self._background_j)
        return self._apply_now()

    def make_tuner(self, build: Callable[[SearchSpace], Tuner]) -> Tuner:
        """A tuner built on the engine's current search space (for :meth:`set_tuner`)."""
        return build(self._controller.space)

    def freeze(self, name: str, reason: str, now: float, meter_j: float) -> ApplyConfig:
        """Knob ``name`` can no longer be set: the tuner goes on over the other knobs.

        The tuner is rebuilt on the smaller space (its learning over the old space does not
        carry over), so it never again asks for a value that cannot be applied.
        """
        self.frozen[name] = reason
        c = self._controller
        if c.space.has(name) and self._tuner_factory is not None:
            space = SearchSpace(tuple(k for k in c.space.knobs if k.name != name))
            c.drop_knob(name, self._tuner_factory(space), now, meter_j - self._background_j)
        return self._apply_now()

    def remeasure_baseline(self, now: float, meter_j: float) -> ApplyConfig:
        """Measure E0/L0 again at maximum on the traffic that arrives from now on."""
        self._controller.remeasure_baseline(now, meter_j - self._background_j)
        return self._apply_now()

    # -- what a face may read ---------------------------------------------------------------
    def __len__(self) -> int:
        """Requests queued, over every queue."""
        only = self._only
        if only is not None:
            return len(only.policy)
        return sum(len(q.policy) for q in self._queues.values())

    @property
    def space(self) -> SearchSpace:
        return self._controller.space

    @property
    def phase(self) -> str:
        """``baseline`` while E0/L0 are measured, else ``tuning``."""
        return self._controller.phase

    @property
    def ready(self) -> bool:
        return self._controller.ready

    @property
    def baseline(self) -> Baseline | None:
        return self._controller.baseline

    @property
    def baselines(self) -> Mapping[str, Baseline]:
        """Each model's baseline by queue, when the queues are scored jointly (else empty)."""
        return self._controller.baselines

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The engine's queues, in the order they were given."""
        return tuple(self._queues)

    @property
    def tuner(self) -> Tuner:
        return self._controller.tuner

    @property
    def accounting(self) -> str:
        return self._controller.accounting.value

    @property
    def windows_closed(self) -> int:
        return self._controller.windows_closed

    @property
    def reports(self) -> Sequence[WindowReport]:
        """The most recent window reports, oldest first."""
        return self._controller.reports

    def values(self) -> dict[str, float]:
        """The configuration in force, knob by knob."""
        return self._controller.values()

    def batch_size(self, queue: str = DEFAULT_QUEUE) -> int:
        return self._queue(queue).policy.batch_size

    def tunes(self, knob: str) -> bool:
        """True while ``knob`` is in the tuner's search space."""
        return self._controller.space.has(knob)

    def pinned_values(self) -> dict[str, float]:
        """Knobs held by a pin, at the values they are held at."""
        c = self._controller
        return {n: c.space.knobs[c.space.axis(n)].values[i] for n, i in c.pinned.items()}

    def tuner_phase(self) -> str:
        """``baseline`` while E0/L0 are measured, ``pinned`` while a knob is held, else what
        the tuner says it is doing (EcoGD: scan, climb, probe, settled), or ``tuning``."""
        c = self._controller
        if c.phase == "baseline":
            return "baseline"
        if c.pinned:
            return "pinned"
        return str(c.tuner.describe().get("phase", "tuning"))

    def batch_timers(self) -> dict[str, dict[str, Any]]:
        """Each queue's batching timer: kind, the timer in force, ceiling, last rate."""
        return {
            name: {
                "kind": q.timer.kind,
                "timer_s": q.policy.max_wait,
                "ceiling_s": q.timer.ceiling_s,
                "arrival_rate": q.timer.rate,
            }
            for name, q in self._queues.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: tuner state, baseline, pins, window count (JSON-ready)."""
        return self._controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Resume a saved state before ``start``; returns (what was restored, problems)."""
        restored = self._controller.load_state_dict(state)
        self._sync_queues()
        return restored

    # -- answers ----------------------------------------------------------------------------
    def _sync_queues(self) -> None:
        """Put the configuration's batch sizes and their timers on the queues."""
        c = self._controller
        values = c.values()
        for q in self._queues.values():
            size = int(values.get(q.spec.batch_knob, 1))
            q.policy.set_batch_size(size)
            q.policy.set_max_wait(q.timer.timer_s(size))
            q.policy.config = c.config

    def _apply_now(self) -> ApplyConfig:
        self._sync_queues()
        self._leave_slot_clocks()  # its caller puts serving's configuration on the device
        if isinstance(self._held, RunBackground):  # its clocks are gone: it does not run
            self._held = None
            assert self.harvest is not None
            self.harvest.cancel()
        c = self._controller
        return ApplyConfig(c.values(), c.governed_knobs())

    def _pop(self) -> WindowClosed | ApplyConfig:
        closed = self._outbox.popleft()
        if closed is None:
            self._leave_slot_clocks()
            c = self._controller
            return ApplyConfig(c.values(), c.governed_knobs())
        return closed

    def _closed(self, report: WindowReport | None) -> None:
        """A window closed: each queue's timer learns its rate; report, then apply, queued."""
        if report is None:
            return
        total = sum(q.arrived for q in self._queues.values())
        for q in self._queues.values():
            share = q.arrived / total if total else 1.0
            q.timer.observe(report.arrival_rate * share)
            q.arrived = 0
        self._sync_queues()
        self._outbox.append(WindowClosed(report))
        self._outbox.append(None)
