"""``ecoserve replay --fleet``: fleet policies side by side on one day of traffic.

Builds the fleet (a board mix such as ``orin:20,xavier-nx:20,nano:20``), measures each board
kind's model under its tuners (``ecoserve.sim.board_model``), then replays the same arrival
series under every policy and parking mode and writes one table, a JSON file and the plot
of boards awake over time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.core.fleet import DEFAULTS, FleetPolicy, make_policy, parse_kind_counts
from ecoserve.sim.board_model import LOAD_FRACTIONS, BoardModel, RunLength, calibrate
from ecoserve.sim.fleet import (
    FleetBoard,
    FleetRun,
    board_specs,
    parking,
    peak_lookup,
    period_rates,
    run_fleet,
)
from traces.rates import RateSeries
from twins.fitted import fitted_boards

PARKING_MODES = ("off", "min-clocks")


def parse_mix(text: str) -> list[FleetBoard]:
    """``orin:20,xavier-nx:20,nano:20`` -> boards, kinds interleaved as on a shelf."""
    counts: dict[str, int] = {}
    for kind, count in parse_kind_counts(text, "--boards", "orin:20"):
        if kind not in fitted_boards():
            raise ValueError(
                f"unknown board kind {kind!r} in --boards; fitted: {', '.join(fitted_boards())}"
            )
        counts[kind] = counts.get(kind, 0) + count
    if not counts:
        raise ValueError("--boards is empty; give e.g. orin:20,xavier-nx:20,nano:20")
    boards: list[FleetBoard] = []
    for i in range(max(counts.values())):
        for kind, n in counts.items():
            if i < n:
                boards.append(FleetBoard(f"{kind}-{i}", kind))
    return boards


@dataclass
class FleetReplay:
    """Everything a fleet replay produced, ready to print or save."""

    series: RateSeries
    boards: list[FleetBoard]
    runs: list[FleetRun]
    meta: dict[str, object] = field(default_factory=dict)
    #: The board models each tuner's runs read, by tuner then board kind.
    models: dict[str, dict[str, BoardModel]] = field(default_factory=dict)

    def by(self, policy: str, parking_mode: str) -> FleetRun | None:
        for r in self.runs:
            if r.policy == policy and r.parking in (parking_mode, "none"):
                return r
        return None

    def ratios(self) -> dict[str, float]:
        """Energy per request of each run over all-on round-robin at maximum clocks."""
        base = self.by("all-on-max", "none")
        if base is None:
            return {}
        return {
            f"{r.policy}/{r.parking}": r.joules_per_request / base.joules_per_request
            for r in self.runs
        }


def measure_models(
    kinds: Sequence[str],
    settings: EngineSettings,
    slo_s: float,
    workers: int,
    length: RunLength | None = None,
    fractions: Sequence[float] = LOAD_FRACTIONS,
) -> dict[str, dict[str, BoardModel]]:
    """Each kind's model at every knob max (``fixed``) and under EcoGD.

    EcoGD runs with the fleet's latency target as its SLO (the cost's SLO mode, p99), unless
    ``settings`` already names one: a board that is sent traffic up to its capacity must
    tune within the target the capacity was defined by.
    """
    tuned = settings
    if settings.slo_latency_s is None:
        tuned = replace(settings, slo_latency_s=slo_s, slo_percentile=99.0)
    return {
        tuner: {
            k: calibrate(k, tuner, chosen, workers=workers, length=length, fractions=fractions)
            for k in kinds
        }
        for tuner, chosen in (("fixed", settings), ("ecogd", tuned))
    }


def replay_fleet(
    series: RateSeries,
    boards: list[FleetBoard],
    *,
    slo_s: float = 0.25,
    period_s: float = 5.0,
    settings: EngineSettings | None = None,
    parking_modes: Sequence[str] = PARKING_MODES,
    ray_target: float | None = None,
    headroom: float = DEFAULTS.headroom,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    length: RunLength | None = None,
    fractions: Sequence[float] = LOAD_FRACTIONS,
) -> FleetReplay:
    """Every policy over ``series`` on ``boards`` (see the module doc).

    The policies are the live fleet's (``make_policy``, the one defaults table), with
    ``headroom`` and Ray's ``target_ongoing_requests`` set here; the latter defaults to a
    board's ongoing requests at its tuned capacity (Little's law), not Ray's 2.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    settings = settings or EngineSettings()
    kinds = sorted({b.kind for b in boards})
    say(f"measuring {', '.join(kinds)} under fixed max clocks and EcoGD")
    models = measure_models(kinds, settings, slo_s, workers, length, fractions)
    calibrate_s = time.perf_counter() - t0
    rates, _ = period_rates(series, period_s)
    peak = peak_lookup(rates, period_s)
    runs: list[FleetRun] = []

    def go(policy: FleetPolicy, tuner: str, park_mode: str, label: str) -> None:
        say(f"replaying {label} ({park_mode})")
        park = parking(park_mode if park_mode != "none" else "off", models[tuner])
        run = run_fleet(
            policy,
            boards,
            models[tuner],
            series,
            park,
            slo_s=slo_s,
            period_s=period_s,
            label=label,
        )
        if park_mode == "none":
            run.parking = "none"
        runs.append(run)

    base_park = parking("off", models["ecogd"])
    specs_max = board_specs(boards, models["fixed"], base_park, slo_s)
    specs_eco = board_specs(boards, models["ecogd"], base_park, slo_s)
    go(make_policy("all-on", specs_max, period_s=period_s), "fixed", "none", "all-on-max")
    go(make_policy("all-on", specs_eco, period_s=period_s), "ecogd", "none", "all-on-ecogd")
    target = ray_target
    if target is None:  # a board's ongoing requests at its tuned capacity (Little's law)
        target = float(
            np.mean([models["ecogd"][s.kind].ongoing(s.capacity_rps) for s in specs_eco])
        )
    params = replace(DEFAULTS, headroom=headroom, ray_target_ongoing=target)
    for mode in parking_modes:
        park = parking(mode, models["ecogd"])
        specs = board_specs(boards, models["ecogd"], park, slo_s)
        for name in ("ray-autoscale", "consolidation", "oracle"):
            policy = make_policy(name, specs, params, period_s=period_s, peak_ahead=peak)
            go(policy, "ecogd", mode, name)
    meta: dict[str, object] = {
        "series": series.describe(),
        "source": series.source,
        "boards": {k: sum(1 for b in boards if b.kind == k) for k in kinds},
        "slo_p99_ms": slo_s * 1e3,
        "headroom": headroom,
        "hysteresis": params.hysteresis,
        "park_after_s": params.park_after_s,
        "period_s": period_s,
        "ray_target_ongoing_requests": target,
        "capacity_rps": {s.kind: s.capacity_rps for s in specs_eco},
        "joules_per_request_at_capacity": {s.kind: s.joules_per_request for s in specs_eco},
        "parking": {m: parking(m, models["ecogd"]).basis for m in parking_modes},
        "calibrate_s": calibrate_s,
        "wall_s": time.perf_counter() - t0,
    }
    return FleetReplay(series, boards, runs, meta, models)


def render(result: FleetReplay) -> str:
    """A plain-text table of the runs, with the ratios the fleet is judged by."""
    ratios = result.ratios()
    lines = [
        f"{result.meta['series']}",
        f"boards {result.meta['boards']}, p99 SLO {result.meta['slo_p99_ms']:g} ms, "
        f"policy period {result.meta['period_s']:g} s, consolidation and oracle headroom "
        f"{result.meta['headroom']:g}",
        "",
        f"{'policy':<15}{'parking':<12}{'J/req':>9}{'x max-RR':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'SLO viol':>10}{'boards':>8}{'wall s':>8}",
    ]
    for r in result.runs:
        d = r.as_dict()
        lines.append(
            f"{r.policy:<15}{r.parking:<12}{r.joules_per_request:>9.4f}"
            f"{ratios.get(f'{r.policy}/{r.parking}', math.nan):>9.3f}{d['p50_ms']:>9.1f}"
            f"{d['p99_ms']:>9.1f}{100 * r.slo_violations:>9.3f}%{d['mean_boards_awake']:>8.1f}"
            f"{r.wall_s:>8.1f}"
        )
    lines += [
        "",
        "J/req: the whole fleet's energy (serving, idle, waking and parked draw) per request "
        "served; boards: mean boards awake (serving or waking).",
    ]
    for mode, basis in dict(result.meta["parking"]).items():  # type: ignore[call-overload]
        lines.append(f"parking {mode}: {basis}")
    lines.append(
        f"measured board models in {result.meta['calibrate_s']:.1f} s; "
        f"whole replay {result.meta['wall_s']:.1f} s"
    )
    return "\n".join(lines)


def write_outputs(out: Path, result: FleetReplay, plots: bool = True) -> list[Path]:
    """``fleet.json`` and, unless ``plots`` is off, ``fleet_boards.png``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fleet.json"
    payload = {
        "meta": result.meta,
        "ratios_to_all_on_max": result.ratios(),
        "runs": [r.as_dict() for r in result.runs],
    }
    path.write_text(json.dumps(payload, indent=2, default=jsonable) + "\n", encoding="utf-8")
    files = [path]
    if plots:
        from ecoserve.replay.plots import plot_fleet_boards

        rates, _ = period_rates(result.series, result.runs[0].period_s)
        files.append(plot_fleet_boards(out / "fleet_boards.png", result.runs, rates))
    return files


def jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
