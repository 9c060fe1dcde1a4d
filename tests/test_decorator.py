"""The decorator face: each caller gets its own result, batching happens, failures stay local."""

import asyncio
import threading
import time

import pytest
import torch

import eco_edge_infer
from ecoserve.runtime.driver import RuntimeStoppedError

FAST = dict(device="virtual:xavier-nx", window_requests=16, warmup_requests=4, max_wait_s=0.005)


def test_fifty_concurrent_sync_callers_get_their_own_results():
    sizes = []

    @eco_edge_infer.inference_method(**FAST)
    def double(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return batch * 2

    results: dict[tuple[int, int], float] = {}
    barrier = threading.Barrier(50)

    def caller(i: int) -> None:
        barrier.wait()
        for j in range(10):
            x = float(i * 1000 + j)
            results[(i, j)] = float(double(torch.tensor([x]))[0])

    with double:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counters = double.runtime.counters
    assert len(results) == 500
    assert all(v == 2 * (i * 1000 + j) for (i, j), v in results.items())
    assert counters.completed == 500 and counters.failed == 0
    assert max(sizes) > 1, "concurrent callers should share batches"
    assert max(sizes) <= 16


def test_fifty_concurrent_async_callers_get_their_own_results():
    @eco_edge_infer.inference_method(**FAST)
    async def label(batch: list) -> list:
        await asyncio.sleep(0.001)
        return [f"item-{x}" for x in batch]

    async def main() -> list:
        return await asyncio.gather(*(label(i) for i in range(50)))

    with label:
        out = asyncio.run(main())
    assert out == [f"item-{i}" for i in range(50)]


def test_non_tensor_items_arrive_as_a_list():
    seen = []

    @eco_edge_infer.inference_method(**FAST)
    def upper(batch):
        seen.append(type(batch))
        return [s.upper() for s in batch]

    with upper:
        assert upper("abc") == "ABC"
    assert seen == [list]


def test_an_exception_fails_only_the_callers_of_that_batch():
    @eco_edge_infer.inference_method(**dict(FAST, max_batch=1, min_batch=1))
    def picky(batch: list) -> list:
        if batch[0] == "bad":
            raise ValueError("cannot handle 'bad'")
        return batch

    with picky:
        with pytest.raises(ValueError, match="cannot handle"):
            picky("bad")
        assert picky("good") == "good"
        counters = picky.runtime.counters
    assert counters.failed == 1 and counters.completed == 1


def test_wrong_number_of_results_fails_the_batch_loudly():
    @eco_edge_infer.inference_method(**FAST)
    def short(batch: list) -> list:
        return batch[:-1] if len(batch) > 0 else batch

    with short:
        with pytest.raises(ValueError, match="results for a batch"):
            short("x")


def test_start_stop_are_explicit_and_restartable():
    @eco_edge_infer.inference_method(**FAST)
    def ident(batch: list) -> list:
        return batch

    ident.start()
    assert ident(1) == 1
    runtime = ident.runtime
    ident.stop()
    with pytest.raises(RuntimeStoppedError):
        asyncio.run(runtime.submit(2))
    assert ident(3) == 3  # a call after stop starts a fresh engine
    ident.stop()


def test_unknown_setting_is_refused_with_the_valid_names():
    with pytest.raises(TypeError, match="window_requests"):
        eco_edge_infer.inference_method(windw_requests=3)


def test_the_tuner_moves_knobs_on_the_virtual_device():
    @eco_edge_infer.inference_method(**dict(FAST, window_requests=8, warmup_requests=2))
    def ident(batch: list) -> list:
        return batch

    with ident:
        for i in range(200):
            ident(i)
        runtime = ident.runtime
        configs = {r.config for r in runtime.windows(1000)}
    assert runtime.ready
    assert len(configs) > 1, "the tuner should have tried more than one configuration"


def test_a_hung_function_times_out_hands_the_clocks_back_and_stop_is_bounded(tmp_path) -> None:
    """A call gives up after timeout_s, the watchdog restores the clocks, stop() returns."""
    import threading
    import time

    from devices.testing import xavier_nx_tree

    tree = xavier_nx_tree(tmp_path / "tree")
    governor = tree / "sys/devices/system/cpu/cpufreq/policy0/scaling_governor"
    release = threading.Event()
    calls = []

    @eco_edge_infer.inference_method(
        device="sysfs",
        sysfs_root=str(tree),
        meter="estimate",
        tuner="fixed",
        max_wait_s=0.0,
        timeout_s=0.5,
        watchdog_s=0.3,
        stop_timeout_s=1.0,
    )
    def stuck(batch):
        calls.append(len(batch))
        if len(calls) > 2:  # the warm-up batches pass; then the model hangs
            release.wait(30)
        return batch

    try:
        stuck(torch.zeros(2))
        stuck(torch.zeros(2))
        assert governor.read_text().strip() == "userspace"  # pinned while serving
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout_s"):
            stuck(torch.zeros(2))
        assert time.monotonic() - t0 < 2.0
        deadline = time.monotonic() + 5
        while governor.read_text().strip() != "schedutil" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert governor.read_text().strip() == "schedutil"  # the watchdog handed it back
        t0 = time.monotonic()
        stuck.stop()
        assert time.monotonic() - t0 < 5.0
        assert governor.read_text().strip() == "schedutil"
    finally:
        release.set()


def test_the_tuner_state_is_saved_and_resumed_as_the_daemons_is(tmp_path) -> None:
    """``state_file``: saved after each window and at stop; a restart resumes, not re-measures."""
    import json

    state = tmp_path / "state.json"

    def ident(batch: list) -> list:
        return batch

    first = eco_edge_infer.inference_method(ident, state_file=str(state), **FAST)
    with first:
        for i in range(120):
            first(i)
        assert first.runtime.ready
    saved = json.loads(state.read_text())
    assert saved["model"].endswith("ident") and saved["device"] == "virtual:xavier-nx"
    assert saved["baseline"] is not None and saved["windows_closed"] >= 2

    second = eco_edge_infer.inference_method(ident, state_file=str(state), **FAST)
    with second:
        runtime = second.runtime
        assert {"baseline", "tuner"} <= set(runtime.resumed)
        assert runtime.ready and runtime.phase == "tuning"  # no baseline windows again


def test_calls_time_out_by_default() -> None:
    """A hung function never blocks its callers for good: the default timeout is finite."""
    import inspect

    from ecoserve.decorator import DEFAULT_CALL_TIMEOUT_S, InferenceMethod

    assert DEFAULT_CALL_TIMEOUT_S == 30.0
    default = inspect.signature(eco_edge_infer.inference_method).parameters["timeout_s"].default
    assert default == DEFAULT_CALL_TIMEOUT_S

    @eco_edge_infer.inference_method(device="virtual:xavier-nx", tuner="fixed")
    def ident(batch):
        return batch

    # never called, so never started: nothing to stop
    assert isinstance(ident, InferenceMethod) and ident.timeout_s == DEFAULT_CALL_TIMEOUT_S


def test_a_decorated_function_harvests_its_idle_time_with_a_background_job(tmp_path) -> None:
    from ecoserve.background import background_job

    @background_job(state={"steps": 0})
    def count(micro_batch: int, state: dict) -> float:
        state["steps"] += 1
        return 0.1

    @eco_edge_infer.inference_method(
        device="virtual:xavier-nx", background=count, restore_dir=str(tmp_path),
        window_requests=16, warmup_requests=4,
    )  # fmt: skip
    def double(batch):
        return batch * 2

    with double:
        outs = [double(torch.full((4,), float(i))) for i in range(20)]
        assert [float(o[0]) for o in outs] == [2.0 * i for i in range(20)]
        deadline = time.monotonic() + 20
        while double.background.describe()["steps"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = double.background.describe()
        assert state["job"] == "count" and state["steps"] >= 5 and not state["paused"]
    assert (tmp_path / "background" / "count" / "background-job.ckpt").is_file()  # at stop
