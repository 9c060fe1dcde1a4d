"""Figures of a replay: cost over time per tuner, and energy against latency per tuner.

The first is the paper's Bellevue-trace figure (one line per tuner, the static and dynamic
oracles as references); the second places each run at its mean energy per request and p95
latency, so the trade-off every tuner settled on is visible at a glance. Agg backend: no
display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecoserve.replay.report import RunRecord, WindowSeries


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _pyplot():  # noqa: ANN202 - matplotlib's module type
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cost_over_time(
    path: Path,
    workload: str,
    series: Sequence[WindowSeries],
    static_cost: float | None = None,
    dynamic_cost: float | None = None,
) -> Path:
    """Window cost against time, one line per tuner (the first seed of each)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    seen: set[str] = set()
    for s in series:
        if s.workload != workload or s.tuner in seen or not s.cost:
            continue
        seen.add(s.tuner)
        ax.plot([t / 60 for t in s.end_s], s.cost, label=s.tuner, lw=1.2)
    if static_cost is not None:
        ax.axhline(static_cost, color="k", ls="--", lw=1, label="static oracle")
    if dynamic_cost is not None:
        ax.axhline(dynamic_cost, color="grey", ls=":", lw=1, label="dynamic oracle")
    ax.set_xlabel("time (min)")
    ax.set_yscale("log")  # exploration spikes are 10-80x; the tuned level is near 1
    ax.set_ylabel("window cost (1 = every knob at max, log scale)")
    ax.set_title(f"cost over time: {workload}")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_energy_latency(path: Path, workload: str, records: Sequence[RunRecord]) -> Path:
    """Mean energy per request against p95 latency, one marker per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    tuners = sorted({r.tuner for r in records if r.workload == workload})
    for tuner in tuners:
        rs = [r for r in records if r.workload == workload and r.tuner == tuner]
        ax.scatter(
            [r.latency_p95_s * 1e3 for r in rs],
            [r.energy_per_request_j * 1e3 for r in rs],
            label=tuner,
            s=30,
        )
    ax.set_xlabel("p95 latency (ms)")
    ax.set_ylabel("energy per request (mJ)")
    ax.set_title(f"energy vs latency: {workload}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(
    out: Path,
    records: Sequence[RunRecord],
    series: Sequence[WindowSeries],
    oracle_costs: dict[str, tuple[float, float]] | None = None,
) -> list[Path]:
    """Both figures for every workload in ``records``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    workloads = list(dict.fromkeys(r.workload for r in records))
    for w in workloads:
        static, dynamic = (oracle_costs or {}).get(w, (None, None))
        written.append(
            plot_cost_over_time(out / f"cost_{_slug(w)}.png", w, series, static, dynamic)
        )
        written.append(plot_energy_latency(out / f"energy_latency_{_slug(w)}.png", w, records))
    return written


def plot_fleet_boards(path: Path, runs: Sequence[Any], rates: Sequence[float] | np.ndarray) -> Path:
    """Boards awake over the day, one panel per parking mode, the arrival rate behind them.

    ``runs`` are ``ecoserve.sim.fleet.FleetRun`` objects of one replay (same periods); runs
    that park nothing (``parking == "none"``) are drawn in every panel.
    """
    plt = _pyplot()
    modes = [m for m in dict.fromkeys(r.parking for r in runs) if m != "none"] or ["none"]
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, 3.6 * len(modes)), squeeze=False)
    period = runs[0].period_s
    hours = [i * period / 3600 for i in range(len(rates))]
    for ax, mode in zip(axes[:, 0], modes):
        rate_ax = ax.twinx()
        rate_ax.fill_between(hours, rates, color="0.85", step="post")
        rate_ax.set_ylabel("arrival rate (req/s)")
        ax.set_zorder(rate_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        for r in runs:
            if r.parking in (mode, "none"):
                ax.step(hours, r.awake, where="post", lw=1.0, label=r.label)
        ax.set_ylabel("boards awake")
        ax.set_title(f"boards awake (serving or waking), parking: {mode}; grey: arrival rate")
        ax.legend(fontsize=7, ncol=5, loc="upper left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (h)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
