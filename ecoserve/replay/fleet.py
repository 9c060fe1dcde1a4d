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
    Bill,
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
#: The baselines every run is compared with: no tuner at maximum clocks, and the same
#: per-board tuner (EcoGD) with nothing parked, so parking's saving is not mixed with EcoGD's.
BASELINES = ("all-on-max", "all-on-ecogd")
#: Ray's rule is run at Ray Serve's own default target and at Little's law on the board models.
LITTLE = "little"


def parse_ray_targets(text: str) -> list[float | None]:
    """``"2,little"`` -> ``[2.0, None]``; None stands for Little's law (see replay_fleet)."""
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == LITTLE:
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"--ray-target: {part!r} is neither a number nor 'little' (e.g. 2,little)"
            ) from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--ray-target: {part!r} must be > 0 ongoing requests per replica")
        out.append(value)
    if not out:
        raise ValueError("--ray-target is empty; give e.g. 2,little")
    return out


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

    def by(self, policy: str, parking_mode: str, variant: str | None = None) -> FleetRun | None:
        """The first run of ``policy`` (``variant``, if given) with ``parking_mode``."""
        for r in self.runs:
            if r.policy == policy and r.parking in (parking_mode, "none"):
                if variant is None or r.variant == variant:
                    return r
        return None

    def ratios(self, base: str = "all-on-max", *, bill: bool = False) -> dict[str, float]:
        """Energy per request of each run over baseline ``base`` (see :data:`BASELINES`).

        ``bill`` counts the ingress host in both; without it the figures compare with those
        from before the host was billed.
        """
        ref = self.by(base, "none")
        if ref is None:
            return {}
        if bill:
            return {
                r.key: r.bill_joules_per_request / ref.bill_joules_per_request for r in self.runs
            }
        return {r.key: r.joules_per_request / ref.joules_per_request for r in self.runs}

    def all_ratios(self) -> dict[str, dict[str, float]]:
        """Every run over each baseline, boards only and with the ingress host."""
        out = {}
        for base in BASELINES:
            out[base] = self.ratios(base)
            out[f"{base}+ingress"] = self.ratios(base, bill=True)
        return out


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
    ray_targets: Sequence[float | None] = (DEFAULTS.ray_target_ongoing, None),
    bill: Bill | None = None,
    headroom: float = DEFAULTS.headroom,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    length: RunLength | None = None,
    fractions: Sequence[float] = LOAD_FRACTIONS,
) -> FleetReplay:
    """Every policy over ``series`` on ``boards`` (see the module doc).

    The policies are the live fleet's (``make_policy``, the one defaults table), with
    ``headroom`` set here. Ray's rule runs once per entry of ``ray_targets`` (its
    ``target_ongoing_requests``); None stands for a board's ongoing requests at its tuned
    capacity (Little's law on its model), beside Ray's own default of 2. ``bill`` (the
    ingress host, a powered-off board's draw and wake time) defaults to :class:`Bill`'s table.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    settings = settings or EngineSettings()
    bill = bill or Bill()
    kinds = sorted({b.kind for b in boards})
    bill.check_kinds(kinds)
    if not ray_targets:
        raise ValueError("give Ray's rule at least one target (e.g. 2,little)")
    say(f"measuring {', '.join(kinds)} under fixed max clocks and EcoGD")
    models = measure_models(kinds, settings, slo_s, workers, length, fractions)
    calibrate_s = time.perf_counter() - t0
    result = replay_measured(
        series,
        boards,
        models,
        slo_s=slo_s,
        period_s=period_s,
        parking_modes=parking_modes,
        ray_targets=ray_targets,
        bill=bill,
        headroom=headroom,
        policies=("ray-autoscale", "consolidation", "oracle"),
        progress=say,
    )
    result.meta["calibrate_s"] = calibrate_s
    result.meta["wall_s"] = time.perf_counter() - t0
    return result


def replay_measured(
    series: RateSeries,
    boards: list[FleetBoard],
    models: dict[str, dict[str, BoardModel]],
    *,
    slo_s: float,
    period_s: float = 5.0,
    parking_modes: Sequence[str] = PARKING_MODES,
    ray_targets: Sequence[float | None] = (DEFAULTS.ray_target_ongoing, None),
    bill: Bill | None = None,
    headroom: float = DEFAULTS.headroom,
    policies: Sequence[str] = ("ray-autoscale", "consolidation", "oracle"),
    progress: Callable[[str], None] | None = None,
    baselines: bool = True,
) -> FleetReplay:
    """The replay on board models already measured (``measure_models``): the baselines
    (unless ``baselines`` is off), then ``policies`` under every parking mode. A sweep over
    the bill reuses one measurement: the models do not depend on it.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    bill = bill or Bill()
    kinds = sorted({b.kind for b in boards})
    bill.check_kinds(kinds)
    if not ray_targets:
        raise ValueError("give Ray's rule at least one target (e.g. 2,little)")
    rates, _ = period_rates(series, period_s)
    peak = peak_lookup(rates, period_s)
    runs: list[FleetRun] = []

    def go(policy: FleetPolicy, tuner: str, park_mode: str, label: str, variant: str = "") -> None:
        say(f"replaying {label} {variant} ({park_mode})".replace("  ", " "))
        park = parking(park_mode if park_mode != "none" else "off", models[tuner], bill)
        run = run_fleet(
            policy,
            boards,
            models[tuner],
            series,
            park,
            slo_s=slo_s,
            period_s=period_s,
            label=label,
            variant=variant,
            ingress_w=bill.ingress_w,
        )
        if park_mode == "none":
            run.parking = "none"
        runs.append(run)

    base_park = parking("off", models["ecogd"], bill)
    specs_max = board_specs(boards, models["fixed"], base_park, slo_s)
    specs_eco = board_specs(boards, models["ecogd"], base_park, slo_s)
    if baselines:
        go(make_policy("all-on", specs_max, period_s=period_s), "fixed", "none", "all-on-max")
        go(make_policy("all-on", specs_eco, period_s=period_s), "ecogd", "none", "all-on-ecogd")
    # a board's ongoing requests at its tuned capacity (Little's law on its model)
    little = float(np.mean([models["ecogd"][s.kind].ongoing(s.capacity_rps) for s in specs_eco]))
    targets = [
        (little, f"target={little:.3g} (Little)") if t is None else (t, f"target={t:g}")
        for t in ray_targets
    ]
    params = replace(DEFAULTS, headroom=headroom)
    for mode in parking_modes:
        park = parking(mode, models["ecogd"], bill)
        specs = board_specs(boards, models["ecogd"], park, slo_s)
        for name in policies:
            if name == "ray-autoscale":
                for target, variant in targets:
                    chosen = replace(params, ray_target_ongoing=target)
                    policy = make_policy(name, specs, chosen, period_s=period_s)
                    go(policy, "ecogd", mode, name, variant)
                continue
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
        "ray_target_ongoing_requests": [t for t, _ in targets],
        "ray_target_little": little,
        "bill": {
            "ingress_w": bill.ingress_w,
            "off_w": {k: bill.off_w_of(k) for k in kinds},
            "wake_s": {k: bill.wake_s_of(k) for k in kinds},
        },
        "capacity_rps": {s.kind: s.capacity_rps for s in specs_eco},
        "joules_per_request_at_capacity": {s.kind: s.joules_per_request for s in specs_eco},
        "parking": {m: parking(m, models["ecogd"], bill).basis for m in parking_modes},
        "calibrate_s": 0.0,
        "wall_s": time.perf_counter() - t0,
    }
    return FleetReplay(series, boards, runs, meta, models)


def render(result: FleetReplay) -> str:
    """A plain-text table of the runs, with the ratios the fleet is judged by."""
    boards_max = result.ratios("all-on-max")
    bill_max = result.ratios("all-on-max", bill=True)
    bill_eco = result.ratios("all-on-ecogd", bill=True)
    meta = result.meta
    lines = [
        f"{meta['series']}",
        f"boards {meta['boards']}, p99 SLO {meta['slo_p99_ms']:g} ms, "
        f"policy period {meta['period_s']:g} s, consolidation and oracle headroom "
        f"{meta['headroom']:g}",
        "",
        f"{'policy':<36}{'parking':<11}{'J/req':>8}{'x max':>7}{'bill J/req':>11}"
        f"{'x max':>7}{'x eco':>7}{'p50 ms':>8}{'p99 ms':>9}{'SLO viol':>10}{'rejected':>10}"
        f"{'boards':>7}{'wall s':>7}",
    ]
    for r in result.runs:
        d = r.as_dict()
        lines.append(
            f"{r.label:<36}{r.parking:<11}{r.joules_per_request:>8.4f}"
            f"{boards_max.get(r.key, math.nan):>7.3f}{r.bill_joules_per_request:>11.4f}"
            f"{bill_max.get(r.key, math.nan):>7.3f}{bill_eco.get(r.key, math.nan):>7.3f}"
            f"{d['p50_ms']:>8.1f}{d['p99_ms']:>9.1f}{100 * r.slo_violations:>9.3f}%"
            f"{r.rejected:>10.0f}{d['mean_boards_awake']:>7.1f}{r.wall_s:>7.1f}"
        )
    lines += [
        "",
        "J/req, x max: the boards' energy (serving, idle, waking and parked draw) per request "
        "served, and over all-on at max clocks (comparable with figures that left out the "
        "ingress host); bill J/req: with the ingress host, over all-on at max clocks (x max) "
        "and over all-on with EcoGD on every board (x eco: parking's own saving); boards: "
        "mean boards awake (serving or waking).",
    ]
    for mode, basis in dict(meta["parking"]).items():  # type: ignore[call-overload]
        lines.append(f"parking {mode}: {basis}")
    lines.append(
        f"measured board models in {meta['calibrate_s']:.1f} s; whole replay {meta['wall_s']:.1f} s"
    )
    return "\n".join(lines)


def write_outputs(out: Path, result: FleetReplay, plots: bool = True) -> list[Path]:
    """``fleet.json`` and, unless ``plots`` is off, ``fleet_boards.png``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fleet.json"
    payload = {
        "meta": result.meta,
        "ratios_to_all_on_max": result.ratios(),
        "ratios": result.all_ratios(),
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
