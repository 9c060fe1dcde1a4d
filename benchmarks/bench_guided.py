"""What EcoGD's parts are worth over the plain climber, per board and workload.

Every workload of the load and paper suites (the paper's 2 s batching buffer), on each
board's twin, one seed, replayed through the engine once per variant. Each run is scored
over every request on the workload's reference baseline and against its oracles (fixed 2 s
timer); also energy per request, the p95 latency, the windows the opening scan took and the
batch-size probes taken.

Variant sets (``--variants``):

- ``models`` (the default): the plain opening scan (every batch size, largest first) and no
  guard; the scan guided by the fitted cost curve (``tuners.batch_curve``); the capacity guard
  of the batch-time model too (``tuners.batch_time``: EcoGD's default); the default with the
  fill timer (``--batch-timer fill``, at most 2 s); the original climber.
- ``strategies``: each strategy of ``tuners/ecogd/`` alone and left out: the climber alone
  (``ecogd-original``), the climber plus one strategy, every strategy but one, and all of
  them (the default).
- ``probes``: the default, its probes unguided (every far size swept, every try forgotten
  at a change of load: EcoGD before probes were guided), no periodic probes, the original
  climber.
- a comma-separated list of variant labels from the sets above.

    python benchmarks/bench_guided.py [--boards xavier-nx,orin] [--workloads 'a|b']
        [--variants models|strategies|probes|LABEL,...] [--workers 2]
        [--oracle-cache DIR] [--json FILE]

``--oracle-cache`` keeps each board and workload's oracles in DIR (they take most of the time
and do not depend on the tuner), so a second run, or a run on other code, reuses them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.controller import WindowReport
from ecoserve.replay.suite import LOAD_WORKLOADS, PAPER_MAX_WAIT_S, PAPER_WORKLOADS, Workload
from ecoserve.sim.driver import Simulator
from ecoserve.sim.oracle import Oracles, compute_oracles, run_cost, run_energy
from twins.fitted import load_twin

BOARDS = ("xavier-nx", "agx-xavier", "nano", "orin")
WORKLOADS: dict[str, Workload] = {w.label: w for w in LOAD_WORKLOADS + PAPER_WORKLOADS}


@dataclass(frozen=True)
class Variant:
    label: str
    tuner: str
    params: tuple[tuple[str, Any], ...] = ()
    batch_timer: str = "fixed"


DEFAULT = "default"

#: Each strategy of EcoGD, and the options that turn it off.
STRATEGY_OFF: dict[str, tuple[tuple[str, Any], ...]] = {
    "scan": (("opening_scan", False),),
    "probes": (("probe_every", 0),),
    "losses": (("loser_memory", 1.0), ("inherit_margin", None)),
    "load following": (("follow_load", False),),
    "capacity guard": (("capacity_guard", False),),
}


def _strategies() -> tuple[Variant, ...]:
    everything_off = tuple(p for off in STRATEGY_OFF.values() for p in off)
    alone = tuple(
        Variant(
            f"climber + {name}",
            "ecogd",
            tuple(p for other, off in STRATEGY_OFF.items() if other != name for p in off),
        )
        for name in STRATEGY_OFF
    )
    without = tuple(Variant(f"all - {name}", "ecogd", off) for name, off in STRATEGY_OFF.items())
    return (
        Variant("climber alone", "ecogd", everything_off),
        *alone,
        *without,
        Variant(DEFAULT, "ecogd"),
        Variant("original", "ecogd-original"),
    )


VARIANT_SETS: dict[str, tuple[Variant, ...]] = {
    "models": (
        Variant("plain", "ecogd", (("guided_scan", False), ("capacity_guard", False))),
        Variant("+ guided scan", "ecogd", (("capacity_guard", False),)),
        Variant(DEFAULT, "ecogd"),
        Variant("+ fill timer", "ecogd", batch_timer="fill"),
        Variant("original", "ecogd-original"),
    ),
    "strategies": _strategies(),
    "probes": (
        Variant(DEFAULT, "ecogd"),
        Variant("unguided probes", "ecogd", (("guided_probes", False),)),
        Variant("all - probes", "ecogd", STRATEGY_OFF["probes"]),
        Variant("original", "ecogd-original"),
    ),
}


def variants_of(spec: str) -> tuple[Variant, ...]:
    """A named set, or labels from any set, comma separated."""
    if spec in VARIANT_SETS:
        return VARIANT_SETS[spec]
    known = {v.label: v for group in VARIANT_SETS.values() for v in group}
    unknown = [label for label in spec.split(",") if label not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(known)}")
    return tuple(known[label] for label in spec.split(","))


_CACHE: Path | None = None


def _oracles(board: str, label: str) -> Oracles:
    path = None
    if _CACHE is not None:
        path = _CACHE / f"{board}--{label.replace('/', '_').replace(':', '_')}.pickle"
        if path.exists():
            with path.open("rb") as f:
                cached: Oracles = pickle.load(f)
            return cached
    trace = WORKLOADS[label].load(seed=0)
    settings = EngineSettings(max_wait_s=PAPER_MAX_WAIT_S)
    oracles = compute_oracles(
        trace.arrivals, load_twin(board), settings, validate=6, duration_s=trace.duration
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(oracles, f)
        tmp.replace(path)
    return oracles


def _init(cache_dir: str | None) -> None:
    global _CACHE
    _CACHE = None if cache_dir is None else Path(cache_dir)


def oracles_of(job: tuple[str, str]) -> Oracles:
    """One board and workload's oracles (a job of the pool)."""
    return _oracles(*job)


def run_one(job: tuple[str, str, Variant, Oracles]) -> dict[str, Any]:
    board, label, variant, oracles = job
    trace = WORKLOADS[label].load(seed=0)
    settings = EngineSettings(
        max_wait_s=PAPER_MAX_WAIT_S,
        tuner=variant.tuner,
        tuner_params=dict(variant.params),
        batch_timer=variant.batch_timer,
    )
    twin = load_twin(board)
    engine = build_engine(twin.knobs(), settings)
    scanning: list[bool] = []

    def seen(report: WindowReport) -> None:
        if report.phase == "tuning":
            scanning.append(bool(engine.tuner.describe().get("scanning")))

    result = Simulator(twin, engine, noise_seed=settings.seed).run(trace.arrivals, seen)
    energy = run_energy(result, settings.accounting)
    cost = run_cost(energy, result.latencies, oracles.baseline, settings.alpha)
    described = engine.tuner.describe()
    return {
        "board": board,
        "workload": label,
        "variant": variant.label,
        "cost": cost,
        "dynamic": cost / oracles.dynamic_run_cost,
        "static": cost / oracles.static_run_cost,
        "j_per_req": energy / max(1, result.served),
        "p95_ms": float(np.percentile(result.latencies, 95)) * 1e3,
        # tuning windows of the opening scan (the baseline window stands for batch 16's): the
        # tuner still says it is scanning after each but the last
        "scan_windows": (scanning.index(False) + 1 if False in scanning else len(scanning))
        if scanning and scanning[0]
        else 0,
        "probes": int(described.get("probes", 0)),
        "load_changes": int(described.get("load_changes", 0)),
        "windows": len(scanning),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", default=",".join(BOARDS))
    parser.add_argument("--workloads", default="|".join(WORKLOADS), help="labels, | separated")
    parser.add_argument("--variants", default="models", help="models, strategies, probes or labels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--oracle-cache", default=None, help="keep the oracles in this folder")
    parser.add_argument("--json", default=None, help="also write every run's figures here")
    args = parser.parse_args()
    boards = args.boards.split(",")
    labels = args.workloads.split("|")
    unknown = [label for label in labels if label not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; known: {list(WORKLOADS)}")
    variants = variants_of(args.variants)
    names = [v.label for v in variants]
    print(f"# {datetime.date.today()} python {platform.python_version()} cpus={os.cpu_count()}")
    print("# cells: cost over every request / the dynamic oracle (probes taken)")
    ratio = DEFAULT in names and "original" in names
    print(
        "| board | workload | "
        + " | ".join(names)
        + (" | default / original" if ratio else "")
        + " | J/req, p95 ms (default) |"
    )
    print("|---|---|" + "---:|" * (len(names) + ratio) + "---|")
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(
        args.workers, initializer=_init, initargs=(args.oracle_cache,)
    ) as pool:
        pairs = [(b, w) for b in boards for w in labels]
        # first every oracle, one job each (they take most of the time)
        oracles = dict(zip(pairs, pool.map(oracles_of, pairs), strict=True))
        for board in boards:
            jobs = [(board, w, v, oracles[(board, w)]) for w in labels for v in variants]
            done = list(pool.map(run_one, jobs))
            rows.extend(done)
            by = {(r["workload"], r["variant"]): r for r in done}
            for label in labels:
                cells = [
                    f"{by[(label, n)]['dynamic']:.3f} ({by[(label, n)]['probes']})" for n in names
                ]
                if ratio:
                    default, original = by[(label, DEFAULT)], by[(label, "original")]
                    cells.append(f"{default['cost'] / original['cost']:.3f}")
                first = by[(label, DEFAULT if DEFAULT in names else names[0])]
                cells.append(f"{first['j_per_req']:.4f}, {first['p95_ms']:.0f}")
                print(f"| {board} | {label} | " + " | ".join(cells) + " |", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    for name in names:
        ratios = sorted(r["dynamic"] for r in rows if r["variant"] == name)
        print(
            f"# {name}: /dynamic median {np.median(ratios):.3f}, "
            f"range {ratios[0]:.3f}-{ratios[-1]:.3f}, "
            f"within 1.03: {sum(x <= 1.03 for x in ratios)}/{len(ratios)}, "
            f"within 1.10: {sum(x <= 1.10 for x in ratios)}/{len(ratios)}"
        )
    if "original" in names:
        by3 = {(r["board"], r["workload"], r["variant"]): r for r in rows}
        for name in names:
            if name == "original":
                continue
            above = [
                (b, w)
                for b in boards
                for w in labels
                if by3[(b, w, name)]["cost"] > by3[(b, w, "original")]["cost"]
            ]
            print(f"# {name} above the original climber: {len(above)} rows {above}")


if __name__ == "__main__":
    main()
