"""Tails checked: every request a sample of boards was sent over the 60-board day, replayed.

The fleet replay reads each board's latency from a model measured at steady rates, with no
queue carried from one control period to the next. Here consolidation's run over the
published day (``ecoserve replay --fleet``'s default trace on ``--boards``, powered-off
parking, the default bill) is replayed for a sample of boards, one per board kind: every
request the run sent that board goes through the board's own engine and EcoGD on its twin
(``ecoserve.sim.fleet_direct.replay_board``), the board starting cold at the window's start;
powered off, it resumes at each wake the tuning state of a peer of its kind serving the rate
it is now sent (``--handover peer``, what a fleet can copy to it) or its own saved state
(``--handover own``). Beside it, the model's account of the same
board (``model_board``). The sample: per kind, the board first woken during the morning ramp
(``--ramp``, 04:00-16:00 by default: the envelope's trough to its peak), its busiest if
none was woken there; kinds sent nothing after the first 5 minutes are named; while the
sample is short of ``--sample`` boards, the board woken last in the ramp and the busiest
board left are added.

``--window`` replays a contiguous stretch instead of the whole day (same decisions).

Run: ``python benchmarks/bench_fleet_tails.py`` (several minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.fleet import measure_models, parse_mix, replay_measured
from ecoserve.sim.board_model import max_rate
from ecoserve.sim.fleet import Bill, FleetBoard, FleetRun, board_step_rates, parking
from ecoserve.sim.fleet_direct import model_board, replay_board
from traces import parse_duration
from traces.rates import RateSeries, diurnal
from twins.fitted import load_twin


def span(text: str) -> tuple[float, float]:
    """``"4h-16h"`` -> seconds."""
    a, sep, b = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r}: give START-END, e.g. 4h-16h")
    return parse_duration(a), parse_duration(b)


#: Every board starts awake; what the fleet sends in its first minutes is its start, not a wake.
START_S = 300.0


def wakes(run: FleetRun, i: int) -> np.ndarray:
    """Times (s) at which board ``i`` was woken: parked in one period, waking the next."""
    assert run.states is not None
    st = run.states[:, i]
    at = np.nonzero((st[:-1] == 2) & (st[1:] == 1))[0] + 1
    return at * run.period_s


def sample(
    run: FleetRun, boards: list[FleetBoard], series: RateSeries, ramp: tuple[float, float], n: int
) -> tuple[list[int], list[str]]:
    """Boards to replay, and the kinds that never served (see the module doc).

    Per kind that served after the fleet's start (every board starts awake and serves until
    the first park): the board first woken within ``ramp`` (else its busiest). While fewer
    than ``n`` are chosen: the board woken last within the ramp (nearest the peak), then the
    busiest board left.
    """
    after = int(START_S / series.step_s)
    sent = {i: float(board_step_rates(run, i, series)[after:].sum()) for i in range(len(boards))}
    in_ramp = {}
    for i in range(len(boards)):
        w = wakes(run, i)
        w = w[(w >= ramp[0]) & (w < ramp[1])]
        if w.size:
            in_ramp[i] = (float(w.min()), float(w.max()))
    chosen: list[int] = []
    idle: list[str] = []
    for kind in sorted({b.kind for b in boards}):
        mine = [i for i, b in enumerate(boards) if b.kind == kind and sent[i] > 0]
        if not mine:
            idle.append(kind)
            continue
        woken = [i for i in mine if i in in_ramp]
        if woken:
            chosen.append(min(woken, key=lambda i: in_ramp[i][0]))
        else:
            chosen.append(max(mine, key=lambda i: sent[i]))
    left = [i for i in in_ramp if i not in chosen]
    if len(chosen) < n and left:
        chosen.append(max(left, key=lambda i: in_ramp[i][1]))
    left = [i for i in sent if sent[i] > 0 and i not in chosen]
    if len(chosen) < n and left:
        chosen.append(max(left, key=lambda i: sent[i]))
    return chosen, idle


def ms(seconds: float) -> str:
    """Milliseconds, or what stands in for them: never (over the share rejected) or none."""
    if math.isnan(seconds):
        return "none"
    return "never" if math.isinf(seconds) else f"{seconds * 1e3:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default="orin:20,xavier-nx:20,nano:20")
    p.add_argument("--slo-ms", type=float, default=250.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ramp", default="4h-16h", help="where wake-ups are looked for")
    p.add_argument("--window", help="replay only START-END (e.g. 4h-12h); default the day")
    p.add_argument("--sample", type=int, default=3, help="boards to replay (default 3)")
    p.add_argument("--after-wake-s", type=float, default=300.0, help="the tail just after wakes")
    p.add_argument(
        "--handover",
        choices=("peer", "own"),
        default="peer",
        help="the tuning state a woken board resumes: a serving peer's (default) or its own",
    )
    args = p.parse_args()
    ramp = span(args.ramp)
    window = span(args.window) if args.window else None
    boards = parse_mix(args.boards)
    kinds = sorted({b.kind for b in boards})
    slo_s = args.slo_ms / 1e3
    peak = 0.2 * sum(max_rate(load_twin(b.kind), 16) for b in boards)
    series = diurnal(peak, peak / 10, seed=args.seed)
    settings = EngineSettings()
    t0 = time.perf_counter()
    models = measure_models(kinds, settings, slo_s, workers=2)
    bill = Bill()
    got = replay_measured(
        series,
        boards,
        models,
        slo_s=slo_s,
        parking_modes=("off",),
        policies=("consolidation",),
        bill=bill,
        baselines=False,
    )
    run = got.runs[0]
    park = parking("off", models["ecogd"], bill)
    t1 = time.perf_counter()
    print(series.describe())
    where = "the whole day" if window is None else f"{args.window} only"
    print(f"consolidation, powered-off parking ({bill.describe()}); replayed: {where}")
    print(f"a woken board resumes the tuning state of: {args.handover} (--handover)")
    print(f"board models and the fleet run {t1 - t0:.0f} s\n")
    print(
        "| board | wakes (in the ramp) | requests | rejected, direct | model W / direct W "
        "| model p50 / p99 ms | direct p50 / p99 ms "
        f"| direct p99 ms, {args.after_wake_s:g} s after wakes | wall s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    chosen, idle = sample(run, boards, series, ramp, args.sample)
    if idle:
        print(
            f"sent no request by consolidation after the first {START_S:g} s (every board "
            f"starts awake): every {', '.join(idle)} board\n"
        )
    for i in chosen:
        b = boards[i]
        w = wakes(run, i)
        in_ramp = int(((w >= ramp[0]) & (w < ramp[1])).sum())
        m = model_board(run, i, models["ecogd"][b.kind], series, park, window_s=window)
        if m.offered < 1:
            print(f"| {b.name} | {len(w)} ({in_ramp}) | 0 | never sent a request | | | | | |")
            continue
        s0 = time.perf_counter()
        d = replay_board(
            run,
            i,
            b,
            series,
            park,
            settings,
            seed=args.seed,
            window_s=window,
            peer_handover=args.handover == "peer",
        )
        wall = time.perf_counter() - s0
        start = 0.0 if window is None else window[0]
        length = run.states.shape[0] * run.period_s if window is None else window[1] - start  # type: ignore[union-attr]
        tail, near = d.quantile_after_s(w - start, args.after_wake_s, 99)
        print(
            f"| {b.name} | {len(w)} ({in_ramp}) | {d.offered:,} | {d.offered - d.served:,} | "
            f"{m.energy_j / length:.2f} / {d.energy_j / length:.2f} | "
            f"{m.quantile_s(50) * 1e3:.0f} / {m.quantile_s(99) * 1e3:.0f} | "
            f"{ms(d.quantile_s(50))} / {ms(d.quantile_s(99))} | "
            f"{ms(tail)} ({near:,} req) | {wall:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
