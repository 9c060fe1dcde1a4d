"""Reading arrival traces from CSV files.

Real traces arrive in many shapes; this loader takes any CSV with a header row and one
timestamp column, found by name (any case):

- ``timestamp`` or ``timestamp_s``: seconds as numbers, or date-time strings such as the
  Azure LLM inference trace's ``2023-11-16 18:17:03.9799600`` (ISO 8601 date and time with
  any number of fractional digits and an optional ``Z`` / ``+hh:mm`` offset);
- ``timestamp_ms``: milliseconds as numbers.

Other columns are ignored, lines starting with ``#`` are comments. Times are made relative
to the first request.

Many published traces are binned: every request in the same second (or millisecond) carries
the same timestamp. Replaying them as written would turn each bin into a burst that never
happened, so requests sharing a timestamp are spread uniformly at random (seeded, hence
reproducible) over their bin. The bin width is the timestamp resolution: 1 unit when every
timestamp is a whole number of its unit, otherwise the smallest positive gap between
distinct timestamps.
"""

from __future__ import annotations

import calendar
import csv
import math
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from traces.trace import Trace

#: Accepted timestamp column names (matched case-insensitively) and their unit in seconds.
TIMESTAMP_COLUMNS: dict[str, float] = {"timestamp": 1.0, "timestamp_s": 1.0, "timestamp_ms": 1e-3}

_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?"
)


class TraceFormatError(ValueError):
    """A trace file cannot be read; the message names the file and, where known, the line."""


def _error(path: Path, line: int | None, message: str) -> TraceFormatError:
    where = f"{path} line {line}" if line is not None else str(path)
    return TraceFormatError(f"{where}: {message}")


def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank, non-comment line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    yield number, line
    except UnicodeDecodeError as exc:
        raise _error(path, None, f"not a text (UTF-8) file: {exc}") from None


def _parse_datetime(text: str) -> tuple[int, float] | None:
    """(whole seconds since the epoch, fraction of a second), or None if not a date-time.

    Kept as two parts because a float64 of seconds since 1970 only resolves about 0.2 µs;
    the Azure trace is written to 0.1 µs, so the fraction is carried separately until the
    times are made relative to the first request.
    """
    match = _DATETIME.fullmatch(text)
    if match is None:
        return None
    date, clock, fraction, offset = match.groups()
    try:
        base = datetime.fromisoformat(f"{date} {clock}")
    except ValueError:
        return None
    seconds = calendar.timegm(base.timetuple())
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[-2:])
        seconds -= sign * int(timedelta(hours=hours, minutes=minutes).total_seconds())
    frac = int(fraction) / 10 ** len(fraction) if fraction else 0.0
    return seconds, frac


def _is_integral(text: str) -> bool:
    """True when a numeric text has no nonzero fractional digits (``12``, ``12.000``)."""
    if re.fullmatch(r"[+-]?\d+", text):
        return True
    match = re.fullmatch(r"[+-]?\d*\.(\d*)", text)
    return match is not None and set(match.group(1)) <= {"0"}


def read_timestamps(path: str | Path) -> tuple[np.ndarray, float, bool]:
    """Raw timestamps of a trace file, relative to the first one, in seconds.

    Returns ``(times, unit_s, integral)``: ``times`` in file order, the column's unit, and
    whether every value was a whole number of that unit (which fixes the bin width).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    lines = _data_lines(path)
    first = next(lines, None)
    if first is None:
        raise _error(path, None, "empty file: expected a header row naming a timestamp column")
    header_line, header_text = first
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    column = next((i for i, h in enumerate(header) if h in TIMESTAMP_COLUMNS), None)
    if column is None:
        accepted = ", ".join(TIMESTAMP_COLUMNS)
        raise _error(
            path,
            header_line,
            f"no timestamp column; accepted column names (any case): {accepted}; "
            f"found: {', '.join(header) or '(none)'}",
        )
    unit = TIMESTAMP_COLUMNS[header[column]]
    whole: list[int] = []
    frac: list[float] = []
    kinds: set[str] = set()
    integral = True
    for number, text in lines:
        row = next(csv.reader([text]))
        if column >= len(row):
            raise _error(path, number, f"missing the {header[column]!r} field")
        value = row[column].strip()
        stamp = _parse_datetime(value) if unit == 1.0 else None
        if stamp is not None:
            kinds.add("date-time")
            whole.append(stamp[0])
            frac.append(stamp[1])
            integral = integral and stamp[1] == 0.0
        else:
            try:
                seconds = float(value) * unit
            except ValueError:
                raise _error(path, number, f"cannot parse timestamp {value!r}") from None
            if not math.isfinite(seconds):
                raise _error(path, number, f"timestamp {value!r} is not a finite number")
            kinds.add("number")
            whole.append(0)
            frac.append(seconds)
            integral = integral and _is_integral(value)
        if len(kinds) > 1:
            raise _error(
                path, number, f"timestamp {value!r} mixes date-times and numbers in one column"
            )
    if not whole:
        raise _error(path, header_line, "no requests after the header")
    whole_arr = np.asarray(whole, dtype=np.int64)
    times = (whole_arr - whole_arr.min()).astype(np.float64) + np.asarray(frac, dtype=np.float64)
    return times - times.min(), unit, integral


def spread_within_bins(times: np.ndarray, bin_s: float, seed: int) -> np.ndarray:
    """Sorted times where each group of identical timestamps is spread over ``[t, t + bin_s)``.

    Singletons keep their time. The spread is uniform and seeded so that a replay is
    reproducible; the RNG is drawn in sorted order so the file's row order does not matter.
    """
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    if ordered.size < 2:
        return ordered
    values, first, counts = np.unique(ordered, return_index=True, return_counts=True)
    if np.all(counts == 1):
        return ordered
    rng = np.random.default_rng(seed)
    out = ordered.copy()
    for start, count in zip(first[counts > 1], counts[counts > 1], strict=True):
        out[start : start + count] += np.sort(rng.uniform(0.0, bin_s, size=count))
    return np.sort(out)


def infer_bin_width(times: np.ndarray, unit_s: float, integral: bool) -> float:
    """The timestamp resolution: one unit for whole numbers, else the smallest positive gap."""
    if integral:
        return unit_s
    gaps = np.diff(np.unique(times))
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.size else unit_s


def load_csv_trace(
    path: str | Path, seed: int = 0, name: str | None = None, source: str | None = None
) -> Trace:
    """A trace from a CSV file (see the module docstring for the accepted layouts).

    The trace covers from the first timestamp to the end of the last bin when requests were
    spread (so that a binned trace's last second counts), else to the last request.
    """
    path = Path(path)
    times, unit, integral = read_timestamps(path)
    has_ties = np.unique(times).size < times.size
    if has_ties:
        width = infer_bin_width(times, unit, integral)
        arrivals = spread_within_bins(times, width, seed)
        duration = float(times.max()) + width
    else:
        arrivals = np.sort(times)
        duration = float(arrivals[-1])
    return Trace(
        name=name or path.stem,
        arrivals=arrivals,
        source=source or f"file {path}",
        duration_s=duration,
    )
