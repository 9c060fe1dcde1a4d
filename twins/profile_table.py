"""The profile table: a measured sweep of a device, and the twin that replays it.

``ecoserve profile`` sweeps a real board over CPU frequency x GPU frequency x batch size and
writes what it measured as a CSV; ``TableTwin`` loads such a table and answers the twin's
questions by interpolating it. A board nobody has fitted a model for gets a twin from its
own measurements this way, with no modelling assumptions beyond interpolation.

Format (UTF-8 CSV)::

    # board: xavier-nx
    # model: resnet50
    # date: 2024-05-01
    # idle_power_w: 4.1
    cpu_freq_hz,gpu_freq_hz,batch_size,batch_time_s,power_w,energy_per_item_j,n_samples
    1907200000,1109250000,1,0.0123,9.8,0.1205,30
    ...

``# key: value`` lines carry metadata (``idle_power_w`` is required by ``TableTwin``;
``noise`` optionally gives the relative std-dev of repeated measurements); other ``#`` lines
are comments. ``power_w`` is whole-board power while batches run back to back. A frequency
column may be left empty on every row when the board has no such knob. ``TableTwin`` needs
the full grid: every CPU x GPU frequency pair at every batch size in the table.
"""

from __future__ import annotations

import csv
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecoserve.core.knobs import CPU, GPU, Knob
from twins.base import DeviceTwin

COLUMNS = (
    "cpu_freq_hz",
    "gpu_freq_hz",
    "batch_size",
    "batch_time_s",
    "power_w",
    "energy_per_item_j",
    "n_samples",
)

#: Batch assumed by a twin's ``power()`` when the caller does not say which batch runs:
#: the EcoEdgeInfer DVFS baseline's batch size, mid-way through the 1..16 it tunes over.
DEFAULT_POWER_BATCH = 8


class ProfileTableError(ValueError):
    """A profile table cannot be read or used; names the file and line where known."""


@dataclass(frozen=True)
class ProfileRow:
    """One measured setting. A frequency is None when the board has no such knob."""

    cpu_freq_hz: float | None
    gpu_freq_hz: float | None
    batch_size: int
    batch_time_s: float
    power_w: float
    energy_per_item_j: float
    n_samples: int = 1

    @classmethod
    def measured(
        cls,
        cpu_freq_hz: float | None,
        gpu_freq_hz: float | None,
        batch_size: int,
        batch_time_s: float,
        power_w: float,
        n_samples: int = 1,
    ) -> ProfileRow:
        """A row whose energy per item is derived from its time and power."""
        return cls(
            cpu_freq_hz,
            gpu_freq_hz,
            int(batch_size),
            float(batch_time_s),
            float(power_w),
            float(power_w) * float(batch_time_s) / int(batch_size),
            int(n_samples),
        )


@dataclass(frozen=True)
class ProfileTable:
    """Rows plus ``# key: value`` metadata (board, model, date, idle_power_w, ...)."""

    rows: tuple[ProfileRow, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)


def _number(value: float) -> str:
    """Shortest text that reads back as the same float; whole numbers without ``.0``."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def write_profile_table(
    path: str | Path, rows: Iterable[ProfileRow], metadata: Mapping[str, object] | None = None
) -> None:
    """Write a table; metadata keys and values must fit on one line each."""
    lines: list[str] = []
    for key, value in (metadata or {}).items():
        text = str(value)
        if "\n" in text or "\n" in key or ":" in key or not key.strip():
            raise ValueError(f"metadata key/value must be one line without ':' in the key: {key!r}")
        lines.append(f"# {key}: {text}")
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        for line in lines:
            handle.write(line + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(
                [
                    "" if r.cpu_freq_hz is None else _number(r.cpu_freq_hz),
                    "" if r.gpu_freq_hz is None else _number(r.gpu_freq_hz),
                    str(int(r.batch_size)),
                    _number(r.batch_time_s),
                    _number(r.power_w),
                    _number(r.energy_per_item_j),
                    str(int(r.n_samples)),
                ]
            )


def read_profile_table(path: str | Path) -> ProfileTable:
    """Read a table, checking every value; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile table not found: {path}")

    def fail(line: int | None, message: str) -> ProfileTableError:
        where = f"{path} line {line}" if line is not None else str(path)
        return ProfileTableError(f"{where}: {message}")

    metadata: dict[str, str] = {}
    rows: list[ProfileRow] = []
    header: list[str] | None = None
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, text in enumerate(handle, start=1):
            stripped = text.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                key, sep, value = stripped[1:].partition(":")
                if sep and key.strip() and " " not in key.strip():
                    metadata[key.strip()] = value.strip()
                continue
            cells = [c.strip() for c in next(csv.reader([stripped]))]
            if header is None:
                header = [c.lower() for c in cells]
                if tuple(header) != COLUMNS:
                    raise fail(
                        number, f"header must be {','.join(COLUMNS)}; found {','.join(cells)}"
                    )
                continue
            if len(cells) != len(COLUMNS):
                raise fail(number, f"expected {len(COLUMNS)} fields, found {len(cells)}")
            rows.append(_parse_row(cells, functools.partial(fail, number)))
    if header is None:
        raise fail(None, f"empty table: expected the header {','.join(COLUMNS)}")
    if not rows:
        raise fail(None, "no rows after the header")
    for column in ("cpu_freq_hz", "gpu_freq_hz"):
        present = {getattr(r, column) is None for r in rows}
        if len(present) > 1:
            raise fail(None, f"{column} is empty on some rows only: leave it empty on all or none")
    return ProfileTable(rows=tuple(rows), metadata=metadata)


def _parse_row(cells: Sequence[str], fail: Callable[[str], ProfileTableError]) -> ProfileRow:
    """One data row; ``fail(message)`` builds the error naming its line."""

    def number(index: int, allow_empty: bool = False) -> float | None:
        text = cells[index]
        if allow_empty and text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise fail(f"{COLUMNS[index]}: cannot parse {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise fail(f"{COLUMNS[index]}: {text!r} must be a finite number > 0")
        return value

    batch = number(2)
    samples = number(6)
    assert batch is not None and samples is not None
    if not batch.is_integer() or not samples.is_integer():
        raise fail("batch_size and n_samples must be whole numbers")
    time_s, power, energy = number(3), number(4), number(5)
    assert time_s is not None and power is not None and energy is not None
    return ProfileRow(
        cpu_freq_hz=number(0, allow_empty=True),
        gpu_freq_hz=number(1, allow_empty=True),
        batch_size=int(batch),
        batch_time_s=time_s,
        power_w=power,
        energy_per_item_j=energy,
        n_samples=int(samples),
    )


def _bracket(values: np.ndarray, x: float) -> tuple[int, int, float]:
    """Indices around ``x`` in ascending ``values`` and the weight of the upper one.

    Outside the range the nearest end is used (weight 0 or 1): frequencies come from the
    table's own knobs, so clamping only matters for callers asking off-grid.
    """
    if values.size == 1 or x <= values[0]:
        return 0, 0, 0.0
    if x >= values[-1]:
        last = values.size - 1
        return last, last, 0.0
    hi = int(np.searchsorted(values, x, side="right"))
    lo = hi - 1
    return lo, hi, float((x - values[lo]) / (values[hi] - values[lo]))


class TableTwin(DeviceTwin):
    """A twin that interpolates a profile table.

    Batch time and busy power are bilinear in (CPU frequency, GPU frequency) between the
    table's grid points and linear in batch size between its batch sizes. Beyond the
    largest (or below the smallest) batch, time is extrapolated linearly from the two end
    batch sizes (batch time is close to affine in the batch there) and power is held at the
    end value (a full GPU draws no more). Idle power is the table's ``idle_power_w``.
    """

    def __init__(
        self, table: ProfileTable, noise: float | None = None, name: str | None = None
    ) -> None:
        meta = table.metadata
        if "idle_power_w" not in meta:
            raise ProfileTableError("profile table metadata lacks '# idle_power_w: <watts>'")
        try:
            self.idle_w = float(meta["idle_power_w"])
        except ValueError:
            raise ProfileTableError(
                f"idle_power_w {meta['idle_power_w']!r} is not a number"
            ) from None
        if not (math.isfinite(self.idle_w) and self.idle_w >= 0):
            raise ProfileTableError(f"idle_power_w must be >= 0 W, got {self.idle_w}")
        self.table = table
        self.name = name or f"table:{meta.get('board', 'device')}"
        self.noise = float(meta.get("noise", 0.0)) if noise is None else float(noise)
        rows = table.rows
        cpus = sorted({r.cpu_freq_hz for r in rows if r.cpu_freq_hz is not None})
        gpus = sorted({r.gpu_freq_hz for r in rows if r.gpu_freq_hz is not None})
        self._cpu = np.asarray(cpus or [1.0])
        self._gpu = np.asarray(gpus or [1.0])
        self._has_cpu, self._has_gpu = bool(cpus), bool(gpus)
        self._batch = np.asarray(sorted({r.batch_size for r in rows}), dtype=np.float64)
        shape = (self._cpu.size, self._gpu.size, self._batch.size)
        self._time = np.full(shape, np.nan)
        self._power = np.full(shape, np.nan)
        for r in rows:
            cpu, gpu = r.cpu_freq_hz, r.gpu_freq_hz
            if (cpu is None) == self._has_cpu or (gpu is None) == self._has_gpu:
                raise ProfileTableError(
                    "a frequency is empty on some rows only: leave it empty on all or none"
                )
            i = int(np.searchsorted(self._cpu, cpu)) if cpu is not None else 0
            j = int(np.searchsorted(self._gpu, gpu)) if gpu is not None else 0
            k = int(np.searchsorted(self._batch, r.batch_size))
            if not np.isnan(self._time[i, j, k]):
                raise ProfileTableError(
                    f"duplicate setting cpu={r.cpu_freq_hz} gpu={r.gpu_freq_hz} batch={r.batch_size}"
                )
            self._time[i, j, k] = r.batch_time_s
            self._power[i, j, k] = r.power_w
        missing = np.argwhere(np.isnan(self._time))
        if missing.size:
            i, j, k = missing[0]
            raise ProfileTableError(
                f"profile table is not a full grid: {len(missing)} settings missing, e.g. "
                f"cpu={self._cpu[i] if self._has_cpu else None} "
                f"gpu={self._gpu[j] if self._has_gpu else None} batch={int(self._batch[k])}"
            )

    @classmethod
    def from_path(cls, path: str | Path, noise: float | None = None) -> TableTwin:
        table = read_profile_table(path)
        try:
            return cls(table, noise=noise)
        except ProfileTableError as exc:
            raise ProfileTableError(f"{path}: {exc}") from None

    def knobs(self) -> list[Knob]:
        knobs = []
        if self._has_cpu:
            knobs.append(Knob(CPU, tuple(float(v) for v in self._cpu)))
        if self._has_gpu:
            knobs.append(Knob(GPU, tuple(float(v) for v in self._gpu)))
        return knobs

    def _plane(self, grid: np.ndarray, freqs: Mapping[str, float]) -> np.ndarray:
        """The grid bilinearly interpolated at these frequencies: one value per batch size."""
        ci, cj, cw = _bracket(self._cpu, float(freqs.get(CPU, self._cpu[-1])))
        gi, gj, gw = _bracket(self._gpu, float(freqs.get(GPU, self._gpu[-1])))
        low = grid[ci] * (1 - cw) + grid[cj] * cw
        return low[gi] * (1 - gw) + low[gj] * gw

    def _in_batch(self, values: np.ndarray, batch: float, extrapolate: bool) -> float:
        b = self._batch
        if b.size == 1:
            return float(values[0])
        if batch < b[0] or batch > b[-1]:
            if not extrapolate:
                return float(values[0] if batch < b[0] else values[-1])
            lo, hi = (0, 1) if batch < b[0] else (b.size - 2, b.size - 1)
            slope = (values[hi] - values[lo]) / (b[hi] - b[lo])
            return float(values[lo] + slope * (batch - b[lo]))
        return float(np.interp(batch, b, values))

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        if batch < 1:
            raise ValueError(f"batch size must be >= 1, got {batch}")
        t = self._in_batch(self._plane(self._time, freqs), batch, extrapolate=True)
        # Linear extrapolation below the smallest batch could reach zero; time never does.
        floor = float(self._plane(self._time, freqs)[0]) * batch / self._batch[0]
        return max(t, floor) if batch < self._batch[0] else t

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        """Watts at activity ``busy``: idle plus ``busy`` times the table's extra busy power."""
        if not 0.0 <= busy <= 1.0:
            raise ValueError(f"busy must be within 0..1, got {busy}")
        b = DEFAULT_POWER_BATCH if batch is None else batch
        active = self._in_batch(self._plane(self._power, freqs), b, extrapolate=False)
        return self.idle_w + busy * (active - self.idle_w)


def table_from_twin(
    twin: DeviceTwin,
    batches: Iterable[int],
    metadata: Mapping[str, object] | None = None,
) -> ProfileTable:
    """A noise-free table sampled from any twin at its knobs' values and these batches.

    Used to export a fitted twin in the format a real profile has (and to test that the
    format round-trips). The twin's idle power goes into ``idle_power_w``.
    """
    knobs = {k.name: k.values for k in twin.knobs()}
    cpus: Sequence[float | None] = knobs.get(CPU) or (None,)
    gpus: Sequence[float | None] = knobs.get(GPU) or (None,)
    takes_batch = "batch" in inspect.signature(twin.power).parameters
    rows = []
    for fc in cpus:
        for fg in gpus:
            freqs = {n: v for n, v in ((CPU, fc), (GPU, fg)) if v is not None}
            for b in batches:
                p = twin.power(freqs, 1.0, batch=b) if takes_batch else twin.power(freqs, 1.0)
                rows.append(ProfileRow.measured(fc, fg, b, twin.batch_time(b, freqs), p))
    meta: dict[str, str] = {"board": twin.name}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    meta.setdefault("idle_power_w", repr(twin.power(twin.max_freqs(), 0.0)))
    return ProfileTable(rows=tuple(rows), metadata=meta)
