"""Model residency under a memory budget: least recently used models out, in-use models kept,
oversize ones refused with the figures, and sizes measured, not taken from files."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psutil
import pytest
import torch
from torch import nn

from ecoserve.models.loader import LoadedModel, load_model
from ecoserve.models.residency import (
    RESERVE_MIN,
    Footprint,
    MemoryBudgetError,
    ModelInUseError,
    ModelTooLargeError,
    Residency,
    TorchMover,
    UnknownModelError,
    board_residency,
    default_budget,
    default_mover,
    measure_resident,
    parameter_bytes,
    parse_memory,
)

MiB = 1 << 20
GiB = 1 << 30
NAMES = ["a", "b", "c", "d", "e", "f"]


@dataclass(frozen=True)
class Fake:
    """A model whose measured size is what it says, and where it sits."""

    name: str
    size: int
    place: str = "host"


class Board:
    """A fake board: a clock that loads and moves advance, and a log of what ran."""

    LOAD_S = 0.5
    MOVE_S = 0.1

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.now = 100.0
        self.loads: list[str] = []
        self.moves: list[tuple[str, str]] = []
        self.collects = 0
        self.pinned_to_host: set[str] = set()

    def clock(self) -> float:
        return self.now

    def loader(self, name: str) -> Fake:
        self.now += self.LOAD_S
        self.loads.append(name)
        return Fake(name, self.sizes[name])

    @staticmethod
    def measure(action: Callable[[], Fake]) -> tuple[Fake, Footprint]:
        model = action()
        if model.place == "device":  # a move: CUDA's start-up lands in the RSS, not the model
            return model, Footprint(host=512 * MiB, device=model.size)
        return model, Footprint(host=model.size)

    def collect(self) -> None:
        self.collects += 1

    # The mover's three methods: a host tier for tests on a board without CUDA.
    def can_move(self, model: Fake) -> bool:
        return model.name not in self.pinned_to_host

    def to_device(self, model: Fake) -> Fake:
        self.now += self.MOVE_S
        self.moves.append((model.name, "device"))
        return replace(model, place="device")

    def to_host(self, model: Fake) -> Fake:
        self.moves.append((model.name, "host"))
        return replace(model, place="host")

    def residency(self, budget: int, host_budget: int | None = None) -> Residency[Fake]:
        res: Residency[Fake] = Residency(
            budget,
            self.loader,
            measure=self.measure,
            mover=self if host_budget is not None else None,
            host_budget_bytes=host_budget,
            collect=self.collect,
            clock=self.clock,
        )
        for name in self.sizes:
            res.register(name)
        return res


def call(res: Residency[Fake], name: str) -> tuple[str, ...]:
    """One request: acquire, run, release; what it evicted."""
    with res.use(name) as swap:
        assert swap.model.name == name
    return swap.evicted


def test_six_models_in_a_budget_of_three_rotate_least_recently_used_first() -> None:
    board = Board({n: 100 * MiB for n in NAMES})
    res = board.residency(300 * MiB)
    evicted = [call(res, n) for n in NAMES + NAMES]
    order = NAMES[:3] + NAMES[3:] + NAMES[:3]
    assert evicted == [(), (), ()] + [(n,) for n in order]
    assert sorted(res.loaded()) == ["d", "e", "f"]
    assert board.loads == NAMES + NAMES
    assert all(e.loads == 2 and e.load_s_total == pytest.approx(1.0) for e in res.loaded().values())
    status = res.describe()
    assert status["used_bytes"] == 300 * MiB <= status["budget_bytes"]
    assert status["tiers"] == ["device"]
    json.dumps(status)  # JSON-ready for /v1/status


def test_use_not_load_order_decides_what_goes() -> None:
    board = Board({n: 100 * MiB for n in NAMES})
    res = board.residency(300 * MiB)
    for n in "abc":
        call(res, n)
    call(res, "a")  # a is now the most recently used
    assert call(res, "d") == ("b",)
    assert call(res, "e") == ("c",)
    assert call(res, "f") == ("a",)


def test_a_swap_in_reports_its_load_time_and_a_resident_call_none() -> None:
    board = Board({"a": 100 * MiB})
    res = board.residency(300 * MiB)
    first = res.acquire("a")
    assert (first.source, first.load_s) == ("storage", pytest.approx(Board.LOAD_S))
    res.release("a")
    again = res.acquire("a")
    assert (again.source, again.load_s) == ("resident", 0.0)
    res.release("a")
    assert res.try_acquire("a") is not None
    res.release("a")
    assert res.loaded()["a"].last_used == board.now
    board.now += 7.0
    assert res.describe()["models"][0]["idle_s"] == 7.0


def test_a_model_running_a_batch_is_never_evicted() -> None:
    board = Board({n: 100 * MiB for n in NAMES})
    res = board.residency(300 * MiB)
    busy = res.acquire("a")  # a batch of a is running throughout
    for n in "bcdef":
        call(res, n)
    assert "a" in res.loaded() and res.loaded()["a"].in_use == 1
    assert sorted(res.loaded()) == ["a", "e", "f"]
    res.release(busy.name)  # its batch just finished: the most recently used now
    assert call(res, "b") == ("e",)
    assert call(res, "c") == ("f",)
    assert call(res, "d") == ("a",)


def test_when_every_resident_model_is_busy_the_call_is_refused_for_now() -> None:
    board = Board({n: 100 * MiB for n in NAMES})
    res = board.residency(300 * MiB)
    for n in "abc":
        res.acquire(n)
    with pytest.raises(MemoryBudgetError) as err:
        res.acquire("d")
    assert err.value.busy == ["a", "b", "c"] and err.value.needed == 100 * MiB
    message = str(err.value)
    assert "'d' (100.0 MiB)" in message and "300.0 MiB" in message
    assert "retry" in message and "--memory-budget" in message
    assert sorted(res.loaded()) == ["a", "b", "c"]  # nothing evicted, d not kept
    # d's size is known now: a second call is refused before loading it again.
    with pytest.raises(MemoryBudgetError):
        res.acquire("d")
    assert board.loads.count("d") == 1
    res.release("b")
    assert res.acquire("d").evicted == ("b",)


def test_a_model_larger_than_the_budget_is_refused_with_its_figures() -> None:
    board = Board({"a": 100 * MiB, "big": 1244 * MiB})
    res = board.residency(1 * GiB)
    call(res, "a")
    with pytest.raises(ModelTooLargeError) as err:
        res.acquire("big")
    assert (err.value.size, err.value.budget) == (1244 * MiB, GiB)
    message = str(err.value)
    assert "1.2 GiB" in message and "1.0 GiB" in message and "--memory-budget 1244MiB" in message
    assert sorted(res.loaded()) == ["a"]  # the others stay
    assert res.describe()["models"][1]["device_bytes"] == 1244 * MiB
    with pytest.raises(ModelTooLargeError):
        res.acquire("big")
    assert board.loads == ["a", "big"]  # refused from its measured size, not loaded again


def test_a_size_hint_makes_room_before_the_first_load() -> None:
    board = Board({"a": 100 * MiB, "b": 100 * MiB, "c": 200 * MiB})
    res = board.residency(300 * MiB)
    res.register("c", size_hint=150 * MiB)
    call(res, "a")
    call(res, "b")
    seen: list[list[str]] = []
    loader = board.loader

    def watching(name: str) -> Fake:
        seen.append(sorted(res.loaded()))
        return loader(name)

    res._loader = watching  # see what was resident while c loaded
    assert call(res, "c") == ("a",)
    assert seen == [["b"]]


def test_a_bigger_than_hinted_model_evicts_more_after_its_load() -> None:
    board = Board({"a": 100 * MiB, "b": 100 * MiB, "c": 250 * MiB})
    res = board.residency(300 * MiB)
    call(res, "a")
    call(res, "b")
    assert call(res, "c") == ("a", "b")
    assert sorted(res.loaded()) == ["c"]


def test_host_tier_holds_evicted_models_and_moves_them_back_on_demand() -> None:
    board = Board({n: 100 * MiB for n in NAMES})
    res = board.residency(200 * MiB, host_budget=200 * MiB)
    for n in "abc":
        call(res, n)
    assert {n: e.tier for n, e in res.loaded().items()} == {
        "a": "host",
        "b": "device",
        "c": "device",
    }
    assert res.loaded()["a"].bytes == 100 * MiB
    swap = res.acquire("a")
    assert swap.source == "host" and swap.demoted == ("b",) and swap.evicted == ()
    assert swap.load_s == pytest.approx(Board.MOVE_S)  # a move, not a load
    assert swap.model.place == "device"
    res.release("a")
    assert board.loads == ["a", "b", "c"]
    assert res.loaded()["a"].swaps_in == 1 and res.loaded()["a"].loads == 1
    # The host tier is full with b and the next demoted: its least recent model is unloaded.
    for n in "de":
        call(res, n)
    tiers = {n: e.tier for n, e in res.loaded().items()}
    assert tiers == {"a": "host", "c": "host", "d": "device", "e": "device"}
    assert "b" not in res.loaded()
    status = res.describe()
    assert status["tiers"] == ["device", "host"]
    assert status["host_used_bytes"] == 200 * MiB == status["host_budget_bytes"]


def test_a_model_too_big_for_the_host_tier_is_unloaded_without_displacing_others() -> None:
    board = Board({"a": 100 * MiB, "b": 200 * MiB, "c": 100 * MiB, "d": 100 * MiB})
    res = board.residency(300 * MiB, host_budget=150 * MiB)
    for n in "abc":
        call(res, n)
    assert res.loaded()["a"].tier == "host"
    swap = res.acquire("d")
    assert (swap.evicted, swap.demoted) == (("b",), ())
    assert res.loaded()["a"].tier == "host"


def test_a_model_the_mover_cannot_move_is_unloaded_not_held() -> None:
    board = Board({n: 100 * MiB for n in "abc"})
    board.pinned_to_host = {"a"}
    res = board.residency(200 * MiB, host_budget=500 * MiB)
    call(res, "a")
    call(res, "b")
    assert call(res, "c") == ("a",)
    assert "a" not in res.loaded()


def test_explicit_unload_frees_an_idle_model_and_refuses_a_busy_one() -> None:
    board = Board({"a": 100 * MiB, "b": 100 * MiB})
    res = board.residency(300 * MiB)
    call(res, "a")
    assert res.unload("a") is True and "a" not in res.loaded()
    assert res.unload("a") is False
    assert board.collects == 1
    call(res, "a")
    assert res.loaded()["a"].loads == 2
    res.acquire("b")
    with pytest.raises(ModelInUseError, match="'b' is running 1 batch"):
        res.unload("b")
    res.release("b")
    res.unregister("b")
    with pytest.raises(UnknownModelError, match="registered: a"):
        res.acquire("b")


def test_bad_calls_get_clear_errors() -> None:
    board = Board({"a": 100 * MiB})
    res = board.residency(300 * MiB)
    with pytest.raises(UnknownModelError, match="no model named 'zz'"):
        res.acquire("zz")
    with pytest.raises(ValueError, match="no acquire is holding"):
        res.release("a")
    with pytest.raises(ValueError, match="non-empty"):
        res.register("")
    with pytest.raises(ValueError, match="size hint of model 'a'"):
        res.register("a", size_hint=-1)
    with pytest.raises(ValueError, match="memory budget must be a positive"):
        Residency(0, board.loader)
    with pytest.raises(ValueError, match="needs a mover"):
        Residency(GiB, board.loader, host_budget_bytes=GiB)


def test_a_failing_load_leaves_the_state_clean_and_the_next_call_retries() -> None:
    board = Board({"a": 100 * MiB, "b": 100 * MiB})
    res = board.residency(300 * MiB)
    fails = {"b"}

    def flaky(name: str) -> Fake:
        if name in fails:
            fails.discard(name)
            raise ValueError(f"{name}: file not found")
        return board.loader(name)

    res._loader = flaky
    call(res, "a")
    with pytest.raises(ValueError, match="file not found"):
        res.acquire("b")
    assert sorted(res.loaded()) == ["a"]
    assert call(res, "b") == ()
    assert sorted(res.loaded()) == ["a", "b"]


def test_use_releases_when_the_batch_raises() -> None:
    board = Board({"a": 100 * MiB})
    res = board.residency(300 * MiB)
    with pytest.raises(RuntimeError), res.use("a"):
        raise RuntimeError("the batch failed")
    assert res.loaded()["a"].in_use == 0


def test_the_event_loop_calls_do_not_wait_for_a_load_in_progress() -> None:
    board = Board({"a": 100 * MiB, "slow": 100 * MiB})
    res = board.residency(300 * MiB)
    call(res, "a")
    entered, go = threading.Event(), threading.Event()

    def slow_loader(name: str) -> Fake:
        if name == "slow":
            entered.set()
            assert go.wait(5)
        return board.loader(name)

    res._loader = slow_loader
    swaps = []
    workers = [threading.Thread(target=lambda: swaps.append(res.acquire("slow"))) for _ in "12"]
    workers[0].start()
    assert entered.wait(5)
    workers[1].start()  # waits for the first one's load of the same model
    t0 = time.perf_counter()
    assert res.try_acquire("slow") is None
    held = res.try_acquire("a")
    assert held is not None
    res.release("a")
    json.dumps(res.describe())
    assert res.loaded()["a"].in_use == 0
    assert time.perf_counter() - t0 < 0.5
    go.set()
    for w in workers:
        w.join(5)
    assert len(swaps) == 2 and board.loads.count("slow") == 1
    assert res.loaded()["slow"].in_use == 2
    assert {s.source for s in swaps} <= {"storage", "resident"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3GiB", 3 * GiB),
        ("512MiB", 512 * MiB),
        ("2.5GB", 2_500_000_000),
        ("1073741824", GiB),
        (" 1.5 gib ", 3 * GiB // 2),
        ("64kB", 64_000),
        ("2Gi", 2 * GiB),
        (".5MiB", MiB // 2),
        (4096, 4096),
    ],
)
def test_memory_amounts_parse(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not understood"),
        ("lots", "not understood"),
        ("-3GiB", "not understood"),
        ("3 G", "'3GiB' for binary, '3GB' for decimal"),
        ("3furlongs", "unknown unit 'furlongs'"),
        ("1.5", "bytes must be whole"),
        ("0", "at least one byte"),
        ("0.0000001kB", "at least one byte"),
        (0, "positive number of bytes"),
        (True, "must be text"),
        (2.5, "must be text"),
    ],
)
def test_bad_memory_amounts_say_what_to_write(text: object, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        parse_memory(text)  # type: ignore[arg-type]


def test_default_budget_keeps_a_reserve() -> None:
    assert default_budget(8 * GiB) == 8 * GiB - int(8 * GiB * 0.10)
    assert default_budget(2 * GiB) == 2 * GiB - RESERVE_MIN
    with pytest.raises(ValueError, match="set --memory-budget"):
        default_budget(256 * MiB)
    assert 0 < default_budget() < psutil.virtual_memory().total


def test_a_real_module_measures_at_least_its_parameters() -> None:
    def load() -> LoadedModel:
        module = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        model = load_model("builtin:cnn")
        return replace(model, module=module, batch_fn=module, input_shape=(1024,))

    model, size = measure_resident(load)
    weights = parameter_bytes(model)
    assert weights == (1024 * 1024 + 1024 + 1024 * 10 + 10) * 4
    assert size.host >= weights and size.device == parameter_bytes(model, "device") == 0


def test_a_module_built_before_the_measurement_still_counts_its_parameters() -> None:
    module = nn.Linear(2048, 1024)  # already resident: its load adds nothing to the RSS
    model = replace(load_model("builtin:noop"), module=module, input_shape=None)
    _, size = measure_resident(lambda: model)
    assert size.host >= parameter_bytes(module) == (2048 * 1024 + 1024) * 4


def test_the_first_batch_s_workspace_is_in_the_measured_size() -> None:
    workspace: list[torch.Tensor] = []

    def batch_fn(batch: object) -> object:
        if not workspace:  # a runtime that sets up its workspace on the first call
            workspace.append(torch.ones(16 * MiB))  # 64 MiB, written, so resident
        return batch

    model = LoadedModel("runtime", None, batch_fn, input_shape=(4,))
    _, size = measure_resident(lambda: model)
    assert parameter_bytes(model) == 0
    assert size.host >= 60 * MiB


def test_a_real_residency_serves_builtin_models_by_measured_size() -> None:
    res: Residency[LoadedModel] = Residency(GiB, load_model)
    for spec in ("builtin:cnn", "builtin:transformer"):
        res.register(spec)
        with res.use(spec) as swap:
            out = swap.model.batch_fn([swap.model.example_item()])
            assert out.shape == (1, 10)
    for spec, entry in res.loaded().items():
        module = load_model(spec).module
        assert module is not None and entry.bytes >= parameter_bytes(module) > 0


def test_torch_mover_wraps_the_batch_function_and_restores_it() -> None:
    model = load_model("builtin:cnn")
    mover = TorchMover("cpu")
    assert mover.can_move(model)
    assert not mover.can_move(replace(model, module=None))
    moved = mover.to_device(model)
    item = model.example_item()
    assert torch.equal(moved.batch_fn([item]), model.batch_fn([item]))
    assert mover.to_host(moved).batch_fn is model.batch_fn


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the board without CUDA")
def test_without_cuda_there_is_one_tier_in_a_default_budget_of_ram() -> None:
    assert default_mover() is None
    res = board_residency(load_model)
    assert res.budget_bytes == default_budget() and res.describe()["tiers"] == ["device"]
    assert board_residency(load_model, 3 * GiB).budget_bytes == 3 * GiB


def _linear(name: str) -> LoadedModel:
    """A model of 16 MiB of fp32 weights."""
    module = nn.Linear(2048, 2048)

    def run(batch: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return module(torch.stack(batch))

    return LoadedModel(name, module, run, input_shape=(2048,))


@pytest.mark.skipif(default_mover() is None, reason="needs a discrete CUDA GPU")
def test_on_a_discrete_gpu_evicted_models_wait_in_host_memory() -> None:
    warm = torch.ones(64, 64, device="cuda")
    (warm @ warm).sum().item()  # CUDA's context and cuBLAS's workspace: no model's memory
    res: Residency[LoadedModel] = Residency(
        40 * MiB, _linear, mover=TorchMover("cuda"), host_budget_bytes=GiB
    )
    for name in "abc":
        res.register(name)
    for name in "ab":
        with res.use(name):
            pass
    on_gpu = torch.cuda.memory_allocated()
    with res.use("c") as swap:
        assert swap.demoted == ("a",)
    assert torch.cuda.memory_allocated() <= on_gpu + 1 * MiB  # a's 16 MiB made room for c
    entries = res.loaded()
    assert entries["a"].tier == "host" and entries["a"].host_bytes is not None
    assert 16 * MiB <= entries["b"].bytes < 24 * MiB  # the device side only, not CUDA's RSS
    with res.use("a") as swap:
        assert swap.source == "host" and swap.model.module is not None
        assert next(swap.model.module.parameters()).is_cuda
        out = swap.model.batch_fn([swap.model.example_item()])
        assert out.device.type == "cpu" and out.shape == (1, 2048)
    assert res.loaded()["a"].swaps_in == 1 and res.loaded()["a"].loads == 1
