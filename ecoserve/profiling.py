"""Sweeping a device over clock settings and batch sizes: the measurements behind a profile table.

``ecoserve profile`` drives this module. For each setting (CPU frequency, GPU frequency,
batch size) it pins the clocks through the device's actuator, runs warm-up batches of the
real model, then timed batches, and records the median batch time and the meter's energy
over the timed batches. Rows go to the table (``twins.profile_table`` format) as they are
measured, so ``TableTwin`` can replay the board later.

Decisions worth knowing:

- Energy is read once around all timed batches of a setting, not per batch: a sampled meter
  (INA3221 at 100 Hz) cannot resolve a 5 ms batch, but resolves a second of them. The timed
  phase therefore runs at least ``repeats`` batches and at least ``min_seconds``.
- The virtual device stretches each batch by the twin's slowdown (``end_batch`` returns
  extra seconds). The profiler sleeps them, exactly as the runtime does, because the twin's
  meter integrates power over wall-clock time: a profile of a virtual device takes as long
  as serving would, and reproduces what serving would measure.
- Resumable: settings already in the output file are skipped and the file keeps its
  metadata (idle power included). Each row is written by rewriting the whole table to a
  temporary file and renaming it over the old one, so a kill at any moment leaves either
  the previous table or the new one, never half a row.
- Every setting is checked against the device's knob tables before anything is changed: an
  off-table frequency is an error naming the valid values, never rounded.

A tool over the real-time side: may import ``devices``, ``twins`` (the table format) and the
runtime's collation, never the simulator.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from devices.base import Device, DeviceError
from devices.safety import Guard
from ecoserve.core.knobs import CPU, GPU, Knob
from ecoserve.runtime.collate import collate
from twins.profile_table import ProfileRow, read_profile_table, write_profile_table

log = logging.getLogger(__name__)

#: Grid used when ``--grid`` is not given: 4 x 4 clock points, the serving batch sizes.
DEFAULT_GRID = "cpu=4,gpu=4,batch=1,2,4,8,16"
#: Short grid names -> knob names.
GRID_KNOBS = {"cpu": CPU, "gpu": GPU}
#: Metadata that must agree for a resumed run to add rows to an existing table.
RESUME_KEYS = ("board", "model")

SettingKey = tuple[float | None, float | None, int]


class ProfileError(ValueError):
    """The request cannot be profiled as asked (bad grid, off-table value, wrong file)."""


@dataclass(frozen=True)
class Setting:
    """One point of the sweep; a frequency is None when the device has no such knob."""

    cpu_hz: float | None
    gpu_hz: float | None
    batch: int

    @property
    def key(self) -> SettingKey:
        return (self.cpu_hz, self.gpu_hz, self.batch)

    def clocks(self) -> dict[str, float]:
        """The knob values to apply (absent knobs left out)."""
        pairs = ((CPU, self.cpu_hz), (GPU, self.gpu_hz))
        return {name: value for name, value in pairs if value is not None}

    def describe(self) -> str:
        parts = [
            f"{label} {v / 1e6:g} MHz"
            for label, v in (("cpu", self.cpu_hz), ("gpu", self.gpu_hz))
            if v
        ]
        return "  ".join([*parts, f"batch {self.batch}"])


def row_key(row: ProfileRow) -> SettingKey:
    return (row.cpu_freq_hz, row.gpu_freq_hz, int(row.batch_size))


# -- what to sweep ----------------------------------------------------------------------


def parse_grid(text: str) -> dict[str, list[str]]:
    """``cpu=4,gpu=4,batch=1,2,4`` -> ``{"cpu": ["4"], "gpu": ["4"], "batch": ["1","2","4"]}``.

    A bare item continues the list of the last ``key=``, so batch sizes need no quoting.
    """
    grid: dict[str, list[str]] = {}
    key: str | None = None
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item:
            key, _, item = (s.strip() for s in item.partition("="))
            key = key.lower()
            if key not in (*GRID_KNOBS, "batch"):
                raise ProfileError(f"--grid: unknown key {key!r}; use cpu=N, gpu=N, batch=B,B,...")
            if key in grid:
                raise ProfileError(f"--grid: {key} given twice")
            grid[key] = []
        if key is None:
            raise ProfileError(f"--grid: {item!r} comes before any key=")
        if item:
            grid[key].append(item)
    for key, items in grid.items():
        if not items:
            raise ProfileError(f"--grid: {key}= has no value")
    return grid


def strided(values: Sequence[float], count: int) -> list[float]:
    """``count`` values spread evenly over ``values`` (ascending), both ends included.

    One value means the maximum: a knob not being swept is held at full speed.
    """
    if count < 1:
        raise ProfileError(f"--grid: a count must be >= 1, got {count}")
    n = len(values)
    if count >= n:
        return list(values)
    if count == 1:
        return [values[-1]]
    picks = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    return [values[i] for i in picks]


def grid_settings(knobs: Mapping[str, Knob], grid: Mapping[str, Sequence[str]]) -> list[Setting]:
    """The settings a grid spans over the device's knobs, CPU-major, batch innermost.

    ``cpu=N`` / ``gpu=N`` take N points of that knob's table (``all`` for every one); a
    knob the grid does not name is held at its maximum; naming a knob the device lacks is
    logged and ignored (its column stays empty).
    """
    axes: dict[str, list[float | None]] = {}
    for short, name in GRID_KNOBS.items():
        knob = knobs.get(name)
        items = grid.get(short)
        if knob is None:
            if items:
                log.warning("the device has no %s knob: ignoring %s= in --grid", short, short)
            axes[name] = [None]
            continue
        if not items:
            axes[name] = [knob.values[-1]]
            continue
        if len(items) != 1:
            raise ProfileError(
                f"--grid: {short}= takes one count (or 'all'), got {','.join(items)}"
            )
        count = len(knob.values) if items[0].lower() == "all" else _int(items[0], f"{short}=")
        axes[name] = list(strided(knob.values, count))
    batches = [_int(b, "batch=") for b in grid.get("batch", ["1"])]
    if any(b < 1 for b in batches):
        raise ProfileError("--grid: batch sizes must be >= 1")
    return [
        Setting(c, g, b)
        for c in axes[CPU]
        for g in axes[GPU]
        for b in sorted(dict.fromkeys(batches))
    ]


def read_configs(path: str | Path) -> list[Setting]:
    """Settings listed in a file: CSV with columns ``cpu_freq_hz``, ``gpu_freq_hz``
    (Hz, optional, may be empty) and ``batch_size``, or JSON (a list of objects with the
    same keys). ``#`` lines are skipped, so a profile table is itself a valid list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ProfileError(f"--configs: cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"--configs: {path} is not valid JSON: {exc}") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ProfileError(f"--configs: {path} must hold a list of objects")
        entries = [(f"item {i + 1}", r) for i, r in enumerate(records)]
    else:
        lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        lines = [(n, ln) for n, ln in lines if not ln.lstrip().startswith("#")]
        if not lines:
            raise ProfileError(f"--configs: {path} lists no configuration")
        reader = csv.DictReader(ln for _, ln in lines)
        reader.fieldnames = [f.strip().lower() for f in reader.fieldnames or []]
        if "batch_size" not in reader.fieldnames:
            raise ProfileError(
                f"--configs: {path} needs a header with batch_size "
                "(and cpu_freq_hz / gpu_freq_hz in Hz)"
            )
        entries = [(f"line {n}", r) for (n, _), r in zip(lines[1:], reader)]
    settings = [_setting_from(path, where, record) for where, record in entries]
    if not settings:
        raise ProfileError(f"--configs: {path} lists no configuration")
    return settings


def _setting_from(path: Path, where: str, record: Mapping[str, Any]) -> Setting:
    def number(key: str) -> float | None:
        value = record.get(key)
        if value is None or str(value).strip() == "":
            return None
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ProfileError(
                f"--configs: {path} {where}: {key} {value!r} is not a number"
            ) from None
        if not math.isfinite(result) or result <= 0:
            raise ProfileError(f"--configs: {path} {where}: {key} must be > 0, got {value!r}")
        return result

    batch = number("batch_size")
    if batch is None or not batch.is_integer():
        raise ProfileError(f"--configs: {path} {where}: batch_size must be a whole number >= 1")
    return Setting(number("cpu_freq_hz"), number("gpu_freq_hz"), int(batch))


def check_settings(settings: Iterable[Setting], knobs: Mapping[str, Knob]) -> list[Setting]:
    """Settings with every frequency on the device's table; a knob left empty runs at its max.

    Raises ``ProfileError`` for a value off the table (with the valid values) or for a
    frequency given for a knob the device does not have.
    """
    checked = []
    for s in settings:
        values: dict[str, float | None] = {CPU: s.cpu_hz, GPU: s.gpu_hz}
        for name, value in list(values.items()):
            knob = knobs.get(name)
            label = "CPU" if name == CPU else "GPU"
            if knob is None:
                if value is not None:
                    raise ProfileError(
                        f"{s.describe()}: this device has no {label} frequency knob; "
                        f"leave {name} empty"
                    )
                continue
            if value is None:
                values[name] = knob.values[-1]
            elif not any(abs(value - v) <= 0.5 for v in knob.values):
                valid = ", ".join(f"{v / 1e6:g}" for v in knob.values)
                raise ProfileError(
                    f"{value:.0f} Hz is not a {label} operating point of this device; "
                    f"valid values (MHz): {valid}"
                )
            else:
                values[name] = knob.values[knob.index_of(value)]
        checked.append(Setting(values[CPU], values[GPU], s.batch))
    return list(dict.fromkeys(checked))


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProfileError(f"--grid: {what} expects whole numbers, got {text!r}") from None


# -- the output table -------------------------------------------------------------------


class TableWriter:
    """The output table: rows already there (resume) plus each new row, rewritten atomically.

    A table exists only once it has a row (``read_profile_table`` refuses an empty one),
    so an interrupted run that measured nothing leaves no file behind.
    """

    def __init__(self, path: str | Path, metadata: Mapping[str, object]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}
        self.rows: list[ProfileRow] = []
        if self.path.exists():
            table = read_profile_table(self.path)
            for key in RESUME_KEYS:
                theirs, ours = table.metadata.get(key), self.metadata.get(key)
                if theirs is not None and ours is not None and theirs != ours:
                    raise ProfileError(
                        f"{self.path} holds a profile of {key} {theirs!r}, not {ours!r}: "
                        "choose another --out, or delete it to start over"
                    )
            self.metadata = {**self.metadata, **table.metadata}
            self.rows = list(table.rows)

    def done(self) -> set[SettingKey]:
        return {row_key(r) for r in self.rows}

    def add(self, row: ProfileRow) -> None:
        """Append one row and make it durable before returning."""
        self.rows.append(row)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        write_profile_table(tmp, self.rows, self.metadata)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


# -- measuring --------------------------------------------------------------------------


def measure_idle_power(
    device: Device, seconds: float, sleep: Callable[[float], None] = time.sleep
) -> float:
    """Watts the meter reports with no batch running, averaged over ``seconds``."""
    if seconds <= 0:
        return 0.0
    meter = device.meter
    e0, t0 = meter.energy_joules(), time.perf_counter()
    sleep(seconds)
    e1, t1 = meter.energy_joules(), time.perf_counter()
    return max(0.0, e1 - e0) / max(t1 - t0, 1e-9)


def run_past_startup(
    fn: Callable[[Any], Any], items: Sequence[Any], batches: Sequence[int], seconds: float
) -> None:
    """Run the model once per batch size, then at the largest for ``seconds`` in all.

    The first calls of a model pay for allocator, thread-pool and kernel start-up, which
    can last seconds (it does on CPU torch); per-setting warm-up batches (which absorb a
    clock change) are too few to absorb that, and the first setting measured (the slowest clocks) would carry it.
    """
    if not batches:
        return
    inputs = {b: collate([items[i % len(items)] for i in range(b)]) for b in batches}
    start = time.perf_counter()
    for b in batches:
        fn(inputs[b])
    while time.perf_counter() - start < seconds:
        fn(inputs[batches[-1]])


def run_batch(device: Device, fn: Callable[[Any], Any], inputs: Any, batch: int) -> float:
    """One batch through the device's hooks, as the runtime runs it; returns its seconds."""
    device.begin_batch(batch)
    t0 = time.perf_counter()
    try:
        fn(inputs)
        extra = device.end_batch(batch, time.perf_counter() - t0)
        if extra > 0:
            time.sleep(extra)
    finally:
        device.batch_done()
    return time.perf_counter() - t0


def apply_setting(device: Device, setting: Setting) -> None:
    """Pin the clocks; a knob the actuator dropped (permission) is an error, not a skip.

    ``apply`` keeps serving going when a knob is lost; a profile row labelled with a
    frequency that was never set would be worse than no row.
    """
    values = setting.clocks()
    if not values:
        return
    actuator = device.actuator
    actuator.apply(values)
    owned = {k.name for k in actuator.knobs()}
    lost = sorted(set(values) - owned)
    if lost:
        why = "; ".join(actuator.warnings()) or "the actuator no longer offers it"
        raise DeviceError(f"cannot pin {', '.join(lost)}: {why}")
    now = actuator.current()
    for name, want in values.items():
        got = now.get(name)
        if got is not None and abs(got - want) > 0.5:
            log.warning("%s: asked %.0f Hz, the device reports %.0f Hz", name, want, got)


def measure(
    device: Device,
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    setting: Setting,
    *,
    warmup: int,
    repeats: int,
    min_seconds: float = 0.0,
    guard: Guard | None = None,
) -> ProfileRow:
    """Pin ``setting`` and measure it: median batch time, energy over the timed batches."""
    if guard is not None:
        guard.feed()  # the stall clock starts with this setting, before it is applied
    fired = guard.fired_count if guard is not None else 0
    apply_setting(device, setting)
    inputs = collate([items[i % len(items)] for i in range(setting.batch)])
    for _ in range(warmup):
        run_batch(device, fn, inputs, setting.batch)
        if guard is not None:
            guard.feed()
    meter = device.meter
    times: list[float] = []
    e0, t0 = meter.energy_joules(), time.perf_counter()
    while len(times) < repeats or time.perf_counter() - t0 < min_seconds:
        times.append(run_batch(device, fn, inputs, setting.batch))
        if guard is not None:
            guard.feed()
    e1, elapsed = meter.energy_joules(), time.perf_counter() - t0
    if guard is not None and guard.fired_count != fired:
        raise DeviceError(
            f"{setting.describe()}: the watchdog handed the clocks back during the measurement "
            "(a batch took longer than its timeout); raise --watchdog-s"
        )
    joules = e1 - e0
    if not joules > 0:
        raise DeviceError(
            f"{setting.describe()}: meter {device.meter.source} reported no energy over "
            f"{len(times)} batches ({elapsed:.3f} s); raise --min-seconds or choose another --meter"
        )
    return ProfileRow(
        cpu_freq_hz=setting.cpu_hz,
        gpu_freq_hz=setting.gpu_hz,
        batch_size=setting.batch,
        batch_time_s=statistics.median(times),
        power_w=joules / elapsed,
        energy_per_item_j=joules / len(times) / setting.batch,
        n_samples=len(times),
    )


def sweep(
    device: Device,
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    settings: Sequence[Setting],
    writer: TableWriter,
    *,
    warmup: int = 2,
    repeats: int = 10,
    min_seconds: float = 0.0,
    startup_s: float = 0.0,
    guard: Guard | None = None,
    on_row: Callable[[Setting, ProfileRow | None], None] | None = None,
) -> list[ProfileRow]:
    """Measure every setting not yet in ``writer``'s table, writing each row as it comes.

    The model first runs for ``startup_s`` at the clocks found (``run_past_startup``); each
    setting then gets ``warmup`` untimed batches after its clocks are pinned.

    ``on_row(setting, row)`` is called after each setting (``row`` None when it was
    already in the table), for progress display. Returns the rows measured now.
    """
    if repeats < 1 or warmup < 0:
        raise ProfileError("--repeats must be >= 1 and --warmup-batches >= 0")
    done = writer.done()
    todo = [s for s in settings if s.key not in done]
    run_past_startup(fn, items, sorted({s.batch for s in todo}), startup_s)
    measured = []
    for setting in settings:
        if setting.key in done:
            if on_row is not None:
                on_row(setting, None)
            continue
        row = measure(
            device,
            fn,
            items,
            setting,
            warmup=warmup,
            repeats=repeats,
            min_seconds=min_seconds,
            guard=guard,
        )
        writer.add(row)
        done.add(setting.key)
        measured.append(row)
        if on_row is not None:
            on_row(setting, row)
    return measured


def base_metadata(
    *, board: str, model: str, device: Device, warmup: int, repeats: int
) -> dict[str, object]:
    """Metadata for a new table, less ``idle_power_w`` (measured only when not resuming)."""
    return {
        "board": board,
        "model": model,
        "device": device.name,
        "meter": device.meter.source,
        "meter_estimated": str(bool(device.meter.estimated)).lower(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warmup": warmup,
        "repeats": repeats,
    }
