"""``ecoserve replay --fleet``: the options and the run (see ``ecoserve.replay.fleet``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ecoserve.core.fleet import DEFAULTS
from ecoserve.server.deprecated import add_alias

DEFAULT_BOARDS = "orin:20,xavier-nx:20,nano:20"
#: Default envelope peak, as a share of the fleet's rate with every board at every knob max.
DEFAULT_PEAK_SHARE = 0.2
#: The fleet's p99 latency target when --slo-latency-s is not given (s): the live fleet's.
DEFAULT_SLO_S = DEFAULTS.slo_s


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The fleet's own options; the seed and the SLO are the replay's (--seed, --slo-*)."""
    g = p.add_argument_group("fleet (--fleet)")
    g.add_argument(
        "--fleet",
        action="store_true",
        help="replay one arrival series on a fleet of board twins under every fleet policy "
        "(all-on at max clocks, all-on with EcoGD, Ray Serve's autoscaling rule, "
        "consolidation, oracle)",
    )
    g.add_argument(
        "--boards",
        default=DEFAULT_BOARDS,
        help=f"board mix KIND:COUNT,... (default {DEFAULT_BOARDS})",
    )
    g.add_argument(
        "--peak-rate",
        type=float,
        help="diurnal envelope peak in req/s (default: 20%% of the fleet's rate at max clocks)",
    )
    g.add_argument("--trough-rate", type=float, help="diurnal envelope trough (default: peak / 10)")
    g.add_argument(
        "--parking",
        default=FLEET_ONLY_DEFAULTS["parking"],
        help="parking modes to compare: off (operator power-off), min-clocks (default both)",
    )
    g.add_argument("--period-s", type=float, default=5.0, help="fleet policy period (s)")
    g.add_argument(
        "--scale-load",
        type=float,
        default=1.0,
        metavar="K",
        help="K times the arrivals over the same clock, for --fleet and single-board replays "
        "alike (the day stays a day; --rate instead compresses the trace's clock)",
    )
    g.add_argument(
        "--headroom",
        type=float,
        default=DEFAULTS.headroom,
        help="spare capacity consolidation and the oracle keep above the rate "
        f"(default {DEFAULTS.headroom}: what kept the direct replay's p99 within the SLO)",
    )
    g.add_argument(
        "--ray-target",
        default="2,little",
        help="Ray rule's target_ongoing_requests, one run each: numbers, or 'little' for a "
        "board's ongoing requests at its tuned capacity (default 2,little: Ray's own default "
        "beside Little's law)",
    )
    g.add_argument(
        "--ingress-w",
        type=float,
        help="the ingress host's (and switch's) draw in W, always on, billed in every policy "
        "(default 40, assumed; 0 leaves it out)",
    )
    g.add_argument(
        "--parked-w",
        help="a powered-off board's draw in W: a number, KIND:W,... or both (default 0.5, assumed)",
    )
    g.add_argument(
        "--wake-s",
        help="a powered-off board's time from power-on to serving in s: a number, KIND:S,... "
        "or both (default 45, assumed)",
    )
    add_alias(p, "--period", "--period-s")
    add_alias(p, "--slo-ms", "--slo-latency-s", lambda ms: ms / 1e3, "--slo-latency-s (seconds)")


#: The fleet's own options (their dests) and their defaults: given without --fleet, an error.
FLEET_ONLY_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        "boards": DEFAULT_BOARDS,
        "peak_rate": None,
        "trough_rate": None,
        "parking": "off,min-clocks",
        "period_s": 5.0,
        "headroom": DEFAULTS.headroom,
        "ray_target": "2,little",
        "ingress_w": None,
        "parked_w": None,
        "wake_s": None,
    }
)


def misplaced_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the fleet's options here, or None: fleet-only options given
    without ``--fleet`` (they would be ignored), or ``--background`` with it."""
    if args.fleet:
        if getattr(args, "background", None):
            return (
                "--background is not replayed with --fleet: the fleet lends its idle boards "
                "to background work in benchmarks/bench_fleet_lending.py"
            )
        return None
    given = [
        "--" + dest.replace("_", "-")
        for dest, default in FLEET_ONLY_DEFAULTS.items()
        if getattr(args, dest, default) != default
    ]
    if given:
        return (
            f"fleet-only option(s) without --fleet: {', '.join(given)} "
            "(add --fleet, or leave them out)"
        )
    return None


def run(args: argparse.Namespace, err: Any) -> int:
    """Run the fleet replay the options describe; 2 with a message on bad input."""
    from ecoserve.core.assembly import EngineSettings
    from ecoserve.replay.fleet import (
        PARKING_MODES,
        jsonable,
        parse_mix,
        parse_ray_targets,
        render,
        replay_fleet,
        write_outputs,
    )
    from ecoserve.sim.board_model import max_rate
    from ecoserve.sim.fleet import make_bill, scale_load
    from traces import load_trace, parse_duration
    from traces.rates import binned, diurnal
    from twins.fitted import load_twin

    try:
        boards = parse_mix(args.boards)
        modes = [m.strip() for m in args.parking.split(",") if m.strip()]
        bad = [m for m in modes if m not in PARKING_MODES]
        if bad or not modes:
            raise ValueError(f"--parking: use one or both of {', '.join(PARKING_MODES)}")
        slo_s = DEFAULT_SLO_S if args.slo_latency_s is None else args.slo_latency_s
        if args.slo_percentile not in (None, 99.0):
            raise ValueError("the fleet replay scores p99 only: leave --slo-percentile out")
        if not slo_s > 0 or not args.period_s > 0 or not args.headroom >= 0:
            raise ValueError("--slo-latency-s and --period-s must be > 0, --headroom >= 0")
        ray_targets = parse_ray_targets(args.ray_target)
        bill = make_bill(args.ingress_w, args.parked_w, args.wake_s)
        bill.check_kinds(sorted({b.kind for b in boards}))
        if len(args.trace) > 1:
            raise ValueError("--fleet replays one trace")
        spec = args.trace[0] if args.trace else "diurnal"
        duration = parse_duration(args.duration) if args.duration else None
        if spec == "diurnal":
            peak = args.peak_rate
            if peak is None:
                full = sum(max_rate(load_twin(b.kind), args.max_batch) for b in boards)
                peak = DEFAULT_PEAK_SHARE * full
            trough = args.trough_rate if args.trough_rate is not None else peak / 10
            series = diurnal(peak, trough, duration_s=duration or 86_400.0, seed=args.seed)
        else:
            trace = load_trace(spec, duration=args.duration, rate=args.rate)
            series = binned(trace, 1.0)
        series = scale_load(series, args.scale_load)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        err.print(f"[red]ecoserve replay --fleet: {exc}[/red]")
        return 2
    settings = EngineSettings(max_batch=args.max_batch)
    if args.max_wait_s is not None:
        settings.max_wait_s = float(args.max_wait_s)
    try:
        result = replay_fleet(
            series,
            boards,
            slo_s=slo_s,
            period_s=args.period_s,
            settings=settings,
            parking_modes=modes,
            ray_targets=ray_targets,
            bill=bill,
            headroom=args.headroom,
            workers=args.workers or 2,
            progress=lambda msg: err.print(msg),
        )
    except ValueError as exc:
        err.print(f"[red]ecoserve replay --fleet: {exc}[/red]")
        return 2
    if args.out:
        files = write_outputs(args.out, result, plots=not args.no_plots)
        err.print(f"wrote {len(files)} files to {args.out}")
    if args.json:
        payload = {
            "meta": result.meta,
            "ratios": result.all_ratios(),
            "runs": [r.as_dict() for r in result.runs],
        }
        sys.stdout.write(json.dumps(payload, default=jsonable) + "\n")
    else:
        print(render(result))
    return 0
