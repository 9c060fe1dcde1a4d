"""Which models are resident, under a memory budget, with the least recently used swapped out.

An edge board runs out of memory before it runs out of compute: Liang, Shenoy and Irwin (section
6) saw a 66 MB model take 1,244 MB once its runtime was loaded, and saw host-memory swapping
raise the number of models a board could serve. So a model's size here is what it costs once
loaded, measured, never its file size:

- **Measured at load** (``measure_resident``): growth of the process's resident set (psutil RSS)
  over the load and one example batch, plus, where CUDA is initialised, growth of
  ``torch.cuda.memory_allocated``; each side never less than the bytes of the parameters and
  buffers the model's ``nn.Module`` holds there. Each later load or move is measured again and
  the largest figure is kept: freed memory the allocator reuses makes a reload look smaller
  than the model is. The figure is an estimate: other threads allocating during a load add to
  it (loads are serialised, batches of other models are not); the first model loaded also
  carries the framework's one-time start-up memory; memory other runtimes allocate on the GPU
  (ONNX Runtime's or TensorRT's arenas) is not in ``memory_allocated``; and where a unified-
  memory driver maps GPU allocations into the process, they may be counted twice (errs towards
  fewer models resident, never more).
- **Tiers.** ``device`` holds the models ready to run (with no accelerator, that is host RAM).
  Given a ``Mover`` (a discrete CUDA device: ``default_mover``), a model evicted from the device
  is held in the ``host`` tier, under its own budget, and moved back on demand, which is faster
  than loading it again; past the host budget it is unloaded. A model is then loaded into host
  memory (its host figure) and moved (its device figure: GPU memory only, since the first move's
  RSS growth is CUDA's start-up). On unified memory (Jetson) both tiers are the same DRAM, so
  there is no host tier there.
- **Budget.** Only the measured figures count against it, not the live RSS (freed memory the
  allocator keeps is not given back to the board). A model's first load, before its size is
  known, makes room for its ``size_hint`` only; if it turns out too big, more idle models are
  evicted after the load. A model that alone exceeds the budget is refused
  (``ModelTooLargeError``); one that does not fit beside the models running a batch is refused
  for now (``MemoryBudgetError``: retry when a batch finishes).

Thread-safety: a state lock guards the bookkeeping and is held only briefly; a second lock
serialises loads, moves and unloads (one at a time also keeps each RSS measurement clean). The
event loop may call the non-blocking methods: ``try_acquire``, ``release``, ``register``,
``loaded``, ``describe``. ``acquire``, ``use``, ``unload`` and ``unregister`` block (they may run
the loader, or wait for a load in progress): call them from a worker thread.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, Literal, Protocol, TypeVar

import psutil
import torch
from torch import nn

from ecoserve.models.loader import LoadedModel

log = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")

Tier = Literal["device", "host", "absent"]


@dataclass(frozen=True)
class Footprint:
    """Bytes a load or a move made resident: in host memory, and on the CUDA device."""

    host: int
    device: int = 0

    @property
    def total(self) -> int:
        return self.host + self.device


#: Runs a load or a move and returns its result with what it made resident.
Measure = Callable[[Callable[[], M]], tuple[M, Footprint]]

MiB = 1 << 20
#: Memory kept back from the default budget: the OS, the daemon and its framework need it.
RESERVE_MIN = 512 * MiB
RESERVE_FRACTION = 0.10

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_memory(text: str | int) -> int:
    """Bytes from ``"3GiB"``, ``"512MiB"``, ``"2.5GB"`` or plain bytes; ValueError says the fix.

    Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB) units, any case; a bare ``G`` is
    refused because it means 2^30 to some tools and 10^9 to others.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"memory amount {text!r} must be text like '3GiB' or a number of bytes")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"memory amount {text} must be a positive number of bytes")
        return text
    match = _AMOUNT.match(text)
    if match is None:
        raise ValueError(
            f"memory amount {text!r} not understood: give a number and a unit, "
            "like '3GiB', '512MiB', '2.5GB', or plain bytes"
        )
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        hint = ""
        if unit.lower() in ("k", "m", "g", "t"):
            hint = f" ('{number}{unit}iB' for binary, '{number}{unit}B' for decimal)"
        raise ValueError(
            f"memory amount {text!r} has an unknown unit {unit!r}{hint}; "
            "use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    value = Fraction(number) * factor
    if factor == 1 and value.denominator != 1:
        raise ValueError(f"memory amount {text!r}: bytes must be whole; add a unit like 'MiB'")
    if value < 1:
        raise ValueError(f"memory amount {text!r} must be at least one byte")
    return int(value)


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``"1.2 GiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def default_budget(total: int | None = None) -> int:
    """``total`` (default: the board's RAM) less a reserve of max(512 MiB, 10%) for the rest."""
    if total is None:
        total = int(psutil.virtual_memory().total)
    reserve = max(RESERVE_MIN, int(total * RESERVE_FRACTION))
    if total <= reserve:
        raise ValueError(
            f"the board has {format_bytes(total)} of memory, no more than the "
            f"{format_bytes(reserve)} kept for the system: set --memory-budget explicitly"
        )
    return total - reserve


def parameter_bytes(model: Any, where: Literal["host", "device"] | None = None) -> int:
    """Bytes of the parameters and buffers of ``model`` (an ``nn.Module`` or has ``.module``):
    all of them, or those in host memory (on the CPU) or on an accelerator."""
    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    if where is not None:
        tensors = [t for t in tensors if (t.device.type == "cpu") == (where == "host")]
    return sum(t.numel() * t.element_size() for t in tensors)


def _cuda_allocated() -> int:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.memory_allocated())


def _first_batch(model: Any) -> None:
    """One example batch, so the runtime's workspace is in the figure (the paper's point)."""
    example = getattr(model, "example_item", None)
    batch_fn = getattr(model, "batch_fn", None)
    if not callable(example) or not callable(batch_fn):
        return
    try:
        item = example()
    except ValueError:  # no declared input shape: nothing to run
        return
    try:
        batch_fn([item])
    except Exception as exc:  # a user model may fail on a random item; the load still counts
        log.warning("measuring %s without a first batch: it failed (%s)", model, exc)


def measure_resident(action: Callable[[], T]) -> tuple[T, Footprint]:
    """Run ``action`` (a load or a move) and one example batch; what they made resident, each
    side no less than the parameters and buffers the model holds there."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    cuda_before = _cuda_allocated()
    model = action()
    _first_batch(model)
    host = max(0, process.memory_info().rss - rss_before, parameter_bytes(model, "host"))
    device = max(0, _cuda_allocated() - cuda_before, parameter_bytes(model, "device"))
    return model, Footprint(host, device)


def release_memory() -> None:
    """Collect unloaded models now and hand CUDA's cached blocks back to other libraries."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Mover(Protocol[M]):
    """Moves a loaded model between the accelerator (``device``) and host memory."""

    def can_move(self, model: M) -> bool: ...

    def to_device(self, model: M) -> M: ...

    def to_host(self, model: M) -> M: ...


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


@dataclass(frozen=True)
class TorchMover:
    """Moves a ``LoadedModel``'s ``nn.Module``; its batch function then takes and gives CPU
    tensors as before. Models without a module (ONNX sessions, plain callables) stay put."""

    device: str = "cuda"

    def can_move(self, model: LoadedModel) -> bool:
        return model.module is not None

    def to_device(self, model: LoadedModel) -> LoadedModel:
        assert model.module is not None, "to_device on a model without an nn.Module"
        target = torch.device(self.device)
        cpu = torch.device("cpu")
        model.module.to(target)
        inner = model.batch_fn

        @functools.wraps(inner)
        def run(batch: Any) -> Any:
            return _to(inner(_to(batch, target)), cpu)

        if target.type == "cuda":
            torch.cuda.synchronize(target)  # the copy's time belongs to this swap-in
        return dataclasses.replace(model, batch_fn=run)

    def to_host(self, model: LoadedModel) -> LoadedModel:
        assert model.module is not None, "to_host on a model without an nn.Module"
        model.module.to("cpu")
        inner = getattr(model.batch_fn, "__wrapped__", model.batch_fn)
        return dataclasses.replace(model, batch_fn=inner)


def default_mover() -> TorchMover | None:
    """A host tier only where an accelerator has memory of its own (a discrete CUDA GPU)."""
    if not torch.cuda.is_available():
        return None
    if torch.cuda.get_device_properties(0).is_integrated:
        return None  # unified memory: "host" is the same DRAM, moving frees nothing
    return TorchMover("cuda")


class ResidencyError(Exception):
    """A model cannot be made resident (the subclasses say why and what to do)."""


class MemoryBudgetError(ResidencyError):
    """No room now: the models holding the budget are running batches. Transient (a 503 with
    Retry-After): room comes back when a batch finishes."""

    def __init__(self, name: str, needed: int, budget: int, busy: list[str]) -> None:
        self.name, self.needed, self.budget, self.busy = name, needed, budget, busy
        super().__init__(
            f"no room for model {name!r} ({format_bytes(needed)}) in the memory budget "
            f"{format_bytes(budget)}: it is held by models running a batch ({', '.join(busy)}); "
            "retry when a batch finishes, or raise --memory-budget"
        )


class ModelTooLargeError(ResidencyError):
    """The model alone takes more than the budget: retrying will not help."""

    def __init__(self, name: str, size: int, budget: int) -> None:
        self.name, self.size, self.budget = name, size, budget
        super().__init__(
            f"model {name!r} takes {format_bytes(size)} once loaded (measured: memory growth "
            f"over its load and a first batch), more than the memory budget "
            f"{format_bytes(budget)}; raise --memory-budget (e.g. --memory-budget "
            f"{-(-size // MiB)}MiB) or serve a smaller or quantised model"
        )


class ModelInUseError(ResidencyError):
    """An explicit unload of a model still running a batch."""

    def __init__(self, name: str, batches: int) -> None:
        self.name, self.batches = name, batches
        super().__init__(
            f"model {name!r} is running {batches} batch(es); unload it when they finish"
        )


class UnknownModelError(ResidencyError, LookupError):
    """A name that was never registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"no model named {name!r} is registered (registered: {listed})")


@dataclass(frozen=True)
class Swap(Generic[M]):
    """What ``acquire`` brought: the model, pinned until ``release``, and what it cost.

    ``load_s`` is the time this call spent bringing the model in (loading, moving it from host,
    or waiting for another call's load of it): the server adds it to the request's latency.
    """

    name: str
    model: M
    load_s: float
    source: Literal["resident", "host", "storage"]
    evicted: tuple[str, ...] = ()
    demoted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A snapshot of one model's residency, as ``loaded`` and ``describe`` report it."""

    name: str
    tier: Tier
    #: What it takes in its tier (0 when absent); the largest figure measured there.
    bytes: int
    device_bytes: int | None
    host_bytes: int | None
    size_hint: int | None
    last_used: float | None
    loads: int
    swaps_in: int
    load_s_total: float
    in_use: int


@dataclass
class _Record(Generic[M]):
    name: str
    size_hint: int | None
    tier: Tier = "absent"
    model: M | None = None
    device_bytes: int | None = None
    host_bytes: int | None = None
    pins: int = 0
    seq: int = 0
    last_used: float | None = None
    loads: int = 0
    swaps_in: int = 0
    load_s_total: float = 0.0

    def bytes_in(self, tier: Tier) -> int:
        if self.tier != tier:
            return 0
        figure = self.device_bytes if tier == "device" else self.host_bytes
        return figure or 0

    def entry(self) -> Entry:
        return Entry(
            name=self.name,
            tier=self.tier,
            bytes=self.bytes_in(self.tier),
            device_bytes=self.device_bytes,
            host_bytes=self.host_bytes,
            size_hint=self.size_hint,
            last_used=self.last_used,
            loads=self.loads,
            swaps_in=self.swaps_in,
            load_s_total=self.load_s_total,
            in_use=self.pins,
        )


@dataclass
class _Plan(Generic[M]):
    """Evictions decided under the state lock, carried out after it is let go."""

    #: Device models to move to host memory, with the model each one held.
    moves: list[tuple[_Record[M], M]] = dataclasses.field(default_factory=list)
    #: Names unloaded from every tier, and names moved to host memory, in order.
    evicted: tuple[str, ...] = ()
    demoted: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Figures:
    """What one bring-in measured: applied to the record under the state lock."""

    host_bytes: int | None
    device_bytes: int
    seconds: float
    from_host: bool


def _positive(value: int | None, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive number of bytes, got {value!r}")


class Residency(Generic[M]):
    """The models resident under ``budget_bytes``, loaded by ``loader(name)`` on demand.

    With a ``mover``, models evicted from the device wait in host memory under
    ``host_budget_bytes`` (default: ``default_budget()``). ``measure`` runs a load or a move
    and returns the bytes it made resident (``measure_resident``); ``collect`` frees what
    unloaded models held; ``clock`` times loads and last uses.
    """

    def __init__(
        self,
        budget_bytes: int,
        loader: Callable[[str], M],
        *,
        measure: Measure[M] = measure_resident,
        mover: Mover[M] | None = None,
        host_budget_bytes: int | None = None,
        collect: Callable[[], None] = release_memory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _positive(budget_bytes, "the memory budget")
        _positive(host_budget_bytes, "the host memory budget")
        if host_budget_bytes is not None and mover is None:
            raise ValueError("a host memory budget needs a mover (a host tier): pass mover=")
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = (
            (host_budget_bytes or default_budget()) if mover is not None else None
        )
        self._loader = loader
        self._measure = measure
        self._mover = mover
        self._collect = collect
        self._clock = clock
        self._records: dict[str, _Record[M]] = {}
        self._seq = 0
        self._lock = threading.Lock()  # the bookkeeping; held briefly, never over a load
        self._transit = threading.Lock()  # loads, moves and unloads, one at a time

    # -- registration (non-blocking) ---------------------------------------------------------

    def register(self, name: str, size_hint: int | None = None) -> None:
        """Make ``name`` loadable; ``size_hint`` is the room made before its first load."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a model name must be non-empty text, got {name!r}")
        _positive(size_hint, f"the size hint of model {name!r}")
        with self._lock:
            record = self._records.get(name)
            if record is None:
                self._records[name] = _Record(name, size_hint)
            else:
                record.size_hint = size_hint

    # -- acquire and release -----------------------------------------------------------------

    def try_acquire(self, name: str) -> Swap[M] | None:
        """The model pinned if it is on the device now, else None. Never blocks."""
        with self._lock:
            record = self._record(name)
            if record.tier != "device" or record.model is None:
                return None
            return Swap(name, self._pin(record), 0.0, "resident")

    def acquire(self, name: str) -> Swap[M]:
        """The model pinned on the device, loaded or moved there first if it is not. Blocks.

        Evicts idle models, least recently used first, to make room. Raises
        ``ModelTooLargeError``, ``MemoryBudgetError`` or whatever the loader raises.
        """
        fast = self.try_acquire(name)
        if fast is not None:
            return fast
        start = self._clock()
        with self._transit:
            with self._lock:
                record = self._record(name)
                if record.tier == "device" and record.model is not None:
                    # Another call loaded it while this one waited: the wait is its cost.
                    return Swap(name, self._pin(record), self._clock() - start, "resident")
                held = record.model if record.tier == "host" else None
                known = record.device_bytes
                if known is not None and known > self.budget_bytes:
                    raise ModelTooLargeError(name, known, self.budget_bytes)
                need = known if known is not None else min(record.size_hint or 0, self.budget_bytes)
                first = self._plan_room(need, record)
                assert first is not None
                record.tier, record.model = "absent", None  # in transit until it is in
            self._carry_out(first)
            try:
                model, figures = self._bring_in(name, held)
            except BaseException:
                self._collect()
                raise
            with self._lock:
                self._account(record, figures)
                size = record.device_bytes or 0
                second = self._plan_room(size, record, or_none=True)
                if second is None:
                    error: ResidencyError = (
                        ModelTooLargeError(name, size, self.budget_bytes)
                        if size > self.budget_bytes
                        else MemoryBudgetError(name, size, self.budget_bytes, self._busy())
                    )
                else:
                    record.tier, record.model = "device", model
                    pinned = self._pin(record)
                    swap = Swap(
                        name,
                        pinned,
                        self._clock() - start,
                        "host" if held is not None else "storage",
                        evicted=first.evicted + second.evicted,
                        demoted=first.demoted + second.demoted,
                    )
            if second is None:
                del model
                self._collect()
                raise error
            self._carry_out(second)
            return swap

    def release(self, name: str) -> None:
        """Unpin a model ``acquire`` returned, once its batch is done. Never blocks."""
        with self._lock:
            record = self._record(name)
            if record.pins <= 0:
                raise ValueError(f"release of model {name!r}, which no acquire is holding")
            record.pins -= 1
            self._touch(record)

    @contextmanager
    def use(self, name: str) -> Iterator[Swap[M]]:
        """``acquire`` for the length of a ``with`` block (a batch); blocks as ``acquire``."""
        swap = self.acquire(name)
        try:
            yield swap
        finally:
            self.release(name)

    # -- explicit unloads (blocking) ---------------------------------------------------------

    def unload(self, name: str) -> bool:
        """Unload ``name`` from every tier (it loads again when called); False if it was not
        loaded. ``ModelInUseError`` while it runs a batch. Blocks for a load in progress."""
        with self._transit:
            with self._lock:
                record = self._record(name)
                if record.pins:
                    raise ModelInUseError(name, record.pins)
                was = record.tier != "absent"
                record.tier, record.model = "absent", None
            if was:
                self._collect()
            return was

    def unregister(self, name: str) -> None:
        """Unload ``name`` and forget it. Blocks as ``unload``."""
        self.unload(name)
        with self._lock:
            self._records.pop(name, None)

    # -- reports (non-blocking) --------------------------------------------------------------

    def loaded(self) -> dict[str, Entry]:
        """The models resident in some tier, by name."""
        with self._lock:
            return {n: r.entry() for n, r in self._records.items() if r.tier != "absent"}

    def describe(self) -> dict[str, Any]:
        """JSON-ready state for ``/v1/status``: budgets, use, and every registered model."""
        with self._lock:
            now = self._clock()
            models = []
            for name in sorted(self._records):
                entry = dataclasses.asdict(self._records[name].entry())
                last = entry.pop("last_used")
                entry["idle_s"] = None if last is None else round(now - last, 3)
                models.append(entry)
            out: dict[str, Any] = {
                "tiers": ["device", "host"] if self._mover is not None else ["device"],
                "budget_bytes": self.budget_bytes,
                "used_bytes": self._used("device"),
                "host_budget_bytes": self.host_budget_bytes,
                "host_used_bytes": self._used("host") if self._mover is not None else None,
                "models": models,
            }
            return out

    # -- internals ---------------------------------------------------------------------------

    def _record(self, name: str) -> _Record[M]:
        record = self._records.get(name)
        if record is None:
            raise UnknownModelError(name, list(self._records))
        return record

    def _touch(self, record: _Record[M]) -> None:
        self._seq += 1
        record.seq = self._seq
        record.last_used = self._clock()

    def _pin(self, record: _Record[M]) -> M:
        assert record.model is not None
        record.pins += 1
        self._touch(record)
        return record.model

    def _used(self, tier: Tier) -> int:
        return sum(r.bytes_in(tier) for r in self._records.values())

    def _busy(self) -> list[str]:
        return sorted(r.name for r in self._records.values() if r.pins and r.tier == "device")

    def _plan_room(self, need: int, keep: _Record[M], *, or_none: bool = False) -> _Plan[M] | None:
        """Evict idle device models, least recently used first, until ``need`` bytes fit beside
        the rest. Under the state lock. Where they cannot, nothing is evicted and it raises
        MemoryBudgetError, or returns None if ``or_none``."""
        idle = sorted(
            (r for r in self._records.values() if r.tier == "device" and not r.pins and r != keep),
            key=lambda r: r.seq,
        )
        free = self.budget_bytes - self._used("device")
        victims: list[_Record[M]] = []
        for record in idle:
            if free >= need:
                break
            victims.append(record)
            free += record.bytes_in("device")
        if free < need:
            if or_none:
                return None
            raise MemoryBudgetError(keep.name, need, self.budget_bytes, self._busy())
        plan: _Plan[M] = _Plan()
        for record in victims:
            model = record.model
            assert model is not None
            record.tier, record.model = "absent", None
            if self._make_host_room(record, model, plan):
                record.tier = "host"
                plan.moves.append((record, model))
                plan.demoted += (record.name,)
            else:
                plan.evicted += (record.name,)
        return plan

    def _make_host_room(self, record: _Record[M], model: M, plan: _Plan[M]) -> bool:
        """Whether ``record`` can wait in host memory, unloading older host models for room."""
        if self._mover is None or not self._mover.can_move(model):
            return False
        assert self.host_budget_bytes is not None
        size = record.host_bytes or record.device_bytes or 0
        if size > self.host_budget_bytes:
            return False
        waiting = sorted(
            (r for r in self._records.values() if r.tier == "host" and r.model is not None),
            key=lambda r: r.seq,
        )
        free = self.host_budget_bytes - self._used("host")
        for old in waiting:
            if free >= size:
                break
            free += old.bytes_in("host")
            old.tier, old.model = "absent", None
            plan.evicted += (old.name,)
        return free >= size

    def _carry_out(self, plan: _Plan[M]) -> None:
        """Move or free the models a plan evicted. Under the transit lock, not the state lock."""
        mover = self._mover
        for record, model in plan.moves:
            assert mover is not None
            try:
                moved = mover.to_host(model)
            except Exception as exc:  # a failed move must not take the serving down
                log.warning(
                    "could not move model %s to host memory (%s): unloaded", record.name, exc
                )
                with self._lock:
                    record.tier = "absent"
                continue
            with self._lock:
                record.model = moved
        plan.moves.clear()  # the plan holds no model past this point
        if plan.evicted or plan.demoted:
            self._collect()

    def _bring_in(self, name: str, held: M | None) -> tuple[M, _Figures]:
        """Load the model, or move it from host memory, measured and timed. Transit lock only."""
        t0 = self._clock()
        mover = self._mover
        host_bytes: int | None = None
        # With a mover the tiers are separate memories: a move counts its device side only
        # (the host side of the first move holds CUDA's own start-up, no model's).
        if held is not None:
            assert mover is not None
            model, moved = self._measure(lambda: mover.to_device(held))
            size = moved.device
        else:
            model, loaded = self._measure(lambda: self._loader(name))
            size = loaded.total
            if mover is not None and mover.can_move(model):
                host_bytes, on_host = loaded.total, model
                model, moved = self._measure(lambda: mover.to_device(on_host))
                size = moved.device
        return model, _Figures(host_bytes, size, self._clock() - t0, held is not None)

    def _account(self, record: _Record[M], figures: _Figures) -> None:
        """Keep the largest figure measured in each tier, and count the load or swap-in."""
        record.device_bytes = max(record.device_bytes or 0, figures.device_bytes)
        if figures.host_bytes is not None:
            record.host_bytes = max(record.host_bytes or 0, figures.host_bytes)
        if figures.from_host:
            record.swaps_in += 1
        else:
            record.loads += 1
        record.load_s_total += figures.seconds


def board_residency(
    loader: Callable[[str], LoadedModel], budget_bytes: int | None = None
) -> Residency[LoadedModel]:
    """The residency for this board: ``budget_bytes`` (``--memory-budget``) or a default budget
    of the accelerator's memory (discrete GPU, with host RAM as the second tier) or of RAM."""
    mover = default_mover()
    if mover is None:
        return Residency(budget_bytes or default_budget(), loader)
    device_total = int(torch.cuda.mem_get_info()[1])
    return Residency(
        budget_bytes or default_budget(device_total),
        loader,
        mover=mover,
        host_budget_bytes=default_budget(),
    )
