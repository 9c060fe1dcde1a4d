"""``ecoserve replay``: replay arrival traces and compare tuners.

Virtual time (default): every (trace, tuner, seed) is replayed through the engine on the
device twin and scored against the workload's oracles. ``--mode real`` replays one trace as
an HTTP client against a running daemon and writes the same report. ``--scale-load K``
replays K times a trace's arrivals over the same clock (``traces.load_scale``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ecoserve.cli import fleet_replay
from ecoserve.server.deprecated import add_alias, warn

DEFAULT_TUNERS = "ecogd,grid,linear,dvfs,bayes,mab"
DEFAULT_MAX_WAIT_S = 0.05
#: Percentile of the SLO bound when --slo-percentile is not given (the fleet replay: p99).
DEFAULT_SLO_PERCENTILE = 95.0


def device_twin(spec: str) -> str:
    """The twin a ``--device`` names: ``virtual:BOARD`` or ``virtual:TABLE.csv``.

    ``virtual:`` is the spelling ``ecoserve serve`` and ``ecoserve profile`` use; a bare
    board name or table path still works for one release, with a deprecation line.
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind == "virtual":
        return rest or "xavier-nx"
    warn("ecoserve replay", f"--device {spec}", f"--device virtual:{spec}")
    return spec


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=__doc__)
    p.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="SPEC|NAME|FILE",
        help="generator spec (fixed:50ms, bursty:10@500ms, poisson:20), bundled trace "
        "(azure-code, azure-conv) or CSV file; repeat for several",
    )
    p.add_argument(
        "--suite",
        choices=["paper", "load"],
        help="run a predefined suite: paper, or load (step, diurnal, MMPP); see docs/replay.md",
    )
    p.add_argument(
        "--tuners", default=DEFAULT_TUNERS, help=f"comma list (default {DEFAULT_TUNERS})"
    )
    p.add_argument(
        "--device",
        default="virtual:xavier-nx",
        type=device_twin,
        metavar="virtual:BOARD|virtual:CSV",
        help="the twin replayed: virtual:BOARD (a fitted board) or virtual:TABLE.csv (a table "
        "from ecoserve profile) (default virtual:xavier-nx)",
    )
    p.add_argument("--duration", help="trace length, e.g. 3h, 10m (generators default 10m)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="how many runs per tuner: seeds --seed .. --seed+N-1 (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="the first seed: of the runs' seeds (--seeds), and of --fleet's diurnal series "
        "(default 0)",
    )
    p.add_argument("--rate", type=float, help="rescale the trace to this mean req/s")
    p.add_argument("--time-scale", type=float, help="multiply the trace's times by this")
    p.add_argument("--loop-to", help="repeat the trace back to back up to this duration")
    p.add_argument("--alpha", type=float, default=0.5, help="energy weight of the cost")
    p.add_argument("--accounting", choices=["active", "total"], default="active")
    p.add_argument("--window-requests", type=int, default=416)
    p.add_argument("--warmup-requests", type=int, default=100)
    p.add_argument(
        "--window-seconds", type=float, default=30.0, help="time limit of a window (0: none)"
    )
    p.add_argument(
        "--max-wait-s",
        type=float,
        help="batching max wait (s); default 0.05, or the suite's (paper: 2.0, a full buffer)",
    )
    add_alias(p, "--max-wait", "--max-wait-s")
    p.add_argument(
        "--batch-timer",
        choices=("fixed", "fill"),
        default="fixed",
        help="the tuners' batching timer: fixed (--max-wait-s) or fill (twice the batch's fill "
        "time at the window's arrival rate, at most --max-wait-s); the oracles and the all-max "
        "row keep the fixed --max-wait-s",
    )
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument(
        "--slo-latency-s",
        type=float,
        help="SLO mode: tuners minimise energy subject to this latency bound (s) at "
        "--slo-percentile per window; the table adds each tuner's share of windows over it. "
        "With --fleet: the fleet's latency target (default 0.25, at p99)",
    )
    p.add_argument(
        "--slo-percentile",
        type=float,
        help=f"latency percentile the SLO bound applies to (default {DEFAULT_SLO_PERCENTILE:g}; "
        "--fleet: 99, the only one it scores)",
    )
    add_alias(p, "--slo-p95-ms", "--slo-latency-s", _ms_to_s, "--slo-latency-s (seconds, at p95)")
    p.add_argument("--noise", type=float, help="twin noise (relative std-dev; default: fit's)")
    p.add_argument("--workers", type=int, help="worker processes (default: 2 if 2 cores)")
    p.add_argument("--out", type=Path, help="folder for results.json/csv and plots")
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the PNG figures (they need matplotlib: pip install 'ecoserve[plots]')",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--wide", action="store_true", help="print every column (16) rather than the headline 8"
    )
    p.add_argument("--mode", choices=["sim", "real"], default="sim")
    p.add_argument(
        "--tiers",
        action="store_true",
        help="replay the digits models' split point and cascade threshold over --link: fixed "
        "values, the neurosurgeon planner, the cascade chooser and EcoGD moving the tier knob",
    )
    p.add_argument(
        "--link",
        default="20mbit@0s,0.2mbit@40s,20mbit@80s",
        help="link bandwidth schedule for --tiers, e.g. 10mbit or 20mbit@0s,0.2mbit@40s",
    )
    p.add_argument("--rtt", default="1ms", help="link round-trip time for --tiers")
    p.add_argument(
        "--shared-board",
        action="store_true",
        help="three models on one board twin, each on its own recorded trace: tuned jointly by "
        "one engine, by three daemons contending for the clocks, and at maximum, with the "
        "joint oracles (--duration per model, default 1h; --seeds runs)",
    )
    p.add_argument(
        "--background",
        metavar="SPEC",
        help="harvest the troughs: replay each trace with this background job in the engine's "
        "slot, beside serving alone, steps whenever the queue is empty, and a nice-19 model "
        "(builtin:digits-finetune, or cost:FIXED_MS,PER_ITEM_MS[,LOAD_MS] at maximum clocks); "
        "the serving tuner is the first of --tuners",
    )
    fleet_replay.add_arguments(p)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="daemon URL (real mode)")
    p.add_argument("--input", type=Path, help="request body for real mode: .json or .npy")
    p.add_argument(
        "--input-shape",
        default="3,32,32",
        help="shape of the zero input sent when no --input (default 3,32,32: builtin:cnn)",
    )
    p.add_argument("--concurrency", type=int, default=256, help="max requests in flight (real)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (real)")
    p.set_defaults(run=run)
    return p


def _ms_to_s(ms: float) -> float:
    return ms / 1e3


def _workloads(args: argparse.Namespace) -> tuple[Any, ...]:
    """The workloads asked for, labelled with ``--scale-load`` when it is not 1."""
    from ecoserve.replay.suite import Workload, suite, workload_kind

    if args.suite:
        workloads = suite(args.suite)
    elif not args.trace:
        raise SystemExit("ecoserve replay: give --trace (or --suite paper)")
    else:
        workloads = tuple(
            Workload(
                label=t,
                trace=t,
                kind=workload_kind(t),
                duration=args.duration,
                rate=args.rate,
                time_scale=args.time_scale,
                loop_to=args.loop_to,
            )
            for t in args.trace
        )
    if args.scale_load == 1:
        return workloads
    return tuple(replace(w, label=f"{w.label} x{args.scale_load:g}") for w in workloads)


def _max_wait(args: argparse.Namespace) -> float:
    """An explicit --max-wait-s wins; a suite brings its own batching buffer."""
    from ecoserve.replay.suite import SUITE_MAX_WAIT_S

    if args.max_wait_s is not None:
        return float(args.max_wait_s)
    return SUITE_MAX_WAIT_S.get(args.suite or "", DEFAULT_MAX_WAIT_S)


def _settings(args: argparse.Namespace) -> Any:
    from ecoserve.core.assembly import EngineSettings

    return EngineSettings(
        max_batch=args.max_batch,
        max_wait_s=_max_wait(args),
        batch_timer=args.batch_timer,
        window_requests=args.window_requests,
        warmup_requests=args.warmup_requests,
        window_seconds=args.window_seconds or None,
        alpha=args.alpha,
        accounting=args.accounting,
        slo_latency_s=args.slo_latency_s,
        slo_percentile=(
            DEFAULT_SLO_PERCENTILE if args.slo_percentile is None else args.slo_percentile
        ),
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ecoserve.replay.report import (
        NARROW_COLUMNS,
        TABLE_COLUMNS,
        render_table,
        summarise,
        write_outputs,
    )

    err = Console(stderr=True)
    out = Console(stderr=args.json)
    if not out.is_terminal:
        out = Console(stderr=args.json, width=200 if args.wide else 100)
    tuners = tuple(t.strip() for t in args.tuners.split(",") if t.strip())
    problem = _scale_load_problem(args) or fleet_replay.misplaced_options(args)
    if problem is not None:
        err.print(f"ecoserve replay: {problem}", style="red", markup=False)
        return 2
    if args.tiers:
        return _run_tiers(args, err)
    if args.shared_board:
        return _run_shared_board(args, err)
    if args.fleet:
        return fleet_replay.run(args, err)
    if args.background:
        return _run_harvest(args, tuners, err)
    plots = bool(args.out) and not args.no_plots
    if plots and importlib.util.find_spec("matplotlib") is None:
        err.print(
            "ecoserve replay: the figures --out writes need matplotlib, which is not "
            "installed: pip install 'ecoserve[plots]' (or pass --no-plots). Writing the "
            "results and CSVs without figures.",
            style="yellow",
            markup=False,
        )
        plots = False
    try:
        workloads = _workloads(args)
        if args.mode == "real":
            result = _run_real(args, workloads, err)
        else:
            result = _run_sim(args, workloads, tuners, err)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        err.print(f"[red]ecoserve replay: {exc}[/red]")
        return 2
    records, series, oracles, meta = result
    summary = summarise(records)
    if args.out:
        files = write_outputs(args.out, records, series, meta)
        if plots:
            from ecoserve.replay.plots import write_plots

            costs = {k: (o.static_cost, o.dynamic_cost) for k, o in oracles.items()}
            files += write_plots(args.out, records, series, costs)
        err.print(f"wrote {len(files)} files to {args.out}")
    if args.json:
        payload = {"meta": meta, "results": [r.as_dict() for r in records]}
        sys.stdout.write(json.dumps(payload, default=_jsonable) + "\n")
    else:
        columns = TABLE_COLUMNS if args.wide else NARROW_COLUMNS
        out.print(render_table(summary, title=meta.get("title", ""), columns=columns))
        out.print(
            "cost: every request of the run counted, on the workload's reference baseline "
            "(1 = all-max: every clock at maximum and the largest batch); win.: the mean over "
            "tuning windows, warm-up requests left out; dvfs: the OS governors; "
            f"accounting {meta['accounting'] or 'unknown'}, alpha {meta['alpha']}"
        )
        if not args.wide:
            where = f"{args.out}/summary.csv" if args.out else "--out DIR (summary.csv)"
            out.print(f"more columns: --wide, --json or {where}")
        if args.mode == "real" and not meta.get("tuning_windows"):
            out.print(
                f"no tuning window closed in {meta.get('daemon_windows', 0)} daemon window(s): "
                "cost needs a run past the daemon's warm-up and baseline windows (a window is "
                "its window_requests requests or window_seconds); give a longer --duration"
            )
    return 0


def _scale_load_problem(args: argparse.Namespace) -> str | None:
    """Why ``--scale-load`` cannot be used as given, or None (checked before any run starts)."""
    k = args.scale_load
    if not (k > 0 and math.isfinite(k)):
        return (
            f"--scale-load must be > 0 (K times the trace's arrivals over the same "
            f"clock: 0.5 halves the load, 2 doubles it), got {k:g}"
        )
    if k != 1 and args.shared_board:
        return (
            "--scale-load does not apply to --shared-board (each model replays its own "
            "recorded trace); leave --scale-load out"
        )
    return None


def _scaled(trace: Any, args: argparse.Namespace) -> Any:
    """``trace`` with ``--scale-load`` times its arrivals (seed 0, as every run's arrivals)."""
    from traces import scale_load

    return scale_load(trace, args.scale_load, seed=0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _run_sim(
    args: argparse.Namespace, workloads: tuple[Any, ...], tuners: tuple[str, ...], err: Any
) -> tuple[Any, ...]:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ecoserve.replay.runner import ReplayPlan, default_workers, run_plan
    from tuners.registry import TUNERS

    unknown = [t for t in tuners if t.lower() not in TUNERS]
    if unknown:
        raise ValueError(f"unknown tuner(s) {unknown}; valid: {', '.join(sorted(TUNERS))}")
    for w in workloads:
        trace = w.load(seed=0)  # fail fast on a bad trace before starting workers
        _note_static_load(w.trace, trace.duration_s, err)
    plan = ReplayPlan(
        scale_load=args.scale_load,
        workloads=workloads,
        tuners=tuners,
        seeds=tuple(range(args.seed, args.seed + max(1, args.seeds))),
        device=args.device,
        settings=_settings(args),
        noise=args.noise,
    )
    workers = args.workers or default_workers()
    runs = len(workloads) * (1 + len(tuners) * len(plan.seeds))
    err.print(
        f"replaying {runs} runs ({len(workloads)} workload(s) x (all-max + {len(tuners)} "
        f"tuner(s) x {len(plan.seeds)} seed(s))) on {workers} worker(s); the time left shows "
        "once the first runs finish (an hour of trace takes a few minutes per tuner on 2 cores)"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("replaying", total=runs)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, completed=done, description=f"replaying: {what}")

        result = run_plan(plan, workers=workers, progress=progress)
    meta = {
        "mode": "sim",
        "device": args.device,
        "accounting": args.accounting,
        "alpha": args.alpha,
        "window_requests": args.window_requests,
        "max_wait_s": _max_wait(args),
        "batch_timer": args.batch_timer,
        "warmup_requests": args.warmup_requests,
        "workers": workers,
        "scale_load": args.scale_load,
        "workloads": [w.__dict__ for w in workloads],
        "oracles": {k: o.as_dict() for k, o in result.oracles.items()},
        "title": f"replay on the {args.device} twin",
    }
    return result.records, result.series, result.oracles, meta


def _note_static_load(spec: str, duration_s: float, err: Any) -> None:
    """Warn before the run when a load-changing trace would not change within its length."""
    from traces.generators import static_load_note

    note = static_load_note(spec, duration_s)
    if note is not None:
        err.print(f"ecoserve replay: {note}", style="yellow", markup=False)


def _run_real(args: argparse.Namespace, workloads: tuple[Any, ...], err: Any) -> tuple[Any, ...]:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ecoserve.replay.real import RealReplayConfig, load_input, replay_real

    if len(workloads) != 1:
        raise ValueError("--mode real replays exactly one --trace")
    w = workloads[0]
    trace = _scaled(w.load(seed=0), args)
    _note_static_load(w.trace, trace.duration_s, err)
    body = load_input(args.input, args.input_shape)
    cfg = RealReplayConfig(
        url=args.url,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        alpha=args.alpha,
    )
    err.print(f"replaying {trace.describe()} against {args.url} in real time")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("sending", total=max(trace.duration_s, 1e-9))

        def progress(elapsed_s: float, statuses: dict[str, int]) -> None:
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none yet"
            bar.update(task, completed=elapsed_s, description=f"sending (answers {shown})")

        record, series, meta = replay_real(
            trace, body, cfg, label=w.label, console=err, progress=progress
        )
    meta.update(
        accounting=meta.get("accounting", args.accounting),
        alpha=args.alpha,
        scale_load=args.scale_load,
    )
    return [record], [series], {}, meta


def _run_shared_board(args: argparse.Namespace, err: Any) -> int:
    """Several models on one board twin, replayed in virtual time (``replay.shared_board``)."""
    from ecoserve.replay.shared_board import SharedBoardPlan, markdown, run_shared_board

    try:
        plan = SharedBoardPlan(
            device=args.device,
            duration=args.duration or "1h",
            seeds=tuple(range(args.seed, args.seed + args.seeds)),
        )
        plan.board()  # an unknown board fails here, before any run
    except (ValueError, KeyError, FileNotFoundError) as exc:
        err.print(f"ecoserve replay --shared-board: {exc}", style="red", markup=False)
        return 2
    workers = args.workers or min(2, os.cpu_count() or 1)
    report = run_shared_board(
        plan,
        workers=workers,
        progress=lambda what, done, total: err.print(f"  [{done}/{total}] {what}", markup=False),
    )
    print(markdown(report))
    return 0


def _run_tiers(args: argparse.Namespace, err: Any) -> int:
    """Split points and cascade thresholds replayed over a changing link (virtual time)."""
    import torch

    from ecoserve.replay.tiers import digits_setup, tier_replay_report
    from traces import load_trace, parse_duration
    from twins.link import EmulatedLink

    try:
        link = EmulatedLink.parse(args.link, rtt_s=parse_duration(args.rtt))
        if len(args.trace) > 1:
            raise ValueError("--tiers replays one trace at a time")
        spec = args.trace[0] if args.trace else "poisson:50"
        trace = _scaled(load_trace(spec, duration=args.duration or "120s"), args)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        err.print(f"[red]ecoserve replay --tiers: {exc}[/red]")
        return 2
    torch.set_num_threads(1)
    print(
        tier_replay_report(
            trace, link, link_spec=args.link, setup=digits_setup(device_slowdown=100.0)
        )
    )
    return 0


def _run_harvest(args: argparse.Namespace, tuners: tuple[str, ...], err: Any) -> int:
    """Each workload with the background job in the slot, beside the baselines (virtual time)."""
    from ecoserve.replay.harvest import background_cost, harvest_replay, render
    from twins.fitted import load_twin

    try:
        twin = load_twin(args.device, noise=args.noise)
        cost = background_cost(args.background, twin)
        settings = replace(_settings(args), tuner=tuners[0] if tuners else "ecogd", seed=args.seed)
        reports = []
        for w in _workloads(args):
            trace = _scaled(w.load(seed=0), args)
            err.print(f"harvest replay: {w.label} ({len(trace)} requests), four runs")
            reports.append(harvest_replay(trace.arrivals, twin, settings, cost, workload=w.label))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        err.print(f"[red]ecoserve replay --background: {exc}[/red]")
        return 2
    if args.json:
        payload = [{**vars(r), "rows": [row.as_dict() for row in r.rows]} for r in reports]
        sys.stdout.write(json.dumps(payload, default=_jsonable) + "\n")
    else:
        print(render(reports))
    return 0
