"""The background slot: when a step may run, how big, under which clocks, in both drivers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import pytest
from test_engine import (
    SETTINGS,
    LineTwin,
    RememberingActuator,
    SummingMeter,
    VirtualTimeLoop,
    engine_of,
    script,
)

from devices.base import Device
from ecoserve.background.step_cost import DIGITS_FINETUNE_SMALL, ServingReference, StepCost
from ecoserve.core.assembly import build_engine
from ecoserve.core.batching import Dispatch, QueueFullError, WaitUntil
from ecoserve.core.engine import ApplyConfig, Drained, Engine, RunBackground, WindowClosed
from ecoserve.core.harvest import (
    INFEASIBLE_COST,
    MICRO_BATCH,
    ArrivalGaps,
    HarvestPolicy,
    HarvestSettings,
    StepOutcome,
    StepTimes,
    slot_space,
)
from ecoserve.core.knobs import BATCH, CPU, GPU, Knob, SearchSpace
from ecoserve.replay.harvest import background_cost, harvest_replay, job_space, render
from ecoserve.runtime.driver import Runtime
from ecoserve.sim.background import TwinStepCost, board_scale
from ecoserve.sim.driver import Simulator
from tuners.grid import Grid
from tuners.registry import make_tuner

# -- the policy alone ---------------------------------------------------------------------


def test_a_burst_predicts_arrivals_and_its_tail_a_quiet_gap() -> None:
    gaps = ArrivalGaps(history=256, min_samples=8)
    t = 0.0
    for _ in range(20):  # bursts of 10 requests 1 ms apart, every 500 ms
        for k in range(10):
            gaps.arrive(t + 0.001 * k)
        t += 0.5
    last = t - 0.5 + 0.009
    assert gaps.quiet(last + 0.0005, 0.02) < 0.2  # mid-burst: another request is near
    assert gaps.quiet(last + 0.01, 0.02) == 1.0  # after the burst: the gap is long
    assert gaps.quiet(last + 0.49, 0.02) < 0.5  # the next burst is due
    # past everything the history has seen: memoryless at the rate, the silence counted in
    far = last + 10.0
    assert gaps.quiet(far, 0.1) == pytest.approx(math.exp(-gaps.rate(far) * 0.1))
    assert ArrivalGaps().quiet(1.0, 0.01) == 0.0  # nothing known: no step


def test_step_times_are_estimated_from_above() -> None:
    times = StepTimes(weight=0.5)
    assert times.estimate((1.0,), 4) is None
    times.observe((1.0,), 4, 0.010)
    assert times.estimate((1.0,), 8) == pytest.approx(0.020)  # scaled up by size
    assert times.estimate((1.0,), 2) == pytest.approx(0.010)  # a larger step bounds it
    times.observe((1.0,), 4, 0.020)
    assert times.estimate((1.0,), 4) == pytest.approx(0.015)  # EWMA


def test_two_measured_sizes_put_a_step_on_their_line() -> None:
    times = StepTimes(weight=1.0)
    times.observe((1.0,), 1, 0.0081)
    times.observe((1.0,), 2, 0.0084)  # 7.8 ms a step and 0.3 ms an item
    assert times.estimate((1.0,), 32) == pytest.approx(0.0078 + 0.0003 * 32)
    times.observe((1.0,), 8, 0.0102)
    assert times.estimate((1.0,), 4) == pytest.approx(0.0084 + 0.0018 * 2 / 6)  # between
    times.observe((1.0,), 16, 0.0090)  # noise: a larger step measured faster
    assert times.estimate((1.0,), 32) == pytest.approx(0.0090)  # read as flat, never falling
    # two drivers that time the same step apart by float noise keep the same figure
    times.observe((2.0,), 4, 0.0076)
    other = StepTimes(weight=1.0)
    other.observe((2.0,), 4, 0.9884612447248781 - 0.980861244724878)
    assert times.estimate((2.0,), 4) == other.estimate((2.0,), 4)


def policy_of(
    settings: HarvestSettings | None = None, sizes: tuple[int, ...] = (1, 2, 4, 8)
) -> HarvestPolicy:
    space = slot_space([Knob(CPU, (1e9, 2e9))], micro_batches=sizes, loader_workers=(0,))
    return HarvestPolicy(space, Grid(space), settings or HarvestSettings(min_samples=2))


def feed(policy: HarvestPolicy, step: Any, seconds: float, end: float, joules: float = 1.0) -> None:
    policy.step_done(StepOutcome(step.micro_batch, joules, seconds, end, 0.0))


def test_steps_are_cut_to_the_delay_bound_and_the_first_measures() -> None:
    policy = policy_of(HarvestSettings(max_delay_s=0.02, min_samples=2))
    for t in (0.0, 10.0, 20.0):  # a slow stream: quiet gaps
        policy.on_arrival(t)
    first = policy.offer(20.5)
    assert first is not None and first.micro_batch == 1  # nothing measured: the smallest
    assert policy.offer(20.5) is None  # one step at a time
    feed(policy, first, 0.004, 20.504)  # 4 ms per item at this setting
    second = policy.offer(20.6)
    assert second is not None and second.micro_batch == 4  # 16 ms fits, 32 ms would not
    assert second.expected_s == pytest.approx(0.016)
    with pytest.raises(RuntimeError, match="without a step"):
        policy.step_done(StepOutcome(1, 0.0, 0.0, 0.0, 0.0))
        policy.step_done(StepOutcome(1, 0.0, 0.0, 0.0, 0.0))


def test_a_configuration_no_micro_batch_fits_is_told_a_penalty() -> None:
    told: list[float] = []
    policy = policy_of(HarvestSettings(max_delay_s=0.01, min_samples=2))
    tell = policy.tuner.tell
    policy.tuner.tell = lambda c, cost, m=None: (told.append(cost), tell(c, cost, m))  # type: ignore[method-assign,assignment,func-returns-value]
    for t in (0.0, 10.0, 20.0):
        policy.on_arrival(t)
    probe = policy.offer(21.0)
    assert probe is not None
    feed(policy, probe, 0.05, 21.05)  # even one item takes 50 ms at this setting
    after = policy.offer(22.0)
    assert told and told[0] == INFEASIBLE_COST
    assert after is not None and after.values[CPU] != probe.values[CPU]  # another setting


def test_a_batch_likely_due_holds_the_step_back_and_the_baseline_only_sees_the_queue() -> None:
    policy = policy_of()
    for k in range(40):  # 10 requests a second
        policy.on_arrival(0.1 * k)
    # the next request is due at 4.0: it fills a batch that misses one, but three in 30 ms
    # at 10/s are unlikely; mid-gap, nothing is near
    assert policy.due_probability(3.98, 0.03, missing=1, timer_s=2.0) == 1.0
    assert policy.due_probability(3.98, 0.03, missing=3, timer_s=2.0) < 0.05
    assert policy.due_probability(3.93, 0.03, missing=1, timer_s=2.0) == 0.0
    # the batching timer shorter than the step: one arrival is enough
    assert policy.due_probability(3.98, 0.03, 3, 0.01) == 1.0
    assert policy.offer(3.95, due_at=3.96, missing=5, timer_s=2.0) is None
    assert policy.figures.declined == {"batch_due_soon": 1}
    base = policy_of(HarvestSettings.queue_empty())
    assert base.offer(1.0, due_at=5.0) is None and base.figures.declined == {"batch_waiting": 1}
    assert base.offer(1.0) is not None  # no prediction: an empty queue is enough


def test_a_gap_too_short_for_the_planned_step_holds_a_smaller_one() -> None:
    settings = HarvestSettings(max_delay_s=0.02, min_samples=2, quiet_probability=0.8)
    policy = policy_of(settings, sizes=(1, 2, 4, 8))
    for k in range(60):  # 20 requests a second, evenly: every gap is 50 ms
        policy.on_arrival(0.05 * k)
    now = 0.05 * 59 + 0.002
    first = policy.offer(now)
    assert first is not None and first.micro_batch == 1
    feed(policy, first, 0.004, now + 0.004)
    second = policy.offer(now + 0.004)
    assert second is not None and second.micro_batch == 4  # 16 ms from one measurement
    feed(policy, second, 0.010, now + 0.014)  # so: 2 ms a step and 2 ms an item
    # 8 items: 18 ms on the line, within the 20 ms bound; with the margin 27 ms, 35 ms left
    step = policy.offer(now + 0.015)
    assert step is not None and step.micro_batch == 8
    assert step.expected_s == pytest.approx(0.018)
    feed(policy, step, 0.016, now + 0.031)
    # 17 ms left to the next arrival: 8 items (24 ms with the margin) do not fit, 4 (15) do
    late = policy.offer(now + 0.031)
    assert late is not None and late.micro_batch == 4
    feed(policy, late, 0.010, now + 0.041)
    assert policy.offer(now + 0.044) is None  # 4 ms left: not even one item (6 ms)
    assert policy.figures.declined == {"batch_likely_due": 1}


def test_bad_settings_are_refused_with_what_to_give() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        HarvestSettings(max_delay_s=0)
    space = SearchSpace((Knob(CPU, (1e9,)),))
    with pytest.raises(ValueError, match="micro_batch"):
        HarvestPolicy(space, Grid(space))


# -- the engine ---------------------------------------------------------------------------


def harvesting_engine(**kw: Any) -> Engine[str]:
    engine = engine_of([Knob(BATCH, (1,)), Knob(CPU, (1e9, 2e9))], window=100, max_wait=0.0)
    slot = slot_space([Knob(CPU, (1e9,))], micro_batches=(1, 2), loader_workers=(0,))
    engine.harvest = HarvestPolicy(slot, Grid(slot), HarvestSettings(min_samples=2, **kw))
    return engine


def test_a_step_runs_in_a_quiet_gap_and_serving_takes_the_board_back_after_it() -> None:
    engine = harvesting_engine()
    engine.start(0.0, 0.0)
    for t in (0.0, 5.0, 10.0):
        engine.arrive(f"r{t}", t)
        batch = engine.next(t, 0.0)
        assert isinstance(batch, Dispatch)
        engine.batch_done(batch_outcome(batch, t + 0.01))
    clocks = engine.next(10.5, 0.0)  # the slot's own clocks first
    assert isinstance(clocks, ApplyConfig) and clocks.background and clocks.values == {CPU: 1e9}
    step = engine.next(10.5, 0.0)
    assert isinstance(step, RunBackground) and step.micro_batch == 1
    with pytest.raises(RuntimeError, match="background_done"):
        engine.next(10.5, 0.0)
    engine.arrive("late", 10.505)  # arrives during the step: it queues
    engine.background_done(StepOutcome(1, 5.0, 0.01, 10.51, 5.0))
    back = engine.next(10.51, 5.0)  # serving's clocks back before its batch
    assert isinstance(back, ApplyConfig) and not back.background and back.values[CPU] == 2e9
    batch = engine.next(10.51, 5.0)
    assert isinstance(batch, Dispatch) and batch.items == ["late"]
    assert engine.harvest is not None and engine.harvest.figures.clock_switches == 2
    with pytest.raises(RuntimeError, match="without a background step"):
        engine.background_done(StepOutcome(1, 0.0, 0.0, 0.0, 0.0))


def batch_outcome(batch: Dispatch[str], end: float) -> Any:
    from ecoserve.core.controller import BatchOutcome

    return BatchOutcome(batch.config, [end - a for a in batch.arrivals], 0.1, end, 0.0, busy_s=0.01)


def test_without_a_slot_the_idle_engine_only_waits() -> None:
    engine = engine_of([Knob(BATCH, (1,))], window=100)
    engine.start(0.0, 0.0)
    assert isinstance(engine.next(1.0, 0.0), WaitUntil)


def test_the_steps_joules_stay_out_of_the_controllers_meter() -> None:
    engine = harvesting_engine()
    engine.start(0.0, 0.0)
    seen: list[float] = []
    tick = engine._controller.tick  # noqa: SLF001 - what the controller is told

    def spy(now: float, meter_j: float) -> Any:
        seen.append(meter_j)
        return tick(now, meter_j)

    engine._controller.tick = spy  # type: ignore[method-assign]  # noqa: SLF001
    for t in (0.0, 5.0, 10.0):
        engine.arrive(f"r{t}", t)
        batch = engine.next(t, 0.0)
        assert isinstance(batch, Dispatch)
        engine.batch_done(batch_outcome(batch, t + 0.01))
    assert isinstance(engine.next(10.5, 0.0), ApplyConfig)
    assert isinstance(engine.next(10.5, 0.0), RunBackground)
    engine.background_done(StepOutcome(1, 7.0, 0.01, 10.51, 7.5))
    engine.next(10.6, 7.5)
    assert seen[-1] == pytest.approx(0.5)  # 7.5 J on the meter, 7 of them the step's


# -- both drivers, one script -------------------------------------------------------------


def step_seconds(micro_batch: int, values: Mapping[str, float]) -> float:
    """A placeholder job: 2 ms a step and 1.5 ms an item at 2 GHz, slower at lower clocks,
    a little faster with a loader worker (so no two configurations cost the same)."""
    workers = 1.0 - 0.05 * values["loader_workers"]
    return (0.002 + 0.0015 * micro_batch) * (2e9 / values[CPU]) ** 0.5 * workers


def slot_policy(twin: LineTwin) -> HarvestPolicy:
    space = slot_space(twin.knobs(), micro_batches=(1, 2, 4, 8), loader_workers=(0, 1))
    return HarvestPolicy(
        space, make_tuner("ecogd-original", space), HarvestSettings(steps_per_window=4)
    )


def recorded(engine: Engine[Any], label: Any) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    inner = engine.next

    def next_answer(*args: Any, **kwargs: Any) -> Any:
        answer = inner(*args, **kwargs)
        if isinstance(answer, Dispatch):
            seen.append(("dispatch", tuple(label(x) for x in answer.items), answer.config))
        elif isinstance(answer, RunBackground):
            seen.append(("step", answer.micro_batch, tuple(sorted(answer.values.items()))))
        elif isinstance(answer, WindowClosed):
            seen.append(("window", answer.report.index, answer.report.config))
        elif isinstance(answer, ApplyConfig):
            seen.append(("apply", tuple(sorted(answer.values.items())), answer.background))
        elif isinstance(answer, Drained):
            seen.append(("drained",))
        return answer

    engine.next = next_answer  # type: ignore[method-assign]
    return seen


def sim_with_slot(arrivals: list[float]) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    twin = LineTwin()
    engine = build_engine(twin.knobs(), SETTINGS, harvest=slot_policy(twin))
    seen = recorded(engine, lambda i: i)
    result = Simulator(twin, engine, background=step_seconds).run(arrivals)
    return seen, result.extra["background"]


def runtime_with_slot(arrivals: list[float]) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    twin = LineTwin()
    actuator, meter = RememberingActuator(twin), SummingMeter()
    loop = VirtualTimeLoop()

    async def board(batch: list[int]) -> list[int]:
        seconds = twin.batch_time(len(batch), actuator.values)
        meter.joules += twin.power(actuator.values, 1.0) * seconds
        await asyncio.sleep(seconds)
        return batch

    async def job(micro_batch: int, values: Mapping[str, float]) -> int:
        seconds = step_seconds(micro_batch, {**values, **actuator.values})
        meter.joules += twin.power(actuator.values, 1.0) * seconds
        await asyncio.sleep(seconds)
        return micro_batch

    engine = build_engine(twin.knobs(), SETTINGS, harvest=slot_policy(twin))
    seen = recorded(engine, lambda request: request.item)
    runtime = Runtime(
        board,
        Device("line", actuator, meter),
        engine,
        clock=loop.time,
        run_inline=True,
        background=job,
        cpu_clock=None,
    )

    async def main() -> None:
        await runtime.start()
        futures = []
        for i, at in enumerate(arrivals):
            await asyncio.sleep(at - loop.time())
            try:
                futures.append(runtime.submit_nowait(i))
            except QueueFullError:
                pass
        await asyncio.gather(*futures)
        await runtime.stop(drain=True)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert engine.harvest is not None
    return seen, engine.harvest.figures.as_dict()


def test_both_drivers_run_the_same_steps_between_the_same_batches() -> None:
    arrivals = script()
    in_sim, sim_figures = sim_with_slot(arrivals)
    in_runtime, runtime_figures = runtime_with_slot(arrivals)
    steps = [a for a in in_sim if a[0] == "step"]
    assert len(steps) > 100 and len({s[1] for s in steps}) >= 2  # sized differently
    assert any(a[0] == "apply" and a[2] for a in in_sim)  # the slot's clocks went on
    assert sim_figures["clock_switches"] > 0 and sim_figures["windows"] >= 3
    # the simulator knows the arrivals are over and drains at once; the runtime learns it
    # only at stop(), and the slot may fill the moment between with steps of its own
    assert in_sim[-1] == ("drained",)
    assert in_runtime[: len(in_sim) - 1] == in_sim[:-1]
    tail = in_runtime[len(in_sim) - 1 :]
    assert all(a[0] == "step" or (a[0] == "apply") or a == ("drained",) for a in tail)
    extra = sum(1 for a in tail if a[0] == "step")
    assert runtime_figures["steps"] == sim_figures["steps"] + extra
    if not extra:
        assert runtime_figures["energy_j"] == pytest.approx(sim_figures["energy_j"], rel=1e-6)


def test_the_runtime_refuses_a_slot_without_a_job_and_survives_a_failing_step() -> None:
    twin = LineTwin()
    actuator, meter = RememberingActuator(twin), SummingMeter()
    device = Device("line", actuator, meter)
    with pytest.raises(ValueError, match="go together"):
        Runtime(
            lambda b: b, device, build_engine(twin.knobs(), SETTINGS, harvest=slot_policy(twin))
        )
    loop = VirtualTimeLoop()

    async def board(batch: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return batch

    def broken(micro_batch: int, values: Mapping[str, float]) -> int:
        raise RuntimeError("out of memory")

    engine = build_engine(twin.knobs(), SETTINGS, harvest=slot_policy(twin))
    runtime = Runtime(
        board, device, engine, clock=loop.time, run_inline=True, background=broken, cpu_clock=None
    )

    async def main() -> list[int]:
        await runtime.start()
        answers = []
        for i in range(40):
            await asyncio.sleep(0.2)
            answers.append(await runtime.submit(i))
        await runtime.stop(drain=True)
        return answers

    try:
        answers = loop.run_until_complete(asyncio.wait_for(main(), timeout=60.0))
    finally:
        loop.close()
    assert answers == list(range(40))  # serving went on
    assert engine.harvest is not None and engine.harvest.stopped is not None
    assert engine.harvest.figures.failures == 3


# -- virtual time and the replay ----------------------------------------------------------


def test_a_twin_step_slows_with_the_clocks_and_loader_workers_hide_loading() -> None:
    twin = LineTwin()
    cost = TwinStepCost(twin, 0.002, 0.001, 0.0005)
    top = {CPU: 2e9, GPU: 6e8, MICRO_BATCH: 8.0}
    assert cost(8, {**top, "loader_workers": 0}) == pytest.approx(0.010 + 0.004)
    assert cost(8, {**top, "loader_workers": 2}) == pytest.approx(0.010)
    assert cost(8, {**top, CPU: 1e9, "loader_workers": 0}) > cost(8, {**top, "loader_workers": 0})
    with pytest.raises(ValueError, match="step cost"):
        TwinStepCost(twin, -1.0, 0.001)
    with pytest.raises(ValueError, match="cost:FIXED_MS"):
        background_cost("builtin:nope", twin)
    assert background_cost("cost:2,1", twin).per_item_s == pytest.approx(0.001)


def test_a_jobs_cost_is_carried_to_the_board_by_the_serving_models_ratio() -> None:
    twin = LineTwin()
    top = twin.max_freqs()
    # the serving model ran here 10x faster than on the twin at batch 1, 40x at batch 4
    ref = ServingReference(
        "builtin:cnn", ((1, twin.batch_time(1, top) / 10), (4, twin.batch_time(4, top) / 40)), "t"
    )
    assert board_scale(twin, ref) == pytest.approx(20.0)  # the geometric mean
    job = StepCost("job", ((1, 0.002, 0.003, 0.002), (8, 0.009, 0.01, 0.001)), "t")
    cost = TwinStepCost.derived(twin, job, ref)
    assert cost.fixed_s == pytest.approx(0.001 * 20) and cost.per_item_s == pytest.approx(0.02)
    assert cost.max_micro_batch == 8 and cost.load_per_item_s == 0.0
    builtin = background_cost("builtin:digits-finetune", twin)
    assert builtin.max_micro_batch == DIGITS_FINETUNE_SMALL.max_micro_batch == 32
    assert builtin.fixed_s == pytest.approx(
        DIGITS_FINETUNE_SMALL.linear_fit()[0] * board_scale(twin)
    )
    sizes = job_space(twin, builtin).knobs[0].values
    assert max(sizes) == 32.0  # the job takes no more in a step: neither may the slot
    with pytest.raises(ValueError, match="rising"):
        ServingReference("builtin:cnn", ((4, 0.1), (1, 0.1)), "t")


def test_a_simulator_without_the_jobs_cost_is_refused() -> None:
    twin = LineTwin()
    with pytest.raises(ValueError, match="step cost"):
        Simulator(twin, build_engine(twin.knobs(), SETTINGS, harvest=slot_policy(twin)))


def test_the_replay_reports_each_arm_beside_serving_alone() -> None:
    twin = LineTwin()
    arrivals = [t for t in script() if t < 12.0]
    report = harvest_replay(
        arrivals, twin, SETTINGS, TwinStepCost(twin, 0.002, 0.0015), workload="script"
    )
    serving, harvest = report.row("serving"), report.row("harvest")
    assert serving.items == 0 and serving.serving_cost == pytest.approx(1.0)
    assert harvest.items > 0 and 0 < harvest.capacity <= 1.0
    assert report.row("nice-19").clock_switches == 0  # it runs at serving's clocks
    # stepping whenever the queue is empty, or always, costs serving more than the slot
    empty, nice = report.row("queue-empty"), report.row("nice-19")
    assert harvest.serving_cost < empty.serving_cost < nice.serving_cost
    assert harvest.p99_ratio < nice.p99_ratio
    assert "nice-19" in render([report])
    with pytest.raises(ValueError, match="arms"):
        harvest_replay(arrivals, twin, SETTINGS, TwinStepCost(twin, 0.002, 0.0015), arms=["x"])
