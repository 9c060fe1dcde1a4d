"""Compare split points and cascade thresholds over one trace and one link schedule.

:func:`compare_tiers` replays the same arrivals through every fixed split point asked for,
the online planner, every fixed threshold and the online chooser (``ecoserve.tiers.sim``),
and returns one row per policy: whole-run figures plus, per segment of the link schedule,
the knob value used most and the mean latency, so a table shows whether a policy followed
the bandwidth. :func:`digits_setup` measures the shipped digits models into the inputs a
replay needs; ``scripts/tiers_replay.py`` prints the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ecoserve.tiers.cascade import CascadeCosts, ThresholdChooser
from ecoserve.tiers.codec import encode_tensor
from ecoserve.tiers.link import EmulatedLink
from ecoserve.tiers.sim import CascadeData, TierSimResult, simulate_cascade, simulate_split
from ecoserve.tiers.split import DevicePower, Objective, SplitPlanner
from ecoserve.tiers.stages import median_call_s, profile_stages
from traces.trace import Trace


@dataclass(frozen=True)
class DigitsSetup:
    """What a replay of the digits models needs, measured on this machine."""

    planner: SplitPlanner
    costs: CascadeCosts
    data: CascadeData
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
    costs = CascadeCosts(
        small_s=median_call_s(lambda: small(example)) * device_slowdown,
        big_s=median_call_s(lambda: large(example)) / server_speedup,
        input_bytes=len(encode_tensor(example)),
        output_bytes=len(encode_tensor(out)),
    )
    data = CascadeData.from_models(small, large, split.x_test, split.y_test)
    labels = data.labels
    acc_small = float(np.mean(data.small_logits.argmax(dim=1).numpy() == labels))
    acc_large = float(np.mean(data.big_preds == labels))
    return DigitsSetup(planner, costs, data, power, acc_large, acc_small)


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


def _row(policy: str, result: TierSimResult, segments: list[tuple[float, float, float]]) -> dict:
    s = result.summary()
    per = [result.summary(a, b) for a, b, _ in segments]
    return {
        "policy": policy,
        "mode": result.mode,
        "requests": s["requests"],
        "latency_mean_ms": 1e3 * s["latency_mean_s"],
        "latency_p95_ms": 1e3 * s["latency_p95_s"],
        "energy_mj": 1e3 * s["energy_mean_j"],
        "sent_kb": s["sent_bytes"] / 1e3,
        "forwarded": s["forwarded"],
        "accuracy": s["accuracy"],
        "knob_changes": result.knob_changes,
        "probes": result.probes,
        "knob_by_segment": [p.get("knob_mode") for p in per],
        "latency_ms_by_segment": [
            1e3 * p["latency_mean_s"] if p["requests"] else None for p in per
        ],
    }


def compare_tiers(
    trace: Trace,
    link: EmulatedLink,
    *,
    planner: SplitPlanner | None = None,
    split_points: Sequence[int] | None = None,
    accuracy: float | None = None,
    costs: CascadeCosts | None = None,
    data: CascadeData | None = None,
    thresholds: Sequence[float] = (0.0, 0.9, 0.99, 1.0),
    chooser: Callable[[], ThresholdChooser] | None = None,
    oracle: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per policy replayed over ``trace`` and ``link``.

    Split rows (with ``planner``): each of ``split_points`` (default: ``0`` and ``N``, the
    two ends) fixed, then ``online``. Cascade rows (with ``costs`` and ``data``): each of
    ``thresholds`` fixed, then ``online`` when ``chooser`` (a factory: each replay needs a
    fresh chooser) is given. Row keys: ``policy``, ``mode``, ``requests``,
    ``latency_mean_ms``, ``latency_p95_ms``, ``energy_mj`` (device, per request),
    ``sent_kb`` (total uplink), ``forwarded``, ``accuracy``, ``knob_changes``, ``probes``,
    and per schedule segment ``knob_by_segment`` and ``latency_ms_by_segment``.
    """
    segments = _segments(link, max(trace.duration, 1e-9))
    rows: list[dict[str, Any]] = []
    if planner is not None:
        n = planner.n_stages
        points = list(split_points) if split_points is not None else [0, n]
        for k in points:
            r = simulate_split(planner, link, trace, k, accuracy=accuracy, oracle=oracle)
            rows.append(_row(f"split k={k}", r, segments))
        r = simulate_split(planner, link, trace, None, accuracy=accuracy, oracle=oracle)
        rows.append(_row("split online (planner)", r, segments))
    if costs is not None and data is not None:
        power = planner.power if planner is not None else None
        if power is None:
            raise ValueError("cascade rows need device power: give a planner")
        for t in thresholds:
            r = simulate_cascade(costs, power, data, link, trace, t, oracle=oracle, seed=seed)
            rows.append(_row(f"cascade t={t:g}", r, segments))
        if chooser is not None:
            r = simulate_cascade(
                costs, power, data, link, trace, chooser(), oracle=oracle, seed=seed
            )
            rows.append(_row("cascade online (chooser)", r, segments))
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
) -> str:
    """The digits tier comparison over ``trace`` and ``link`` as printable text.

    Used by ``ecoserve replay --tiers`` and ``scripts/tiers_replay.py``. The online
    threshold chooser runs with an accuracy floor of 0.97 and an error weight of 10.
    """
    import platform

    costs, power = setup.costs, setup.power

    def chooser() -> ThresholdChooser:
        return ThresholdChooser(
            costs,
            power,
            accuracy_floor=0.97,
            error_weight=10.0,
            baseline_link=link.link_at(0.0),
            seed=seed,
        )

    rows = compare_tiers(
        trace,
        link,
        planner=setup.planner,
        accuracy=setup.accuracy_large,
        costs=costs,
        data=setup.data,
        chooser=chooser,
        oracle=oracle,
        seed=seed,
    )
    dev = setup.planner.device
    header = (
        f"Trace {trace.name} for {trace.duration:g} s ({len(trace)} requests, "
        f"{trace.mean_rate:.1f}/s); link {link_spec}, RTT {1e3 * link.rtt_s:g} ms; "
        f"{'true link' if oracle else 'estimated link (probes every 1 s)'}.\n"
        f"Digits large, {dev.n_stages} stages, {1e3 * dev.total_s:.2f} ms on the device "
        f"({device_slowdown:g}x slower than this {platform.machine()} CPU), "
        f"next tier {server_speedup:g}x faster; small model {1e3 * costs.small_s:.2f} ms "
        f"on the device, {costs.input_bytes} B up / {costs.output_bytes} B down per forward. "
        f"Power busy {power.busy_w:g} W, radio {power.tx_w:g} W, waiting {power.idle_w:g} W. "
        "Chooser: accuracy floor 0.97, error weight 10.\n"
    )
    return header + "\n" + format_table(rows, link)
