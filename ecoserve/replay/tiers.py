"""Split points and cascade thresholds compared over one trace and one link schedule.

Every row is an ordinary replay (``ecoserve.sim.driver.simulate``) of the same arrivals on a
tier twin (``twins.tiers``): the tier knob is one more knob of the engine's search space, and
a row differs only by the tuner that moves it: ``fixed`` at each split point or threshold
asked for, ``neurosurgeon`` (the split planned from the stage profiles), ``cascade`` (the
threshold chosen from what the two models disagree on), and any ordinary tuner (``ecogd``)
moving the knob from measured costs. All rows share one baseline (the all-local split, or
forward-everything, priced on the schedule's first link), so their costs compare.

:func:`digits_setup` measures the shipped digits models into what a replay needs;
``ecoserve replay --tiers`` prints :func:`tier_replay_report`.
"""

from __future__ import annotations

import platform
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ecoserve.core.assembly import EngineSettings, build_space
from ecoserve.core.cost import Baseline
from ecoserve.core.knobs import SPLIT, THRESHOLD
from ecoserve.core.tiers import CascadeCosts, DevicePower, SplitCosts, cascade_batch
from ecoserve.models.cascade import confidence
from ecoserve.models.stages import median_call_s, profile_stages
from ecoserve.sim.driver import SimResult, simulate
from traces.trace import Trace
from tuners.cascade_threshold import ThresholdChooser
from tuners.neurosurgeon import Objective, SplitPlanner
from twins.link import EmulatedLink
from twins.tiers import CascadeSamples, CascadeTwin, SplitTwin

#: Engine settings of a tier replay: one request per batch, as a small device serves them,
#: and short windows, so a tuner sees a link change within seconds.
TIER_SETTINGS = EngineSettings(
    min_batch=1,
    max_batch=1,
    max_wait_s=0.0,
    window_requests=40,
    warmup_requests=5,
    window_seconds=2.0,
    alpha=0.5,
)

#: The cascade's accuracy term in the cost (every tuner of the threshold is scored with it).
ERROR_WEIGHT = 10.0


@dataclass(frozen=True)
class DigitsSetup:
    """What a replay of the digits models needs, measured on this machine."""

    planner: SplitPlanner
    cascade: CascadeCosts
    samples: CascadeSamples
    power: DevicePower
    accuracy_large: float
    accuracy_small: float


@torch.inference_mode()
def digits_setup(
    *,
    device_slowdown: float = 20.0,
    server_speedup: float = 4.0,
    power: DevicePower | None = None,
    objective: Objective | None = None,
    repeats: int = 30,
) -> DigitsSetup:
    """Profiles, cascade costs and per-input outcomes of the digits models.

    Stage times are measured here at batch 1, then the device is taken ``device_slowdown``
    times slower (a microcontroller-class device next to this CPU) and the next tier
    ``server_speedup`` times faster than this CPU. Cut sizes, accuracies and scores are
    the models' own. Transfers are priced with the 128-byte ``.npy`` header.
    """
    from ecoserve.models.digits import load_digits_model, load_digits_split
    from ecoserve.models.tensor_codec import encode_tensor

    power = power or DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
    small, large = load_digits_model("small"), load_digits_model("large")
    split = load_digits_split()
    example = split.x_test[:1]
    measured = profile_stages(large, example, repeats=repeats, tier="here")
    device = measured.scaled(1.0 / device_slowdown, tier="device")
    server = measured.scaled(server_speedup, tier="next")
    header = len(encode_tensor(example)) - example.numel() * example.element_size()
    planner = SplitPlanner(device, server, power, objective, overhead_bytes=header)
    out = large(example)
    cascade = CascadeCosts(
        small_s=median_call_s(lambda: small(example)) * device_slowdown,
        big_s=median_call_s(lambda: large(example)) / server_speedup,
        input_bytes=len(encode_tensor(example)),
        output_bytes=len(encode_tensor(out)),
    )
    scores, small_preds = confidence(small(split.x_test).float())
    samples = CascadeSamples(
        scores=scores.numpy().astype(np.float64),
        small_preds=small_preds.numpy(),
        big_preds=large(split.x_test).argmax(dim=1).numpy(),
        labels=split.y_test.numpy(),
    )
    acc_small = float(np.mean(samples.small_preds == samples.labels))
    acc_large = float(np.mean(samples.big_preds == samples.labels))
    return DigitsSetup(planner, cascade, samples, power, acc_large, acc_small)


def _segments(link: EmulatedLink, end_s: float) -> list[tuple[float, float, float]]:
    """``(start, end, bandwidth)`` of each schedule segment that starts before ``end_s``."""
    starts = [s for s, _ in link.segments]
    out = []
    for i, (start, bw) in enumerate(link.segments):
        if start >= end_s:
            break
        stop = starts[i + 1] if i + 1 < len(starts) else end_s
        out.append((start, min(stop, end_s), bw))
    return out


def _row(
    policy: str,
    result: SimResult,
    twin: SplitTwin | CascadeTwin,
    segments: list[tuple[float, float, float]],
    accuracy: float | None,
) -> dict[str, Any]:
    arrivals, latency = result.arrivals, result.completions - result.arrivals
    served = result.served
    log = twin.log
    rows = sum(b.rows for b in log)
    correct = [b.correct for b in log if b.correct is not None]
    knobs = [b.knob for b in log]

    def knob_mode(a: float, b: float) -> float | None:
        count: Counter[float] = Counter()
        for batch in log:
            if a <= batch.start < b:
                count[batch.knob] += batch.rows
        return count.most_common(1)[0][0] if count else None

    def mean_ms(a: float, b: float) -> float | None:
        mask = (arrivals >= a) & (arrivals < b) & ~np.isnan(latency)
        return 1e3 * float(latency[mask].mean()) if mask.any() else None

    lat = latency[~np.isnan(latency)]
    return {
        "policy": policy,
        "mode": twin.name,
        "requests": served,
        "latency_mean_ms": 1e3 * float(lat.mean()),
        "latency_p95_ms": 1e3 * float(np.percentile(lat, 95)),
        "energy_mj": 1e3 * result.active_energy_j / max(served, 1),
        "sent_kb": sum(b.sent_bytes for b in log) / 1e3,
        "forwarded": sum(b.forwarded for b in log) / max(rows, 1),
        "accuracy": sum(correct) / max(rows, 1) if correct else accuracy,
        "knob_changes": sum(1 for a, b in zip(knobs, knobs[1:]) if a != b),
        "probes": twin.probes,
        "windows": len(result.reports),
        "knob_by_segment": [knob_mode(a, b) for a, b, _ in segments],
        "latency_ms_by_segment": [mean_ms(a, b) for a, b, _ in segments],
    }


def _replay(
    arrivals: np.ndarray,
    twin: SplitTwin | CascadeTwin,
    settings: EngineSettings,
    baseline: Baseline,
    knob: str,
    tuner: str,
    seed: int,
    value: float | None = None,
    **params: Any,
) -> SimResult:
    if value is not None:
        space = build_space(twin.knobs(), settings)
        index = space.knobs[space.axis(knob)].index_of(value)
        params["config"] = list(space.with_value(space.maximum(), knob, index))
    return simulate(
        arrivals,
        twin,
        settings,
        baseline=baseline,
        tuner=tuner,
        tuner_params=params,
        seed=seed,
    )


def compare_tiers(
    trace: Trace,
    link: EmulatedLink,
    setup: DigitsSetup,
    *,
    split_points: Sequence[int] | None = None,
    thresholds: Sequence[float] = (0.0, 0.9, 0.99, 1.0),
    tuners: Sequence[str] = ("ecogd",),
    settings: EngineSettings = TIER_SETTINGS,
    accuracy_floor: float = 0.97,
    oracle: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per policy replayed over ``trace`` and ``link``, split rows then cascade rows.

    Split: each of ``split_points`` (default: ``0`` and ``N``, the two ends) fixed, the
    planner (``neurosurgeon``), then each of ``tuners``. Cascade: each of ``thresholds``
    fixed, the chooser (``cascade``, with ``accuracy_floor``), then each of ``tuners``; the
    threshold's rows are scored with the accuracy term (weight ``ERROR_WEIGHT``). Row keys:
    ``policy``, ``mode``, ``requests``, ``latency_mean_ms``, ``latency_p95_ms``,
    ``energy_mj`` (device, per request), ``sent_kb`` (total uplink), ``forwarded``,
    ``accuracy``, ``knob_changes``, ``probes``, ``windows``, and per schedule segment
    ``knob_by_segment`` and ``latency_ms_by_segment``.
    """
    arrivals = np.asarray(trace.arrivals, dtype=np.float64)
    segments = _segments(link, max(trace.duration, 1e-9))
    planner, power = setup.planner, setup.power
    n = planner.n_stages
    split_costs: SplitCosts = planner.costs
    local = split_costs.figures(n, link.link_at(0.0))
    split_base = Baseline(local.energy_j, local.latency_s)
    rows: list[dict[str, Any]] = []

    def split_row(label: str, tuner: str, value: float | None = None, **params: Any) -> None:
        twin = SplitTwin(split_costs, link, oracle=oracle)
        r = _replay(arrivals, twin, settings, split_base, SPLIT, tuner, seed, value, **params)
        rows.append(_row(label, r, twin, segments, setup.accuracy_large))

    for k in split_points if split_points is not None else (0, n):
        split_row(f"split k={k}", "fixed", float(k))
    split_row("split neurosurgeon", "neurosurgeon", planner=planner)
    for name in tuners:
        split_row(f"split {name}", name)

    cascade = setup.cascade
    forward_all = cascade_batch(cascade, power, link.link_at(0.0), 1, 1)
    cascade_base = Baseline(forward_all[1], forward_all[0])
    scored = replace(settings, error_weight=ERROR_WEIGHT)

    def chooser() -> ThresholdChooser:
        return ThresholdChooser(
            cascade,
            power,
            accuracy_floor=accuracy_floor,
            error_weight=ERROR_WEIGHT,
            baseline_link=link.link_at(0.0),
            seed=seed,
        )

    def cascade_row(
        label: str, tuner: str, helper: ThresholdChooser, value: float | None = None, **params: Any
    ) -> None:
        explore = 0.0 if value is not None else None  # a fixed threshold holds exactly
        twin = CascadeTwin(
            cascade,
            power,
            setup.samples,
            link,
            chooser=helper,
            oracle=oracle,
            seed=seed,
            explore=explore,
        )
        r = _replay(arrivals, twin, scored, cascade_base, THRESHOLD, tuner, seed, value, **params)
        rows.append(_row(label, r, twin, segments, None))

    for t in thresholds:
        cascade_row(f"cascade t={t:g}", "fixed", chooser(), t)
    helper = chooser()
    cascade_row("cascade chooser", "cascade", helper, chooser=helper)
    for name in tuners:
        cascade_row(f"cascade {name}", name, chooser())
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_table(rows: Sequence[dict[str, Any]], link: EmulatedLink) -> str:
    """The rows as a Markdown table (segments labelled by their bandwidth)."""
    segs = " / ".join(f"{bw / 1e6:g}" for _, bw in link.segments)
    head = (
        "| policy | mean ms | p95 ms | device mJ | sent kB | forwarded | accuracy "
        f"| knob per segment ({segs} Mbit/s) | mean ms per segment |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---|"
    )
    lines = [head]
    for r in rows:
        knobs = " / ".join(_fmt(k, "g") for k in r["knob_by_segment"])
        lats = " / ".join(_fmt(v, ".2f") for v in r["latency_ms_by_segment"])
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(
            f"| {r['policy']} | {r['latency_mean_ms']:.2f} | {r['latency_p95_ms']:.2f} "
            f"| {r['energy_mj']:.3f} | {r['sent_kb']:.1f} | {100 * r['forwarded']:.1f}% "
            f"| {acc} | {knobs} | {lats} |"
        )
    return "\n".join(lines)


def tier_replay_report(
    trace: Trace,
    link: EmulatedLink,
    *,
    link_spec: str,
    setup: DigitsSetup,
    oracle: bool = False,
    seed: int = 0,
    device_slowdown: float = 100.0,
    server_speedup: float = 4.0,
    tuners: Sequence[str] = ("ecogd",),
) -> str:
    """The digits tier comparison over ``trace`` and ``link`` as printable text."""
    cascade, power = setup.cascade, setup.power
    rows = compare_tiers(trace, link, setup, tuners=tuners, oracle=oracle, seed=seed)
    dev = setup.planner.device
    s = TIER_SETTINGS
    trace_line = (
        f"Trace {trace.name} for {trace.duration:g} s ({len(trace)} requests, "
        f"{trace.mean_rate:.1f}/s); link {link_spec}, RTT {1e3 * link.rtt_s:g} ms; "
        f"{'true link' if oracle else 'estimated link (probes every 1 s)'}."
    )
    setup_line = (
        f"Digits large, {dev.n_stages} stages, {1e3 * dev.total_s:.2f} ms on the device "
        f"({device_slowdown:g}x slower than this {platform.machine()} CPU), "
        f"next tier {server_speedup:g}x faster; small model {1e3 * cascade.small_s:.2f} ms "
        f"on the device, {cascade.input_bytes} B up / {cascade.output_bytes} B down per "
        f"forward. Power busy {power.busy_w:g} W, radio {power.tx_w:g} W, waiting "
        f"{power.idle_w:g} W (assumed). Engine: one request per batch, windows of "
        f"{s.window_requests} requests or {s.window_seconds:g} s, closed early when the link "
        f"estimate moves; cascade costs carry an error weight of {ERROR_WEIGHT:g}; the "
        "chooser keeps an accuracy floor of 0.97."
    )
    # the prose wrapped to a terminal's width; the table stays one row a line
    header = "\n".join(textwrap.fill(line, 100) for line in (trace_line, setup_line))
    return header + "\n\n" + format_table(rows, link)
