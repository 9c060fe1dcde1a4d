"""The fleet lends its idle boards: energy and steps of lending against parking, on a day.

The 60-board day of ``ecoserve replay --fleet --boards orin:20,xavier-nx:20,nano:20`` (the
diurnal series at a fifth of the fleet's maximum rate, EcoGD on every board, the p99 target
250 ms), replayed once with consolidation parking boards powered off. Then, for each step
value (joules-equivalent per step) and each joules budget, the parked board-periods are lent
to the background job (``builtin:digits-finetune``) or left off (``ecoserve.core.fleet_lending``):

- ``kept``: the parking run's decisions kept, each parked board-period lent or off; the wake
  from lending is charged as a boot (not modelled);
- ``wake``: under a value, the kinds worth lending replayed as a parking mode of their own
  (lent draw, woken after one step): the wake delay modelled, serving figures its own.

    python benchmarks/bench_fleet_lending.py [--values 0.2,0.38,0.45,0.6] [--budgets-mj 1,5]
    python benchmarks/bench_fleet_lending.py --quick     # short calibration runs (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ecoserve.cli.fleet_replay import DEFAULT_BOARDS, DEFAULT_PEAK_SHARE, DEFAULT_SLO_S
from ecoserve.core.assembly import EngineSettings
from ecoserve.core.fleet import DEFAULTS, make_policy
from ecoserve.core.fleet_lending import LendingPolicy, LendingPrice
from ecoserve.replay.fleet import measure_models, parse_mix
from ecoserve.replay.harvest import background_cost
from ecoserve.sim.board_model import RunLength, max_rate
from ecoserve.sim.fleet import (
    FleetRun,
    Parking,
    board_specs,
    parking,
    peak_lookup,
    period_rates,
    run_fleet,
)
from ecoserve.sim.fleet_lending import (
    LendingRun,
    lend_over_run,
    lending_parking,
    lending_profile,
    steps_of_parked,
)
from traces.rates import diurnal
from twins.fitted import load_twin

QUICK = RunLength(warmup_windows=10, requests=5_000, min_span_s=60.0, max_span_s=300.0)


def floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{what} {text!r}: give numbers separated by commas") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default=DEFAULT_BOARDS)
    p.add_argument("--job", default="builtin:digits-finetune")
    p.add_argument("--values", default="0.2,0.38,0.45,0.6,1.0", help="J-equivalent per step")
    p.add_argument("--budgets-mj", default="1,5,20", help="joules budgets for the day (MJ)")
    p.add_argument("--duration-s", type=float, default=86_400.0)
    p.add_argument("--period-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="short board-model calibration runs")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    boards = parse_mix(args.boards)
    kinds = sorted({b.kind for b in boards})
    twins = {k: load_twin(k) for k in kinds}
    settings = EngineSettings()
    peak = DEFAULT_PEAK_SHARE * sum(max_rate(twins[b.kind], settings.max_batch) for b in boards)
    series = diurnal(peak, peak / 10, duration_s=args.duration_s, seed=args.seed)
    models = measure_models(
        kinds, settings, DEFAULT_SLO_S, args.workers, QUICK if args.quick else None
    )["ecogd"]
    print(f"board models: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    park = parking("off", models)
    rates, _ = period_rates(series, args.period_s)
    ahead = peak_lookup(rates, args.period_s)

    def replay(parked: Parking) -> FleetRun:
        specs = board_specs(boards, models, parked, DEFAULT_SLO_S)
        policy = make_policy(
            "consolidation", specs, DEFAULTS, period_s=args.period_s, peak_ahead=ahead
        )
        return run_fleet(
            policy, boards, models, series, parked, slo_s=DEFAULT_SLO_S, period_s=args.period_s
        )

    base = replay(park)
    profiles = {
        k: lending_profile(k, twins[k], background_cost(args.job, twins[k]), park.parked_w[k])
        for k in kinds
    }
    rows: list[tuple[LendingRun, FleetRun]] = []
    wake_runs: dict[tuple[str, ...], FleetRun] = {}
    for value in floats(args.values, "--values"):
        price = LendingPrice(value_per_step_j=value)
        rows.append((lend_over_run(base, boards, LendingPolicy(profiles, price), park), base))
        policy = LendingPolicy(profiles, price)
        lend = tuple(k for k in kinds if policy.worth_lending(k))
        if lend and lend not in wake_runs:
            wake_runs[lend] = replay(lending_parking(park, profiles, lend))
        if lend:
            run = wake_runs[lend]
            rows.append((steps_of_parked(run, boards, profiles, lend, price.describe(), base), run))
    for mj in floats(args.budgets_mj, "--budgets-mj"):
        price = LendingPrice(budget_j=mj * 1e6, span_s=args.duration_s)
        rows.append((lend_over_run(base, boards, LendingPolicy(profiles, price), park), base))

    print(f"{series.describe()}; boards {args.boards}; consolidation, parked boards off")
    for prof in profiles.values():
        print(
            f"  {prof.kind}: lent {prof.lent_w:.2f} W, step {prof.step_s * 1e3:.1f} ms of "
            f"{prof.items_per_step} items, {prof.extra_joules_per_step:.3f} J/step over off "
            f"({prof.off_w:g} W)"
        )
    b = base.as_dict()
    print(
        f"parking: {base.energy_j / 1e6:.2f} MJ, {base.energy_j / base.served:.4f} J/req, "
        f"p99 {b['p99_ms']:.0f} ms, SLO violations {100 * base.slo_violations:.2f}%, "
        f"mean boards awake {b['mean_boards_awake']:.1f}"
    )
    head = (
        f"{'price':<32}{'wake':<6}{'energy MJ':>10}{'x park':>8}{'steps M':>9}"
        f"{'extra J/step':>13}{'lent board-h':>13}{'p99 ms':>8}{'SLO viol':>9}"
    )
    print(head)
    print("-" * len(head))
    out = []
    for lr, run in rows:
        d = lr.as_dict()
        r = run.as_dict()
        print(
            f"{lr.price:<32}{'yes' if lr.wake_modelled else 'no':<6}"
            f"{lr.energy_j / 1e6:>10.2f}{lr.energy_j / base.energy_j:>8.3f}"
            f"{lr.steps / 1e6:>9.2f}{d['extra_j_per_step']:>13.3f}"
            f"{lr.lent_board_s / 3600:>13.0f}{r['p99_ms']:>8.0f}"
            f"{100 * run.slo_violations:>8.2f}%"
        )
        out.append({**d, "p99_ms": r["p99_ms"], "slo_violations": run.slo_violations})
    print(
        "wake no: the parking run's decisions, a lent board's wake charged as a boot; "
        "wake yes: lent kinds replayed as a parking mode woken in one step (the policy still "
        f"acts once a period). Whole run {time.perf_counter() - t0:.0f} s."
    )
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
