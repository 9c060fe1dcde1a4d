"""Replay records: one per (workload, tuner, seed), the table, and the CSV/JSON files.

Every cost in a record is on the workload's reference baseline (the all-maximum
configuration over the whole trace, see ``ecoserve.sim.oracle``) instead of the baseline each
run measured in its own first window, so tuners and oracles share one scale.

The headline is the run cost: every request of the run counted (baseline windows, warm-ups
and exploration included), from its energy per request and mean latency, against the oracles'
run costs. The paper's view, the mean over tuning-phase windows (warm-up requests left out),
stays as the second column (``mean_cost``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Consecutive windows whose mean must be within the tolerance for a run to count as converged.
CONVERGENCE_RUN = 5
CONVERGENCE_TOLERANCE = 0.05


@dataclass
class RunRecord:
    """The figures of one replay (NaN where a figure does not apply)."""

    workload: str
    tuner: str
    seed: int
    mode: str
    device: str
    accounting: str
    alpha: float
    requests: int
    served: int
    rejected: int
    windows: int
    mean_cost: float
    p95_cost: float
    p99_cost: float
    mean_cost_after: float  # mean over the second half of the windows
    energy_per_request_j: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    windows_to_converge: int | None
    convergence_mean_cost: float
    static_oracle_cost: float
    dynamic_oracle_cost: float
    ratio_static_oracle: float
    ratio_dynamic_oracle: float
    ratio_after_static_oracle: float
    ratio_dvfs: float = math.nan
    #: Every request counted (see the module notes).
    run_cost: float = math.nan
    static_oracle_run_cost: float = math.nan
    dynamic_oracle_run_cost: float = math.nan
    ratio_run_static_oracle: float = math.nan
    ratio_run_dynamic_oracle: float = math.nan
    #: SLO mode: the share of tuning windows whose p95 latency exceeded the target.
    slo_violations: float = math.nan
    virtual_s: float = math.nan
    wall_s: float = math.nan
    speedup: float = math.nan
    final_config: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


@dataclass
class WindowSeries:
    """A run's window costs over time, for the plots and ``windows.csv``."""

    workload: str
    tuner: str
    seed: int
    end_s: list[float]
    cost: list[float]
    energy_per_request_j: list[float]
    latency_s: list[float]


def convergence(costs: Sequence[float] | np.ndarray, target: float) -> tuple[int | None, float]:
    """First window from which ``CONVERGENCE_RUN`` windows average within tolerance of target.

    Returns that window's index (None if never) and the mean cost of the windows before it
    (the price paid while converging; the first window's cost when it converged at once).
    """
    c = np.asarray(costs, dtype=np.float64)
    limit = (1.0 + CONVERGENCE_TOLERANCE) * target
    run = min(CONVERGENCE_RUN, len(c))
    if run == 0 or not math.isfinite(target):
        return None, math.nan
    means = np.convolve(c, np.ones(run) / run, mode="valid")
    hits = np.flatnonzero(means <= limit)
    if not len(hits):
        return None, float(c.mean())
    w = int(hits[0])
    return w, float(c[: max(w, 1)].mean())


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def make_record(
    *,
    workload: str,
    tuner: str,
    seed: int,
    mode: str,
    device: str,
    accounting: str,
    alpha: float,
    costs: np.ndarray,
    latencies: np.ndarray,
    energy_j: float,
    requests: int,
    rejected: int,
    static_cost: float,
    dynamic_cost: float,
    virtual_s: float = math.nan,
    wall_s: float = math.nan,
    final_config: dict[str, float] | None = None,
    run_cost: float = math.nan,
    static_run_cost: float = math.nan,
    dynamic_run_cost: float = math.nan,
    slo_violations: float = math.nan,
) -> RunRecord:
    """Summarise one run from its (re-normalised) window costs and per-request latencies;
    ``run_cost`` and the oracles' run costs count every request (NaN where unknown)."""
    costs = np.asarray(costs, dtype=np.float64)
    lat = np.asarray(latencies, dtype=np.float64)
    mean = float(costs.mean()) if len(costs) else math.nan
    after = float(costs[len(costs) // 2 :].mean()) if len(costs) else math.nan
    w, conv_mean = convergence(costs, static_cost)
    return RunRecord(
        workload=workload,
        tuner=tuner,
        seed=seed,
        mode=mode,
        device=device,
        accounting=accounting,
        alpha=alpha,
        requests=requests,
        served=len(lat),
        rejected=rejected,
        windows=len(costs),
        mean_cost=mean,
        p95_cost=_pct(costs, 95),
        p99_cost=_pct(costs, 99),
        mean_cost_after=after,
        energy_per_request_j=energy_j / len(lat) if len(lat) else math.nan,
        latency_p50_s=_pct(lat, 50),
        latency_p95_s=_pct(lat, 95),
        latency_p99_s=_pct(lat, 99),
        windows_to_converge=w,
        convergence_mean_cost=conv_mean,
        static_oracle_cost=static_cost,
        dynamic_oracle_cost=dynamic_cost,
        ratio_static_oracle=mean / static_cost if static_cost else math.nan,
        ratio_dynamic_oracle=mean / dynamic_cost if dynamic_cost else math.nan,
        ratio_after_static_oracle=after / static_cost if static_cost else math.nan,
        run_cost=run_cost,
        slo_violations=slo_violations,
        static_oracle_run_cost=static_run_cost,
        dynamic_oracle_run_cost=dynamic_run_cost,
        ratio_run_static_oracle=run_cost / static_run_cost if static_run_cost else math.nan,
        ratio_run_dynamic_oracle=run_cost / dynamic_run_cost if dynamic_run_cost else math.nan,
        virtual_s=virtual_s,
        wall_s=wall_s,
        speedup=virtual_s / wall_s if wall_s and wall_s > 0 else math.nan,
        final_config=final_config or {},
    )


def slo_violations(p95s: Sequence[float], target_s: float | None) -> float:
    """The share of windows whose p95 latency exceeded ``target_s`` (NaN without a target)."""
    if target_s is None or not len(p95s):
        return math.nan
    return float(np.mean([p > target_s for p in p95s]))


def headline_cost(record: RunRecord) -> float:
    """The run cost (every request), or the window mean where a run has none (live replays)."""
    return record.run_cost if math.isfinite(record.run_cost) else record.mean_cost


def fill_ratio_dvfs(records: Iterable[RunRecord]) -> None:
    """Each record's headline cost over DVFS's on the same workload and seed (its mean over
    seeds when that seed has no DVFS run)."""
    records = list(records)
    dvfs: dict[tuple[str, int], float] = {}
    by_workload: dict[str, list[float]] = {}
    for r in records:
        if r.tuner == "dvfs" and math.isfinite(headline_cost(r)):
            dvfs[(r.workload, r.seed)] = headline_cost(r)
            by_workload.setdefault(r.workload, []).append(headline_cost(r))
    for r in records:
        ref = dvfs.get((r.workload, r.seed))
        if ref is None and r.workload in by_workload:
            ref = float(np.mean(by_workload[r.workload]))
        r.ratio_dvfs = headline_cost(r) / ref if ref else math.nan


def summarise(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Mean over seeds per (workload, tuner), in first-seen order."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.workload, r.tuner), []).append(r)
    numeric = [
        "run_cost",
        "ratio_run_static_oracle",
        "ratio_run_dynamic_oracle",
        "static_oracle_run_cost",
        "dynamic_oracle_run_cost",
        "slo_violations",
        "mean_cost",
        "p95_cost",
        "p99_cost",
        "mean_cost_after",
        "energy_per_request_j",
        "latency_p50_s",
        "latency_p95_s",
        "latency_p99_s",
        "convergence_mean_cost",
        "ratio_static_oracle",
        "ratio_dynamic_oracle",
        "ratio_after_static_oracle",
        "ratio_dvfs",
        "static_oracle_cost",
        "dynamic_oracle_cost",
    ]
    out = []
    for (workload, tuner), rs in groups.items():
        row: dict[str, Any] = {"workload": workload, "tuner": tuner, "seeds": len(rs)}
        for key in numeric:
            vals = [getattr(r, key) for r in rs]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            row[key] = float(np.mean(vals)) if vals else math.nan
        conv = [r.windows_to_converge for r in rs]
        row["converged"] = sum(c is not None for c in conv)
        done = [c for c in conv if c is not None]
        row["windows_to_converge"] = float(np.median(done)) if done else None
        out.append(row)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


#: (key, header, digits; negative digits: seconds shown in ms). The first cost columns count
#: every request; "win." columns are the paper's mean over tuning windows (after warm-up).
TABLE_COLUMNS = (
    ("workload", "workload", None),
    ("tuner", "tuner", None),
    ("run_cost", "cost", 3),
    ("ratio_run_static_oracle", "/static", 3),
    ("ratio_run_dynamic_oracle", "/dynamic", 3),
    ("energy_per_request_j", "J/req", 4),
    ("latency_p50_s", "p50 ms", -3),
    ("latency_p95_s", "p95 ms", -3),
    ("latency_p99_s", "p99 ms", -3),
    ("slo_violations", "SLO viol.", 3),
    ("mean_cost", "win. cost", 3),
    ("ratio_dynamic_oracle", "win./dynamic", 3),
    ("p99_cost", "p99 win.", 3),
    ("ratio_after_static_oracle", "after/static", 3),
    ("windows_to_converge", "conv. win", 0),
    ("ratio_dvfs", "/dvfs", 3),
)


#: The default table's columns: the headline figures, within 100 characters; the rest are in
#: ``--wide``, ``--json`` and the CSVs.
NARROW_COLUMNS = tuple(
    c
    for c in TABLE_COLUMNS
    if c[0]
    in (
        "workload", "tuner", "run_cost", "ratio_run_static_oracle", "energy_per_request_j",
        "latency_p95_s", "mean_cost", "windows_to_converge",
    )
)  # fmt: skip

Column = tuple[str, str, int | None]


def table_rows(
    summary: Sequence[dict[str, Any]], columns: Sequence[Column] = TABLE_COLUMNS
) -> list[list[str]]:
    rows = []
    for row in summary:
        cells = []
        for key, _, digits in columns:
            v = row.get(key)
            if digits is not None and digits < 0 and isinstance(v, float) and math.isfinite(v):
                cells.append(f"{v * 1e3:.1f}")
            elif key == "windows_to_converge":
                cells.append(
                    "never" if v is None else f"{v:.0f} ({row['converged']}/{row['seeds']})"
                )
            else:
                cells.append(_fmt(v, digits if digits and digits > 0 else 3))
        rows.append(cells)
    return rows


def render_table(
    summary: Sequence[dict[str, Any]], title: str = "", columns: Sequence[Column] = NARROW_COLUMNS
) -> Any:
    """A rich Table of the per-(workload, tuner) means (the headline columns by default)."""
    from rich.table import Table

    table = Table(title=title or None)
    for _, header, digits in columns:
        table.add_column(header, justify="left" if digits is None else "right")
    for cells in table_rows(summary, columns):
        table.add_row(*cells)
    return table


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """The same table in Markdown, for docs."""
    head = [h for _, h, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(summary)]
    return "\n".join(lines)


def write_outputs(
    out: Path,
    records: Sequence[RunRecord],
    series: Sequence[WindowSeries],
    meta: dict[str, Any],
) -> list[Path]:
    """results.json, results.csv, summary.csv and windows.csv under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    dicts = [r.as_dict() for r in records]
    summary = summarise(records)
    path = out / "results.json"
    path.write_text(
        json.dumps({"meta": meta, "results": dicts, "summary": _clean(summary)}, indent=2) + "\n"
    )
    written.append(path)
    if dicts:
        keys = [k for k in dicts[0] if k != "final_config"]
        path = out / "results.csv"
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys + ["final_config"])
            w.writeheader()
            for d in dicts:
                w.writerow(
                    {**{k: d[k] for k in keys}, "final_config": json.dumps(d["final_config"])}
                )
        written.append(path)
        path = out / "summary.csv"
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
        written.append(path)
    path = out / "windows.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["workload", "tuner", "seed", "end_s", "cost", "energy_per_request_j", "latency_s"]
        )
        for s in series:
            for row in zip(s.end_s, s.cost, s.energy_per_request_j, s.latency_s, strict=True):
                writer.writerow([s.workload, s.tuner, s.seed, *row])
    written.append(path)
    return written


def _clean(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
