"""The engine orders events; both drivers carry out the same answers in the same order."""

from __future__ import annotations

import asyncio
import gc
import random
import selectors
import time
from collections.abc import Mapping
from typing import Any

import pytest

from devices.base import Actuator, Device, PowerMeter
from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.batching import Dispatch, QueueFullError, WaitUntil
from ecoserve.core.controller import BatchOutcome, Controller
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import (
    Admission,
    ApplyConfig,
    Drained,
    Engine,
    QueueSpec,
    WindowClosed,
)
from ecoserve.core.knobs import BATCH, CPU, GPU, Knob, SearchSpace
from ecoserve.runtime.driver import Runtime
from ecoserve.sim.driver import Simulator
from tuners.grid import Grid
from twins.base import DeviceTwin

# -- the engine alone ---------------------------------------------------------------------


def engine_of(
    knobs: list[Knob], *, window: int = 2, queues: tuple[QueueSpec, ...] = (QueueSpec(),), **kw: Any
) -> Engine[str]:
    space = SearchSpace(tuple(knobs))
    controller = Controller(
        space,
        Grid(space),
        baseline=Baseline(1.0, 1.0),
        window_requests=window,
        warmup_requests=0,
        window_seconds=None,
    )
    return Engine(controller, queues=queues, **kw)


def done(engine: Engine[str], batch: Dispatch[str], end: float, meter: float = 0.0) -> None:
    engine.batch_done(
        BatchOutcome(batch.config, [end - a for a in batch.arrivals], 0.1, end, meter, busy_s=0.01)
    )


def test_a_closed_window_comes_out_with_its_configuration_before_the_next_batch() -> None:
    engine = engine_of([Knob(BATCH, (1, 2)), Knob(CPU, (1e9, 2e9))], max_wait=0.0)
    first = engine.start(0.0, 0.0)
    assert first.values == {BATCH: 2.0, CPU: 2e9}
    for i in range(4):
        assert engine.arrive(f"r{i}", 0.0) is Admission.ACCEPTED
    batch = engine.next(0.0, 0.0)
    assert isinstance(batch, Dispatch) and batch.items == ["r0", "r1"] and batch.queue == "default"
    with pytest.raises(RuntimeError, match="batch_done"):
        engine.next(0.0, 0.0)  # one batch at a time
    done(engine, batch, 0.01)  # two requests: the window closes
    closed = engine.next(0.01, 0.1)
    assert isinstance(closed, WindowClosed) and closed.report.requests == 2
    apply = engine.next(0.01, 0.1)
    assert isinstance(apply, ApplyConfig)
    assert apply.values == engine.values() != first.values  # the grid moved on
    # the new batch size is already in force in the queue: what was queued leaves at once
    again = engine.next(0.01, 0.1)
    assert isinstance(again, Dispatch) and again.config != batch.config


def test_an_apply_waiting_in_the_outbox_carries_the_configuration_in_force_when_taken() -> None:
    engine = engine_of([Knob(CPU, (1e9, 2e9, 3e9))], window=1)
    engine.start(0.0, 0.0)
    engine.arrive("a", 0.0)
    batch = engine.next(1.0, 0.0)
    assert isinstance(batch, Dispatch)
    done(engine, batch, 1.01)
    assert isinstance(engine.next(1.01, 0.1), WindowClosed)
    pinned = engine.pin({CPU: 1e9}, 1.02, 0.1)  # an operator pins before the apply is taken
    later = engine.next(1.02, 0.1)
    assert isinstance(later, ApplyConfig) and later.values == pinned.values == {CPU: 1e9}


def test_admission_is_the_engines_queue_bound_and_closing_drains_at_once() -> None:
    engine = engine_of([Knob(BATCH, (8,))], max_queue=2, max_wait=10.0)
    assert engine.arrive("early", 0.0) is Admission.CLOSED  # not started
    engine.start(0.0, 0.0)
    assert [engine.arrive(x, 0.0) for x in "abc"] == [
        Admission.ACCEPTED,
        Admission.ACCEPTED,
        Admission.QUEUE_FULL,
    ]
    wait = engine.next(0.0, 0.0)
    assert isinstance(wait, WaitUntil) and wait.deadline == 0.5  # the idle tick, before 10 s
    engine.close()
    assert engine.arrive("late", 0.1) is Admission.CLOSED and not engine.admitting
    batch = engine.next(0.1, 0.0)  # draining: no wait for the batch to fill
    assert isinstance(batch, Dispatch) and batch.items == ["a", "b"]
    done(engine, batch, 0.2)
    answers = [engine.next(0.2, 0.0) for _ in range(3)]
    assert isinstance(answers[-1], Drained)


def test_the_queue_ends_with_the_arrivals_only_once_it_is_empty() -> None:
    engine = engine_of([Knob(BATCH, (2,))], max_wait=0.05, window=100)
    engine.start(0.0, 0.0)
    engine.arrive("a", 0.0)
    wait = engine.next(0.0, 0.0, arrivals_over=True)
    assert isinstance(wait, WaitUntil) and wait.deadline == 0.05  # the timer, not the end
    batch = engine.next(0.05, 0.0, arrivals_over=True)
    assert isinstance(batch, Dispatch)
    done(engine, batch, 0.06)
    assert isinstance(engine.next(0.06, 0.0, arrivals_over=True), Drained)
    assert not isinstance(engine.next(0.06, 0.0), Drained)  # more may come: keep waiting


def test_context_is_read_after_each_batch_and_when_idle_never_before_a_batch() -> None:
    engine = engine_of([Knob(BATCH, (1,))], window=100)
    engine.start(0.0, 0.0)
    reads: list[float] = []

    def context(now: float) -> Mapping[str, float]:
        reads.append(now)
        return {"link_bps": 1e6}

    engine.arrive("a", 0.0)
    batch = engine.next(0.0, 0.0, context)
    assert isinstance(batch, Dispatch) and reads == []
    engine.batch_done(BatchOutcome(batch.config, [0.01], 0.1, 0.01, 0.1), context)
    assert reads == [0.01]
    assert isinstance(engine.next(0.02, 0.1, context), WaitUntil)
    assert reads == [0.01, 0.02]


def test_each_queue_has_its_own_batch_knob_and_the_oldest_due_batch_goes_first() -> None:
    queues = (QueueSpec("a", "batch_size:a"), QueueSpec("b", "batch_size:b"))
    knobs = [Knob("batch_size:a", (3,)), Knob("batch_size:b", (1,))]
    engine = engine_of(knobs, queues=queues, max_wait=1.0, window=100)
    engine.start(0.0, 0.0)
    assert (engine.batch_size("a"), engine.batch_size("b")) == (3, 1)
    engine.arrive("a1", 0.0, "a")
    engine.arrive("a2", 0.1, "a")
    engine.arrive("b1", 0.2, "b")
    first = engine.next(0.2, 0.0)  # a is not full and its timer runs; b's batch of one is due
    assert isinstance(first, Dispatch) and (first.queue, first.items) == ("b", ["b1"])
    done(engine, first, 0.3)
    engine.arrive("b2", 0.3, "b")
    engine.arrive("a3", 0.35, "a")
    second = engine.next(0.4, 0.0)  # both due: a's oldest request arrived first
    assert isinstance(second, Dispatch) and (second.queue, second.items) == (
        "a",
        ["a1", "a2", "a3"],
    )
    assert len(engine) == 1
    with pytest.raises(ValueError, match="no queue named 'c'.*a, b"):
        engine.arrive("c1", 0.5, "c")


def test_a_frozen_knob_leaves_the_space_and_the_apply_with_it() -> None:
    engine = engine_of(
        [Knob(CPU, (1e9, 2e9)), Knob(GPU, (1e8, 2e8))],
        tuner_factory=lambda space: Grid(space),
    )
    engine.start(0.0, 0.0)
    apply = engine.freeze(GPU, "ENOENT: gone", 0.0, 0.0)
    assert set(apply.values) == {CPU} and not engine.tunes(GPU)
    assert engine.frozen == {GPU: "ENOENT: gone"}


# -- both drivers, one script ---------------------------------------------------------------


class LineTwin(DeviceTwin):
    """A noise-free board: batch time linear in the batch, slower at low clocks; idle draws 0."""

    name = "line"

    def knobs(self) -> list[Knob]:
        return [Knob(CPU, (1e9, 2e9)), Knob(GPU, (3e8, 6e8))]

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return (0.004 + 0.002 * batch) * (2e9 / freqs[CPU]) ** 0.5 * (6e8 / freqs[GPU]) ** 0.3

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        return busy * (2.0 + freqs[CPU] / 1e9 + freqs[GPU] / 2e8)


class RememberingActuator(Actuator):
    def __init__(self, twin: DeviceTwin) -> None:
        self._knobs = twin.knobs()
        self.values = twin.max_freqs()

    def knobs(self) -> list[Knob]:
        return list(self._knobs)

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        self.values.update({k: v for k, v in values.items() if k in self.values})

    def current(self) -> dict[str, float]:
        return dict(self.values)

    def restore(self) -> None:
        return None


class SummingMeter(PowerMeter):
    def __init__(self) -> None:
        self.joules = 0.0

    def energy_joules(self) -> float:
        return self.joules


class _JumpingSelector(selectors.SelectSelector):
    """Never blocks: a wait jumps the loop's clock to its next timer."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        loop = self.loop
        assert loop is not None
        if timeout is None:
            raise RuntimeError("the script deadlocked: nothing ready and no timer")
        if timeout > 0:
            loop.now = max(loop.now, loop._scheduled[0].when())  # type: ignore[attr-defined]
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, for scripts that use no sockets and no threads."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


SETTINGS = EngineSettings(
    tuner="ecogd",
    max_batch=4,
    max_wait_s=0.03,
    max_queue=6,
    window_requests=12,
    warmup_requests=3,
    window_seconds=1.5,
)


def script() -> list[float]:
    """Arrivals: a steady stream, a burst past the queue bound, a lull, a faster stream."""
    rng = random.Random(7)
    t, times = 0.013, []
    while t < 20.0:
        times.append(t)
        t += rng.expovariate(25.0)
    times += [20.0 + 0.0001 * k + 0.00003 for k in range(12)]  # the burst
    t = 24.017  # a lull of 4 s: timed windows and idle ticks
    while t < 40.0:
        times.append(t)
        t += rng.expovariate(60.0)
    return times


def recorded(engine: Engine[Any], label: Any) -> list[tuple[Any, ...]]:
    """Wrap ``engine.next`` to note each answer other than a wait (each driver waits its way)."""
    seen: list[tuple[Any, ...]] = []
    inner = engine.next

    def next_answer(*args: Any, **kwargs: Any) -> Any:
        answer = inner(*args, **kwargs)
        if isinstance(answer, Dispatch):
            seen.append(("dispatch", tuple(label(x) for x in answer.items), answer.config))
        elif isinstance(answer, WindowClosed):
            r = answer.report
            seen.append(("window", r.index, r.config, r.requests, round(r.cost, 9)))
        elif isinstance(answer, ApplyConfig):
            seen.append(("apply", tuple(sorted(answer.values.items())), answer.governed))
        elif isinstance(answer, Drained):
            seen.append(("drained",))
        return answer

    engine.next = next_answer  # type: ignore[method-assign]
    return seen


def run_simulator(arrivals: list[float]) -> tuple[list[tuple[Any, ...]], int]:
    twin = LineTwin()
    engine = build_engine(twin.knobs(), SETTINGS)
    seen = recorded(engine, lambda i: i)
    result = Simulator(twin, engine).run(arrivals)
    return seen, result.rejected


def run_runtime(arrivals: list[float]) -> tuple[list[tuple[Any, ...]], int]:
    twin = LineTwin()
    actuator, meter = RememberingActuator(twin), SummingMeter()
    loop = VirtualTimeLoop()

    async def board(batch: list[int]) -> list[int]:
        seconds = twin.batch_time(len(batch), actuator.values)
        meter.joules += twin.power(actuator.values, 1.0) * seconds
        await asyncio.sleep(seconds)
        return batch

    engine = build_engine(twin.knobs(), SETTINGS)
    seen = recorded(engine, lambda request: request.item)
    runtime = Runtime(
        board,
        Device("line", actuator, meter),
        engine,
        clock=loop.time,
        run_inline=True,
        cpu_clock=None,
    )

    async def main() -> int:
        await runtime.start()
        futures, rejected = [], 0
        for i, at in enumerate(arrivals):
            await asyncio.sleep(at - loop.time())
            try:
                futures.append(runtime.submit_nowait(i))
            except QueueFullError:
                rejected += 1
        await asyncio.gather(*futures)
        await runtime.stop(drain=True)
        return rejected

    try:
        rejected = loop.run_until_complete(main())
    finally:
        loop.close()
    return seen, rejected


def test_both_drivers_carry_out_the_same_answers_in_the_same_order() -> None:
    arrivals = script()
    in_sim, sim_rejected = run_simulator(arrivals)
    in_runtime, runtime_rejected = run_runtime(arrivals)
    kinds = {answer[0] for answer in in_sim}
    assert kinds == {"dispatch", "window", "apply", "drained"}
    windows = [a for a in in_sim if a[0] == "window"]
    assert len(windows) >= 10 and len({w[2] for w in windows}) >= 3  # the tuner moved
    assert sim_rejected == runtime_rejected > 0  # the burst overran the queue in both
    assert in_runtime == in_sim


def test_a_batch_whose_bookkeeping_raises_is_still_reported_to_the_engine() -> None:
    """An error source that raises once: the loop survives it and the engine is not left
    waiting for a batch that finished (every later request is still served)."""
    twin = LineTwin()
    actuator, meter = RememberingActuator(twin), SummingMeter()
    loop = VirtualTimeLoop()
    calls = {"n": 0}

    def errors() -> float:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("cascade bookkeeping failed")
        return 0.0

    async def board(batch: list[int]) -> list[int]:
        await asyncio.sleep(twin.batch_time(len(batch), actuator.values))
        return batch

    runtime = Runtime(
        board,
        Device("line", actuator, meter),
        build_engine(twin.knobs(), SETTINGS),
        clock=loop.time,
        run_inline=True,
        cpu_clock=None,
        error_source=errors,
    )

    async def main() -> list[int]:
        await runtime.start()
        first = await runtime.submit(1)
        later = []
        for i in range(2, 30):
            await asyncio.sleep(0.05)
            later.append(await runtime.submit(i))
        await runtime.stop(drain=True)
        return [first, *later]

    try:  # bounded in virtual time: an engine left waiting would spin the loop for ever
        answers = loop.run_until_complete(asyncio.wait_for(main(), timeout=60.0))
    finally:
        loop.close()
    assert answers == list(range(1, 30))
    assert runtime.loop_errors == 1 and calls["n"] >= 29


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@pytest.mark.parametrize("run_inline", [False, True])
def test_the_loops_cpu_around_each_batch_is_reported_apart_from_the_model(
    run_inline: bool,
) -> None:
    """Each request costs the loop 10 ms of its own work and each batch 20 ms of model: the
    batch's ``loop_s`` holds the loop's part alone, whether the model ran on the loop's
    thread or in the worker."""
    twin = LineTwin()

    def model(batch: list[int]) -> list[int]:
        burn(0.02)
        return batch

    engine = build_engine(twin.knobs(), SETTINGS)
    outcomes: list[BatchOutcome] = []
    reported = engine.batch_done

    def spy(outcome: BatchOutcome, *rest: Any) -> None:
        outcomes.append(outcome)
        reported(outcome, *rest)

    engine.batch_done = spy  # type: ignore[method-assign]
    device = Device("line", RememberingActuator(twin), SummingMeter())
    runtime = Runtime(model, device, engine, run_inline=run_inline)

    async def main() -> None:
        await runtime.start()
        for i in range(6):
            burn(0.01)  # the loop's work on this request (parsing, say) before it is queued
            await runtime.submit(i)
        await runtime.stop(drain=True)

    gc.disable()  # a full collection on the loop's thread would be 100 ms of its CPU
    try:
        asyncio.run(main())
    finally:
        gc.enable()
    assert len(outcomes) == 6
    for outcome in outcomes[1:]:  # the first also holds the loop's start-up
        assert 0.009 <= outcome.loop_s < 0.018, outcome  # 20 ms of model would show
        assert outcome.busy_s >= 0.019
