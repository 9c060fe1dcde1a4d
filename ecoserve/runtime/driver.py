"""The asyncio runtime: drives the sans-IO engine in real time, on a real (or virtual) device.

Requests are queued in the ``Engine`` with their arrival time; one dispatcher task asks it
what to do, runs each batch of the user's function in a worker thread (or awaits it, for an
``async def`` function), measures the batch's energy through the device's ``PowerMeter``,
resolves every caller's own future, and tells the engine how the batch went. When the engine
answers ``ApplyConfig`` (at start, after a window, after a pin or a tuner switch), the values
are written to the device's actuator. Everything a face (the decorator, the HTTP server) does
to the engine goes through this class's methods.

One batch runs at a time: an edge box has one accelerator, and overlapping batches would
blur the energy measured for each. Background steps (an engine with a harvest policy answers
``RunBackground``) run the same way: the ``background`` step function in the worker thread,
timed and metered like a batch, between batches and never beside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from devices.base import Actuator, Device, TransientDeviceError
from devices.safety import Guard
from ecoserve.core.batching import Dispatch, QueueFullError
from ecoserve.core.controller import BatchOutcome, WindowReport
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import (
    DEFAULT_QUEUE,
    Admission,
    ApplyConfig,
    Drained,
    Engine,
    RunBackground,
    WindowClosed,
)
from ecoserve.core.harvest import StepOutcome
from ecoserve.core.knobs import SearchSpace
from ecoserve.core.tuner import Tuner
from ecoserve.runtime.collate import collate, split
from ecoserve.runtime.tuning_state import TuningState

log = logging.getLogger("ecoserve.runtime.driver")

BatchFunction = Callable[[Any], Any]
#: One background step: (micro-batch, the slot's knob values) -> items done (an int, an
#: object with ``items`` and optionally ``done``, or None for ``micro_batch`` items).
BackgroundStep = Callable[[int, Mapping[str, float]], Any]
#: One batch function, or one per engine queue (a board serving several models).
BatchFunctions = BatchFunction | Mapping[str, BatchFunction]


class RuntimeStoppedError(RuntimeError):
    """The runtime is stopping or stopped and accepts no new work."""


@dataclass
class _Request:
    item: Any
    future: asyncio.Future[Any]
    arrival: float


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_wait_s: list[float]
    latencies_s: list[float]
    run_s: float
    energy_j: float
    ok: bool
    #: The engine queue (the model) the batch came from.
    queue: str = DEFAULT_QUEUE


class RuntimeObserver:
    """Hooks for metrics and logs; every method is optional."""

    def on_batch(self, stats: BatchStats) -> None: ...

    def on_window(self, report: WindowReport) -> None: ...

    def on_reject(self, reason: str) -> None: ...

    def on_config(self, values: dict[str, float]) -> None: ...

    def on_fault(self, where: str, reason: str) -> None: ...


@dataclass
class RuntimeCounters:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0


class Runtime:
    def __init__(
        self,
        fn: BatchFunctions,
        device: Device,
        engine: Engine[_Request],
        observer: RuntimeObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_inline: bool = False,
        guard: Guard | None = None,
        state: TuningState | None = None,
        extra_actuator: Actuator | None = None,
        context_source: Callable[[], Mapping[str, float]] | None = None,
        error_source: Callable[[], float] | None = None,
        background: BackgroundStep | None = None,
        cpu_clock: Callable[[], float] | None = time.thread_time,
    ) -> None:
        if (engine.harvest is None) != (background is None):
            raise ValueError(
                "a background step function and an engine with a background slot go together: "
                "give both (build_engine(..., harvest=...)) or neither"
            )
        # Each engine queue's batch function, and whether it is ``async def``.
        fns = dict(fn) if isinstance(fn, Mapping) else {DEFAULT_QUEUE: fn}
        self._fns = {q: (f, inspect.iscoroutinefunction(f)) for q, f in fns.items()}
        self.device = device
        self.engine = engine
        self.observer = observer or RuntimeObserver()
        self.clock = clock
        # A loop that serves nothing else (the decorator's private thread) can run the
        # batch and the knob writes itself and save a thread hop; a server's loop must stay
        # free for sockets.
        self.run_inline = run_inline
        # Fed whenever the loop makes progress: with a watchdog, a hung loop hands the
        # clocks back to the governors.
        self._heartbeat = guard.feed if guard is not None else (lambda: None)
        # Where the tuner state is saved after each window and at stop, resumed from now.
        self._state = state
        #: What was resumed from the state file (``baseline``, ``tuner``, ...).
        self.resumed: list[str] = state.resume(engine) if state is not None else []
        # Knobs of this process rather than the device (the tier knob), applied with the rest.
        self.extra_actuator = extra_actuator
        # What the batch function knows of its environment (a link estimate) and the answers
        # it estimates wrong (a cascade), told to the engine after every batch.
        self._context = None if context_source is None else (lambda now: context_source())
        self.error_source = error_source
        self._background = background
        self.counters = RuntimeCounters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecoserve-batch")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._in_flight = 0
        # The loop thread's CPU clock (None under a virtual clock, whose seconds are not the
        # CPU's: the loop's part is then 0, as in the simulator), and its reading when the
        # last batch ended, less what ran inline since (``_off_loop_cpu``): the difference at
        # the next batch's end is the loop's part of that batch.
        self._cpu_clock: Callable[[], float] = cpu_clock or (lambda: 0.0)
        self._loop_cpu = 0.0
        self._last_energy = 0.0
        self._hold = False
        # Pins in force before a meter fault held the configuration, put back once it heals.
        self._held_pins: dict[str, float] | None = None
        # A configuration that failed for want of descriptors: applied again a second later.
        self._retry: ApplyConfig | None = None
        self._retry_at = 0.0
        #: Why the power meter stopped answering, while it does (energy then stays put).
        self.meter_fault: str | None = None
        #: Errors the dispatch loop survived (a tuner or controller that raised).
        self.loop_errors = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        now = self.clock()
        self._loop_cpu = self._cpu_clock()
        await self._apply(self.engine.start(now, self._energy()))
        self._task = asyncio.create_task(self._dispatch_loop(), name="ecoserve-dispatch")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting work; with ``drain``, finish every accepted request first."""
        self.engine.close()
        if self._task is None:
            return
        if not drain:
            for req in self.engine.discard(lambda r: True):
                if not req.future.done():
                    req.future.set_exception(
                        RuntimeStoppedError("runtime stopped before this request ran")
                    )
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._executor.shutdown(wait=True)
        self.save_state()

    @property
    def accepting(self) -> bool:
        return self.engine.admitting

    @property
    def queue_depth(self) -> int:
        return len(self.engine)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- requests -------------------------------------------------------------------------
    def submit_nowait(self, item: Any, queue: str = DEFAULT_QUEUE) -> asyncio.Future[Any]:
        """Queue one item on ``queue`` (its model's); the future resolves to the item's result."""
        loop = asyncio.get_running_loop()
        req = _Request(item=item, future=loop.create_future(), arrival=self.clock())
        verdict = self.engine.arrive(req, req.arrival, queue)
        if verdict is Admission.CLOSED:
            self._reject("stopping")
            raise RuntimeStoppedError("not accepting requests (stopping or not started)")
        if verdict is Admission.QUEUE_FULL:
            self._reject("queue_full")
            raise QueueFullError(f"queue is full ({len(self.engine)} waiting)")
        self.counters.accepted += 1
        self._wake.set()
        return req.future

    async def submit(self, item: Any, queue: str = DEFAULT_QUEUE) -> Any:
        return await self.submit_nowait(item, queue)

    def _reject(self, reason: str) -> None:
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1
        self.observer.on_reject(reason)

    # -- the dispatcher -------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except Exception as exc:  # a tuner, controller or meter fault must not end serving
                self.loop_errors += 1
                self._fault("engine", type(exc).__name__, f"dispatch loop survived: {exc!r}")
                log.exception("dispatch loop error (serving goes on)")
                await asyncio.sleep(0.05)

    async def _step(self) -> bool:
        """Carry out the engine's next answer; True once it says the queue is drained."""
        self._heartbeat()
        self._wake.clear()
        now = self.clock()
        if self._hold:  # the meter failed: hold the configuration rather than tune blind
            self._hold = False
            self._held_pins = self.engine.pinned_values()
            await self._apply(self.engine.hold(now, self._energy()))
        elif self._held_pins is not None and self.meter_fault is None:  # it answers again
            pins, self._held_pins = self._held_pins, None
            await self._apply(self.engine.unpin(now, self._energy()))
            if pins:
                await self._apply(self.engine.pin(pins, now, self._energy()))
        if self._retry is not None and now >= self._retry_at:
            retry, self._retry = self._retry, None
            await self._apply(retry)
        self.engine.discard(lambda r: r.future.done())  # callers that gave up
        action = self.engine.next(now, self._energy(), self._context)
        if isinstance(action, Dispatch):
            await self._run_batch(action)
        elif isinstance(action, RunBackground):
            await self._run_step(action)
        elif isinstance(action, WindowClosed):
            self._on_window(action.report)
        elif isinstance(action, ApplyConfig):
            await self._apply(action)
        elif isinstance(action, Drained):
            return True
        else:
            until = action.deadline if self._retry is None else min(action.deadline, self._retry_at)
            await self._wait_for_wake(max(0.0, until - now))
        return False

    async def _wait_for_wake(self, timeout: float) -> None:
        """Until a request (or a stop) wakes the loop, or ``timeout`` seconds pass.

        A timer sets the same event at the deadline: ``asyncio.wait_for`` would make a task
        and a timeout future for every wait, and the loop waits between most batches.
        """
        timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _run_batch(self, batch: Dispatch[_Request]) -> None:
        loop = asyncio.get_running_loop()
        requests = batch.items
        self._in_flight = len(requests)
        started = self.clock()
        energy_before = self._energy()
        error: BaseException | None = None
        results: list[Any] = []
        fn, is_async = self._fns[batch.queue]
        try:
            inputs = collate([r.item for r in requests])
            self.device.begin_batch(len(requests))
            t0 = time.perf_counter()
            if is_async:
                output = await fn(inputs)
            elif self.run_inline:
                output = self._off_loop_cpu(fn, inputs)
            else:
                output = await loop.run_in_executor(self._executor, fn, inputs)
            measured = time.perf_counter() - t0
            extra = self.device.end_batch(len(requests), measured)
            if extra > 0:
                await asyncio.sleep(extra)
            results = split(output, len(requests))
        except Exception as exc:  # the user's function failed: only this batch's callers see it
            error = exc
        finally:
            self.device.batch_done()
        energy_after = self._energy()
        end = self.clock()
        loop_cpu = self._cpu_clock()
        loop_s, self._loop_cpu = loop_cpu - self._loop_cpu, loop_cpu
        self._in_flight = 0
        latencies = []
        for i, req in enumerate(requests):
            if req.future.done():
                continue
            if error is None:
                req.future.set_result(results[i])
                latencies.append(end - req.arrival)
            else:
                req.future.set_exception(error)
        ok = error is None
        if ok:
            self.counters.completed += len(latencies)
        else:
            self.counters.failed += len(requests)
            log.warning("batch of %d failed: %s", len(requests), error)
        self.counters.batches += 1
        energy = max(0.0, energy_after - energy_before)
        errors = 0.0
        try:
            if self.error_source is not None:
                errors = self.error_source()
        finally:  # the engine hears of every batch it dispatched, or it would wait for it
            self.engine.batch_done(
                BatchOutcome(
                    config=batch.config,
                    latencies=latencies,
                    energy_j=energy if ok else 0.0,
                    end=end,
                    meter_j=energy_after,
                    failed=0 if ok else len(requests),
                    errors=errors,
                    busy_s=end - started,
                    loop_s=loop_s,
                    queue=batch.queue,
                ),
                self._context,
            )
        self.observer.on_batch(
            BatchStats(
                size=len(requests),
                queue_wait_s=[started - a for a in batch.arrivals],
                latencies_s=latencies,
                run_s=end - started,
                energy_j=energy,
                ok=ok,
                queue=batch.queue,
            )
        )

    def _off_loop_cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the loop's thread, its CPU time kept out of the next batch's
        ``loop_s``: a model call or a background step run inline is not the loop's work."""
        before = self._cpu_clock()
        try:
            return fn(*args)
        finally:
            self._loop_cpu += self._cpu_clock() - before

    async def _run_step(self, step: RunBackground) -> None:
        """Run one background step in the worker thread; the engine hears how it went."""
        fn = self._background
        assert fn is not None
        started, before = self.clock(), self._energy()
        items, done, failed = step.micro_batch, False, False
        try:
            if self.run_inline:
                result = self._off_loop_cpu(fn, step.micro_batch, step.values)
                await asyncio.sleep(0)  # back to the loop between steps: its callers get in
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._executor, fn, step.micro_batch, step.values
                )
            if inspect.isawaitable(result):
                result = await result
            items, done = _step_items(result, step.micro_batch)
        except Exception as exc:  # the job failed: serving goes on, the slot counts it
            failed = True
            self._fault("background", type(exc).__name__, f"background step failed: {exc!r}")
        after, end = self._energy(), self.clock()
        self.engine.background_done(
            StepOutcome(
                items=0 if failed else items,
                energy_j=max(0.0, after - before),
                busy_s=end - started,
                end=end,
                meter_j=after,
                failed=failed,
                done=done,
            )
        )

    def _on_window(self, report: WindowReport) -> None:
        self.observer.on_window(report)
        self.save_state()
        log.info(
            "window %d (%s): cost %.3f  E/req %.4f J  L %.1f ms  -> %s",
            report.index,
            report.phase,
            report.cost,
            report.energy_per_request_j,
            report.latency_mean_s * 1e3,
            self.engine.space.values(report.next_config),
        )

    async def _apply(self, action: ApplyConfig) -> None:
        """Carry out the engine's ``ApplyConfig``: write the knobs through the actuator.

        A knob whose write fails is frozen by its actuator; the engine then takes it out of
        the tuner's space and the rest is applied again. Observers see only the values that
        were applied.
        """
        values, governed = action.values, action.governed
        applied = True
        try:
            if self.run_inline:
                self.device.actuator.apply(values, governed)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: self.device.actuator.apply(values, governed)
                )
            if self.extra_actuator is not None:
                self.extra_actuator.apply(values, governed)
        except Exception as exc:  # an actuator that raised instead of freezing a knob
            applied = False
            self._fault("actuator", type(exc).__name__, f"applying a configuration failed: {exc}")
            if isinstance(exc, TransientDeviceError):  # out of descriptors: try again later
                self._retry, self._retry_at = action, self.clock() + 1.0
        for warning in self.device.actuator.warnings():
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("%s", warning)
        newly = {
            k: why
            for k, why in self.device.actuator.frozen().items()
            if k not in self.engine.frozen and self.engine.tunes(k)
        }
        if newly:
            for knob, why in newly.items():
                label = why.split(":", 1)[0] if ":" in why else "error"
                self._fault(knob, label, f"knob {knob} frozen ({why}); tuning the others")
                action = self.engine.freeze(knob, why, self.clock(), self._energy())
            await self._apply(action)
            return
        if applied:  # status and metrics show only values that reached the device
            self._retry = None
            if not action.background:  # the slot's clocks are not serving's configuration
                self.observer.on_config(values)

    def _fault(self, where: str, reason: str, message: str) -> None:
        """Report a device or engine fault: one log line per distinct message, a counter."""
        if message not in self._warned:
            self._warned.add(message)
            log.error("%s", message)
        self.observer.on_fault(where, reason)

    def _energy(self) -> float:
        """The meter's cumulative joules; after a failure, the last reading (reported once)."""
        try:
            value = self.device.meter.energy_joules()
        except Exception as exc:  # a vanished sensor must not end serving
            if self.meter_fault is None and self._held_pins is None:
                self.meter_fault = f"{type(exc).__name__}: {exc}"
                label = getattr(exc, "errno_name", "") or "error"
                self._fault(
                    "meter",
                    label,
                    f"power meter failed ({exc}); energy is no longer measured, so tuning "
                    "holds the configuration in force",
                )
                self._hold = True
            return self._last_energy
        if self.meter_fault is not None:  # e.g. descriptors ran out, and are free again
            log.warning("power meter answers again; tuning resumes")
            self.meter_fault = None
        self._last_energy = value
        return value

    # -- what the faces may read and change -------------------------------------------------
    @property
    def space(self) -> SearchSpace:
        return self.engine.space

    @property
    def ready(self) -> bool:
        """True once the cost's baseline is known (measured or resumed)."""
        return self.engine.ready

    @property
    def baseline(self) -> Baseline | None:
        return self.engine.baseline

    @property
    def batch_size(self) -> int:
        """The batch size in force (with several models, the largest of their queues')."""
        return max(self.engine.batch_size(q) for q in self._fns)

    def energy_joules(self) -> float:
        """The device meter's cumulative reading (the last one, if the meter has failed)."""
        return self._energy()

    @property
    def alive(self) -> bool:
        """True while the dispatch loop runs (a supervisor should restart a daemon without it)."""
        return self._task is not None and not self._task.done()

    async def pin(self, values: dict[str, float]) -> None:
        """Hold knobs at these values (nearest available) and apply at once."""
        await self._apply(self.engine.pin(values, self.clock(), self.energy_joules()))

    async def unpin(self) -> None:
        await self._apply(self.engine.unpin(self.clock(), self.energy_joules()))

    async def set_tuner(self, tuner: Tuner) -> None:
        """Switch the tuner mid-run; the new one starts from its own first ask."""
        await self._apply(self.engine.set_tuner(tuner, self.clock(), self.energy_joules()))

    async def remeasure_baseline(self) -> None:
        """Measure the baseline again at maximum on the traffic from now on."""
        await self._apply(self.engine.remeasure_baseline(self.clock(), self.energy_joules()))

    @property
    def phase(self) -> str:
        """``baseline`` while E0/L0 are being measured, then ``tuning``."""
        return self.engine.phase

    def device_warnings(self) -> list[str]:
        """Distinct warnings the actuator has given so far (each also logged once)."""
        return sorted(self._warned)

    def tuner_name(self) -> str:
        return self.engine.tuner.name

    def tuner_phase(self) -> str:
        """``baseline``, ``pinned``, or what the tuner says it is doing (see the engine)."""
        return self.engine.tuner_phase()

    def pinned_values(self) -> dict[str, float]:
        """Knobs held by a pin, at the values they are held at."""
        return self.engine.pinned_values()

    def windows(self, count: int = 20) -> list[WindowReport]:
        """The last ``count`` window reports, oldest first."""
        return list(self.engine.reports)[-count:] if count > 0 else []

    def describe(self, windows: int = 20) -> dict[str, Any]:
        """The engine's state for a status page: configuration, the last ``windows``, tuner."""
        engine = self.engine
        tuner = engine.tuner
        counters = self.counters
        return {
            "device": self.device.name,
            "phase": engine.phase,
            "accounting": engine.accounting,
            "config": engine.values(),
            "pinned": engine.pinned_values(),
            "knobs": {k.name: list(k.values) for k in engine.space.knobs},
            "baseline": None if engine.baseline is None else vars(engine.baseline),
            "windows_closed": engine.windows_closed,
            "windows": [r.as_dict() for r in self.windows(windows)],
            "tuner": {
                "name": tuner.name,
                **tuner.describe(),
                "state": {k: v for k, v in tuner.state_dict().items() if k != "rng"},
            },
            "tuner_phase": engine.tuner_phase(),
            "device_warnings": self.device_warnings(),
            "frozen": dict(engine.frozen),
            "meter_fault": self.meter_fault,
            "loop_alive": self.alive,
            "loop_errors": self.loop_errors,
            "queue_depth": self.queue_depth,
            **self._timers(),
            "counters": {
                "accepted": counters.accepted,
                "completed": counters.completed,
                "failed": counters.failed,
                "rejected": dict(counters.rejected),
                "batches": counters.batches,
            },
        }

    def _timers(self) -> dict[str, Any]:
        """One queue's timer as ``batch_timer``; several as ``batch_timers`` by queue."""
        timers = self.engine.batch_timers()
        if set(timers) == {DEFAULT_QUEUE}:
            return {"batch_timer": timers[DEFAULT_QUEUE]}
        return {"batch_timers": timers}

    def save_state(self) -> None:
        """Write the tuner state (and a newly measured baseline), where configured."""
        if self._state is not None:
            self._state.save(self.engine)

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: tuner state, baseline, pins, window count (JSON-ready)."""
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Resume a saved state before ``start``; returns (what was restored, problems)."""
        return self.engine.load_state_dict(state)


def _step_items(result: Any, micro_batch: int) -> tuple[int, bool]:
    """(items done, job finished) from what a step function returned."""
    if result is None:
        return micro_batch, False
    if isinstance(result, int) and not isinstance(result, bool):
        return result, False
    items = getattr(result, "items", None)
    if isinstance(items, int) and not isinstance(items, bool):
        return items, bool(getattr(result, "done", False))
    raise TypeError(
        f"a background step returned {type(result).__name__}; return the items done (an int), "
        "an object with an int 'items', or None"
    )
