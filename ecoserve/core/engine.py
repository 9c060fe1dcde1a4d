"""The engine: the batching policy and the controller as one sans-IO object with events.

A driver (the asyncio runtime, the virtual-time simulator) owns the clock, the device and the
model; the engine owns every decision. The driver tells it what happened and carries out what
it answers:

- :class:`~ecoserve.core.batching.Dispatch` (from :meth:`Engine.poll`): run these items now
  as one batch; :class:`~ecoserve.core.batching.WaitUntil`: nothing to run before a deadline.
- :class:`ApplyConfig`: put these knob values on the device (and hand ``governed`` knobs to
  the OS governors). The batch size is already in force in the engine's own queue.
- :class:`WindowClosed`: a window of requests was scored; its report, and the configuration
  the tuner chose next (an :class:`ApplyConfig` to carry out).

Because both drivers go through these three answers, neither works out on its own which
values to apply, when a batch leaves, or what a closed window means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ecoserve.core.batch_timer import BatchTimer
from ecoserve.core.batching import BatchPolicy, Dispatch, WaitUntil
from ecoserve.core.controller import BatchOutcome, Controller, WindowReport
from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner

T = TypeVar("T")


@dataclass(frozen=True)
class ApplyConfig:
    """Put these values on the device; knobs in ``governed`` go to the OS governors."""

    config: Config
    values: dict[str, float]
    governed: frozenset[str]


@dataclass(frozen=True)
class WindowClosed:
    """A window was scored (``report``); ``apply`` is the configuration to run next."""

    report: WindowReport
    apply: ApplyConfig


class Engine(Generic[T]):
    """One queue and one controller: the whole decision logic of a serving loop."""

    def __init__(
        self,
        controller: Controller,
        *,
        max_wait: float = 0.05,
        max_queue: int | None = 1024,
        tuner_factory: Callable[[SearchSpace], Tuner] | None = None,
        timer: BatchTimer | None = None,
    ) -> None:
        self.controller = controller
        #: The batching timer: ``max_wait`` fixed, unless a timer that follows the load is given.
        self.timer = timer if timer is not None else BatchTimer("fixed", max_wait)
        #: Builds the same kind of tuner on a smaller space, when a knob is frozen.
        self.tuner_factory = tuner_factory
        #: Knobs taken out of the space after their hardware failed, with the reason.
        self.frozen: dict[str, str] = {}
        self.policy: BatchPolicy[T] = BatchPolicy(
            controller.batch_size(),
            max_wait=self.timer.timer_s(controller.batch_size()),
            max_queue=max_queue,
        )

    # -- the queue --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.policy)

    @property
    def full(self) -> bool:
        return self.policy.full

    def arrive(self, item: T, now: float) -> None:
        """Queue one item; raises ``QueueFullError`` when the bound is reached."""
        self.policy.add(item, now)
        self.controller.on_arrival(now)

    def poll(self, now: float) -> Dispatch[T] | WaitUntil | None:
        """A batch to run now, a time to wake up, or None (empty queue)."""
        return self.policy.poll(now)

    def flush(self) -> Dispatch[T] | None:
        """The next batch regardless of the wait (draining at shutdown)."""
        return self.policy.flush()

    def discard(self, gone: Callable[[T], bool]) -> list[T]:
        """Drop queued items whose caller has gone; returns them."""
        return self.policy.discard(gone)

    # -- what happened ----------------------------------------------------------------------
    def start(self, now: float, meter_j: float) -> ApplyConfig:
        """The first configuration: every knob at maximum for the baseline, else the tuner's."""
        self.controller.start(now, meter_j)
        return self.current()

    def finish(self, outcome: BatchOutcome) -> WindowClosed | None:
        """A batch finished; returns the closed window when it closed one."""
        return self._closed(self.controller.on_batch(outcome))

    def tick(self, now: float, meter_j: float) -> WindowClosed | None:
        """Time passed with no batch: a timed window may close."""
        return self._closed(self.controller.tick(now, meter_j))

    def observe_context(
        self, values: Mapping[str, float], now: float, meter_j: float
    ) -> WindowClosed | None:
        """The driver's view of the environment (a link estimate) changed; see the controller."""
        return self._closed(self.controller.observe_context(values, now, meter_j))

    # -- run-time control -------------------------------------------------------------------
    def pin(self, values: Mapping[str, float], now: float, meter_j: float) -> ApplyConfig:
        """Hold some knobs at given values (nearest available); the tuner moves the rest."""
        self.controller.pin(values, now, meter_j)
        return self.current()

    def unpin(self, now: float, meter_j: float) -> ApplyConfig:
        self.controller.unpin(now, meter_j)
        return self.current()

    def set_tuner(self, tuner: Tuner, now: float, meter_j: float) -> ApplyConfig:
        self.controller.set_tuner(tuner, now, meter_j)
        return self.current()

    def freeze(self, name: str, reason: str, now: float, meter_j: float) -> ApplyConfig:
        """Knob ``name`` can no longer be set: the tuner goes on over the other knobs.

        The tuner is rebuilt on the smaller space (its learning over the old space does not
        carry over), so it never again asks for a value that cannot be applied.
        """
        self.frozen[name] = reason
        c = self.controller
        if c.space.has(name) and self.tuner_factory is not None:
            space = SearchSpace(tuple(k for k in c.space.knobs if k.name != name))
            c.drop_knob(name, self.tuner_factory(space), now, meter_j)
        return self.current()

    def remeasure_baseline(self, now: float, meter_j: float) -> ApplyConfig:
        """Measure E0/L0 again at maximum on the traffic that arrives from now on."""
        self.controller.remeasure_baseline(now, meter_j)
        return self.current()

    # -- answers ----------------------------------------------------------------------------
    def current(self) -> ApplyConfig:
        """The configuration in force, as an instruction; also sets the queue's batch size
        and its timer."""
        c = self.controller
        size = c.batch_size()
        self.policy.set_batch_size(size)
        self.policy.set_max_wait(self.timer.timer_s(size))
        return ApplyConfig(c.config, c.values(), c.governed_knobs())

    def _closed(self, report: WindowReport | None) -> WindowClosed | None:
        if report is None:
            return None
        self.timer.observe(report.arrival_rate)
        return WindowClosed(report, self.current())
