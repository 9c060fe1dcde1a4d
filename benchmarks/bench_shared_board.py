"""Three models on one Xavier NX twin: tuned together, by three daemons, or left at maximum.

One engine tuning jointly (one queue and batch knob per model, one EcoGD over the board's
clocks) against three daemons (one engine and EcoGD per model, each writing the same clocks:
the last writer wins, each measuring energy on the shared board meter) and against every
clock and batch size at maximum, over the same arrival traces (``ecoserve.replay.shared_board``
says which). Energy is the board's (every batch's joules, and the meter with idle), p99 per
model, and the joint cost on each model's all-maximum baseline; medians over the seeds, with
ratios to the daemons taken seed by seed. The target: joint <= 0.85x the daemons' energy at
equal or better p99 for every model.

    python benchmarks/bench_shared_board.py [--seeds 0,1,2] [--duration 1h] [--wait 2.0]
        [--slo cnn=0.25,...] [--device xavier-nx] [--workers 2] [--no-oracles] [--json FILE]
    python benchmarks/bench_shared_board.py --measure-models [--rounds 15]

In SLO mode (``--slo``) no oracles are computed: their vectorised estimate keeps no latency
distribution, so it cannot rank configurations by a percentile.

``--measure-models`` times the built-in models with torch (one thread, batch sizes 1..16) and
prints each one's batch time relative to ``builtin:cnn``: the factors ``MODEL_COSTS`` holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from itertools import product
from typing import Any

from ecoserve.core.assembly import EngineSettings
from ecoserve.replay.runner import default_workers
from ecoserve.replay.shared_board import (
    DEFAULT_MODELS,
    MODEL_COSTS,
    SharedBoardPlan,
    markdown,
    run_shared_board,
)
from ecoserve.replay.suite import PAPER_MAX_WAIT_S
from twins.base import DeviceTwin

SIZES = (1, 2, 4, 8, 16)


def measure_models(rounds: int, calls: int = 40) -> dict[str, dict[str, Any]]:
    """Median batch time of each built-in model per batch size, relative to ``builtin:cnn``.

    Rounds interleave the models and sizes, so a slow spell of a shared machine hits them
    alike.
    """
    import torch

    from ecoserve.models.loader import load_model

    torch.set_num_threads(1)
    specs = {name: cost.spec for name, cost in MODEL_COSTS.items()}
    models = {name: load_model(spec) for name, spec in specs.items()}
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in SIZES} for n in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for b in SIZES:
                for name, model in models.items():
                    batch = torch.stack([model.example_item()] * b)
                    for _ in range(5):
                        model.batch_fn(batch)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        model.batch_fn(batch)
                    times[name][b].append((time.perf_counter() - t0) / calls)
    medians = {n: {b: statistics.median(v) for b, v in by.items()} for n, by in times.items()}
    out = {}
    for name, by in medians.items():
        ratios = [by[b] / medians["cnn"][b] for b in SIZES]
        out[name] = {
            "spec": specs[name],
            "ms": {b: round(by[b] * 1e3, 4) for b in SIZES},
            "ratio": [round(r, 3) for r in ratios],
            "factor": round(math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 3),
        }
    return out


def clock_worth(board: DeviceTwin, sizes: tuple[int, ...] = (1, 4, 16)) -> list[str]:
    """What the clocks can save on this twin: per batch size, the joules of a batch at the
    cheapest clocks over those at maximum (the batch's own, idle draw included, and above
    idle: what the meter adds for it)."""
    top = board.max_freqs()
    names = [k.name for k in board.knobs()]
    settings = [
        dict(zip(names, v, strict=True)) for v in product(*(k.values for k in board.knobs()))
    ]
    idle = board.power(top, 0.0)
    lines = []
    for b in sizes:
        whole = [board.power(f, 1.0, batch=b) * board.batch_time(b, f) for f in settings]
        above = [
            (board.power(f, 1.0, batch=b) - board.power(f, 0.0)) * board.batch_time(b, f)
            for f in settings
        ]
        at_top = board.power(top, 1.0, batch=b) * board.batch_time(b, top)
        above_top = (board.power(top, 1.0, batch=b) - idle) * board.batch_time(b, top)
        lines.append(
            f"batch {b}: cheapest clocks {min(whole) / at_top:.3f}x the joules at maximum "
            f"({min(above) / above_top:.3f}x above idle)"
        )
    return lines


def parse_slo(text: str | None) -> dict[str, float]:
    """``cnn=0.25,transformer=0.3`` -> seconds per model."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--slo: {part!r} is not MODEL=SECONDS") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--duration", default="1h", help="trace length per model (default 1h)")
    ap.add_argument("--wait", type=float, default=PAPER_MAX_WAIT_S, help="batching timer (s)")
    ap.add_argument("--batch-timer", default="fixed", choices=("fixed", "fill"))
    ap.add_argument("--accounting", default="active", choices=("active", "total"))
    ap.add_argument("--slo", help="SLO mode: per-model latency targets, MODEL=SECONDS,...")
    ap.add_argument("--slo-percentile", type=float, default=99.0)
    ap.add_argument("--device", default="xavier-nx")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--no-oracles", action="store_true")
    ap.add_argument("--json", help="write every record here")
    ap.add_argument("--measure-models", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)

    if args.measure_models:
        result = measure_models(args.rounds)
        for name, row in result.items():
            print(
                f"{name:13s} {row['spec']:22s} factor {row['factor']:.3f}  by batch {row['ratio']}"
            )
            print(f"{'':13s} ms per batch {row['ms']}")
        return 0

    slo = parse_slo(args.slo)
    unknown = sorted(set(slo) - {m.name for m in DEFAULT_MODELS})
    if unknown:
        raise SystemExit(f"--slo: no model {unknown}; models: {[m.name for m in DEFAULT_MODELS]}")
    models = tuple(replace(m, slo_latency_s=slo.get(m.name)) for m in DEFAULT_MODELS)
    settings = EngineSettings(
        max_wait_s=args.wait,
        batch_timer=args.batch_timer,
        accounting=args.accounting,
        slo_percentile=args.slo_percentile,
    )
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise SystemExit(
            f"--seeds: {args.seeds!r} is not a comma-separated list of integers"
        ) from None
    plan = SharedBoardPlan(
        models=models,
        device=args.device,
        settings=settings,
        duration=args.duration,
        seeds=seeds,
        # in SLO mode the oracles' estimate has no percentile to rank by: left out
        oracles=not (args.no_oracles or slo),
    )
    t0 = time.perf_counter()

    def progress(what: str, done: int, total: int) -> None:
        print(f"  [{done}/{total}] {what} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    report = run_shared_board(plan, workers=args.workers, progress=progress)
    wall = time.perf_counter() - t0
    print(
        f"{args.device} twin, {len(models)} models, {args.duration} each, seeds {args.seeds}, "
        f"timer {args.batch_timer} {args.wait:g} s, {args.accounting} accounting"
        + (f", SLO p{args.slo_percentile:g} {slo}" if slo else "")
        + f"; {wall:.0f} s on {args.workers} workers ({os.cpu_count()} cores)"
    )
    for m in models:
        print(
            f"  {m.name}: factor {m.factor:g}, {m.workload.trace} at {m.workload.rate:g} req/s"
            + (f" from {m.start}" if m.start else "")
        )
    print(markdown(report))
    print(f"\nWhat the clocks can save on the {args.device} twin (any model: one factor):")
    for line in clock_worth(plan.board()):
        print(f"  {line}")
    if args.json:
        doc = {
            "date": datetime.date.today().isoformat(),
            "machine": platform.platform(),
            "argv": sys.argv[1:],
            "wall_s": wall,
            "baselines": {m: asdict(b) for m, b in report.baselines.items()},
            "records": [r.as_dict() for r in report.records],
            "oracles": None
            if report.oracles is None
            else {
                "static_cost": report.oracles.static_cost,
                "static_values": report.oracles.static_values,
                "dynamic_cost": report.oracles.dynamic_cost,
                "maximum_cost": report.oracles.maximum_cost,
                "candidates": report.oracles.candidates,
            },
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
