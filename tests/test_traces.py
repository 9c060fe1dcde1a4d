"""Arrival traces: generators, CSV loaders, the bundled Azure traces, rescaling and cutting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traces import (
    Trace,
    TraceFormatError,
    bundled_names,
    generate,
    load_csv_trace,
    load_trace,
    parse_duration,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3h", 10800.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("50ms", 0.05),
        ("1h30m", 5400.0),
        ("2min", 120.0),
        ("600", 600.0),
        (12, 12.0),
        (" 0.5 s ", 0.5),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5s", "h", "5s3", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- generators --------------------------------------------------------------------------


def test_fixed_50ms_and_90ms() -> None:
    t = generate("fixed:50ms", duration_s=10.0)
    assert len(t) == 200
    assert np.allclose(np.diff(t.arrivals), 0.05)
    assert t.arrivals[0] == 0.0 and t.duration == 10.0 and t.mean_rate == pytest.approx(20.0)
    t90 = generate("fixed:90ms", duration_s=9.0)
    assert len(t90) == 100 and np.allclose(np.diff(t90.arrivals), 0.09)
    assert np.array_equal(generate("fixed:0.05s", 10.0).arrivals, t.arrivals)


@pytest.mark.parametrize(("spec", "period"), [("bursty:10@500ms", 0.5), ("bursty:10@900ms", 0.9)])
def test_bursty(spec: str, period: float) -> None:
    t = generate(spec, duration_s=9.0)
    bursts, counts = np.unique(t.arrivals, return_counts=True)
    assert np.all(counts == 10)
    assert np.allclose(np.diff(bursts), period)
    assert len(t) == 10 * int(round(9.0 / period))


def test_poisson_is_seeded_and_has_the_rate() -> None:
    a = generate("poisson:20", duration_s=500.0, seed=3)
    b = generate("poisson:20/s", duration_s=500.0, seed=3)
    c = generate("poisson:20", duration_s=500.0, seed=4)
    assert np.array_equal(a.arrivals, b.arrivals)
    assert not np.array_equal(a.arrivals[:10], c.arrivals[:10])
    assert a.mean_rate == pytest.approx(20.0, rel=0.05)
    gaps = np.diff(a.arrivals)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps
    assert np.all(np.diff(a.arrivals) >= 0) and a.arrivals[-1] < 500.0


@pytest.mark.parametrize(
    "spec",
    [
        "fixed:50",
        "fixed:",
        "fixed:abc",
        "fixed:0ms",
        "bursty:10",
        "bursty:10@",
        "bursty:0@1s",
        "bursty:x@1s",
        "poisson:",
        "poisson:-3",
        "poisson:0",
        "poisson:fast",
        "uniform:3",
    ],
)
def test_bad_specs_say_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError, match=r"fixed:50ms.*bursty:10@500ms.*poisson:20"):
        generate(spec, 10.0)


def test_load_trace_generator_with_duration_string() -> None:
    t = load_trace("fixed:50ms", duration="90s")
    assert len(t) == 1800 and t.duration == 90.0
    assert load_trace("bursty:10@500ms").duration == 600.0  # the default length


def test_load_trace_rescales_generators_over_the_full_duration() -> None:
    t = load_trace("fixed:50ms", duration="60s", rate=40)
    assert t.duration == pytest.approx(60.0)
    assert t.mean_rate == pytest.approx(40.0)
    slow = load_trace("fixed:50ms", duration="60s", time_scale=2.0)
    assert slow.mean_rate == pytest.approx(10.0) and slow.duration == pytest.approx(60.0)


def test_load_trace_unknown_names() -> None:
    with pytest.raises(ValueError, match="azure-code"):
        load_trace("nonsense")
    with pytest.raises(FileNotFoundError):
        load_trace("no/such/trace.csv")
    with pytest.raises(ValueError, match="accepted forms"):
        load_trace("fixed:fast")


# --- loaders -----------------------------------------------------------------------------


def test_seconds_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", "id,timestamp\n1,10.5\n2,10.75\n3,12.0\n")
    t = load_csv_trace(path)
    assert np.allclose(t.arrivals, [0.0, 0.25, 1.5])
    assert t.duration == pytest.approx(1.5) and t.name == "s"


def test_timestamp_ms_csv_without_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "ms.csv", "Timestamp_MS,x\n1000,a\n1250,b\n3000,c")
    assert np.allclose(load_csv_trace(path).arrivals, [0.0, 0.25, 2.0])


def test_datetime_strings_with_seven_fractional_digits(tmp_path: Path) -> None:
    text = (
        "TIMESTAMP,ContextTokens\n"
        "2023-11-16 18:17:03.9799600,1\n"
        "2023-11-16 18:17:04.0319601,2\n"
        "2023-11-16T18:17:05Z,3\n"
        "2023-11-17 00:00:00.5,4\n"
    )
    t = load_csv_trace(write(tmp_path, "dt.csv", text))
    expected = [0.0, 0.0520001, 1.02004, 5 * 3600 + 42 * 60 + 56.02004 + 0.5]
    assert np.allclose(t.arrivals, expected, rtol=0, atol=1e-9)


def test_datetime_offsets(tmp_path: Path) -> None:
    text = "timestamp\n2023-11-16T18:00:00+01:00\n2023-11-16T17:30:00+00:00\n"
    assert np.allclose(load_csv_trace(write(tmp_path, "tz.csv", text)).arrivals, [0.0, 1800.0])


def test_identical_timestamps_spread_within_their_bin(tmp_path: Path) -> None:
    path = write(tmp_path, "bins.csv", "timestamp\n5\n5\n5\n6\n8\n8\n")
    a = load_csv_trace(path, seed=1)
    b = load_csv_trace(path, seed=1)
    c = load_csv_trace(path, seed=2)
    assert np.array_equal(a.arrivals, b.arrivals)  # deterministic for a seed
    assert not np.array_equal(a.arrivals, c.arrivals)
    assert np.all(np.diff(a.arrivals) >= 0) and len(a) == 6
    first, single, last = a.arrivals[:3], a.arrivals[3], a.arrivals[4:]
    assert np.all((first >= 0.0) & (first < 1.0)) and np.unique(first).size == 3
    assert single == 1.0  # a lone request keeps its time
    assert np.all((last >= 3.0) & (last < 4.0))
    assert a.duration == pytest.approx(4.0)  # to the end of the last one-second bin


def test_bin_width_is_the_smallest_gap_for_fractional_stamps(tmp_path: Path) -> None:
    path = write(tmp_path, "frac.csv", "timestamp_s\n0.0\n0.0\n0.1\n0.3\n0.3\n")
    t = load_csv_trace(path, seed=0)
    assert np.all(t.arrivals[:2] < 0.1 + 1e-12) and np.all(t.arrivals[3:] >= 0.3 - 1e-12)
    assert np.all(t.arrivals[3:] < 0.4 + 1e-12)


def test_unsorted_file_is_sorted(tmp_path: Path) -> None:
    t = load_csv_trace(write(tmp_path, "u.csv", "timestamp\n3.5\n1.5\n2.5\n"))
    assert np.allclose(t.arrivals, [0.0, 1.0, 2.0])


def test_bad_value_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "trace.csv", "# a comment\ntimestamp\n1.0\n\n2.0\nabc\n")
    with pytest.raises(TraceFormatError, match=r"trace\.csv line 6: cannot parse timestamp 'abc'"):
        load_csv_trace(path)


def test_missing_field_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "short.csv", "a,timestamp\n1,2\n3\n")
    with pytest.raises(TraceFormatError, match=r"short\.csv line 3"):
        load_csv_trace(path)


def test_missing_column_lists_accepted_names(tmp_path: Path) -> None:
    path = write(tmp_path, "nocol.csv", "time,value\n1,2\n")
    with pytest.raises(TraceFormatError, match="timestamp, timestamp_s, timestamp_ms"):
        load_csv_trace(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(TraceFormatError, match="empty"):
        load_csv_trace(write(tmp_path, "empty.csv", text))


def test_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no requests"):
        load_csv_trace(write(tmp_path, "hdr.csv", "timestamp\n"))


def test_mixed_kinds_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "mix.csv", "timestamp\n2023-11-16 18:17:03\n12.5\n")
    with pytest.raises(TraceFormatError, match="line 3"):
        load_csv_trace(path)


def test_load_trace_from_path_rescales_then_cuts(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "timestamp\n" + "\n".join(str(i) for i in range(0, 100, 2)))
    t = load_trace(path, rate=1.0, duration="40s")
    assert t.duration == 40.0 and len(t) == 40


# --- Trace -------------------------------------------------------------------------------


def test_trace_validation_and_immutability() -> None:
    with pytest.raises(ValueError, match="sorted"):
        Trace("x", np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        Trace("x", np.array([-1.0]))
    t = Trace("x", np.array([0.0, 1.0]))
    with pytest.raises(ValueError):
        t.arrivals[0] = 5.0
    with pytest.raises(ValueError, match="exactly one"):
        t.rescaled()


def test_cut_never_extends() -> None:
    t = Trace("x", np.arange(10.0), duration_s=10.0)
    assert len(t.cut(4.5)) == 5 and t.cut(4.5).duration == 4.5
    assert len(t.cut(100)) == 10 and t.cut(100).duration == 10.0
    assert len(t.cut(0)) == 0


# --- bundled Azure traces ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count", "rate"), [("azure-code", 8819, 2.6), ("azure-conv", 19366, 5.5)]
)
def test_bundled_azure_traces(name: str, count: int, rate: float) -> None:
    assert name in bundled_names()
    t = load_trace(name)
    assert len(t) == count
    assert t.mean_rate == pytest.approx(rate, abs=0.05)
    assert 3400 < t.duration < 3600  # about one hour
    assert t.arrivals[0] == 0.0 and np.all(np.diff(t.arrivals) >= 0)
    assert "CC-BY-4.0" in t.source and "Splitwise" in t.source and "b469a113" in t.source


def test_azure_code_is_bursty() -> None:
    per_second = np.bincount(load_trace("azure-code").arrivals.astype(int))
    assert per_second.max() >= 60  # 67 in one second at the peak


def test_bundled_rescale_and_cut() -> None:
    t = load_trace("azure-conv", rate=15.0, duration="10m")
    assert t.duration == 600.0
    assert t.mean_rate == pytest.approx(15.0, rel=0.1)
    full = load_trace("azure-conv").rescaled(rate=15.0)
    assert full.mean_rate == pytest.approx(15.0)
    assert len(full) == 19366
    half = load_trace("azure-code", time_scale=0.5)
    assert half.duration == pytest.approx(load_trace("azure-code").duration / 2)
