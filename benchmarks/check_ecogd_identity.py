"""A fingerprint of EcoGD's behaviour, to show that a change of its code changed nothing.

Two parts, dumped to one JSON file:

- virtual-time replays (``ecoserve.sim.driver``) of ``ecogd`` and ``ecogd-original`` on
  several workloads and boards: every window's phase, configuration, next configuration and
  cost, the tuner's ``state_dict()`` every 100 windows and at the end, and its ``describe()``;
- direct ask/tell runs of EcoGD under option sets the replays leave at their defaults
  (adaptive steps, the plain rate threshold, no level memory, longer steady memory, no
  guard...) on a synthetic cost with stepping load and batch timings, each resumed halfway
  from its saved state into a fresh tuner, so ``load_state_dict`` is exercised as well.

Write a reference, then check against it (exit status 1 and the first difference if any):

    python benchmarks/check_ecogd_identity.py --out ref.json
    python benchmarks/check_ecogd_identity.py --check ref.json [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.controller import WindowReport
from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from ecoserve.replay.suite import PAPER_MAX_WAIT_S
from ecoserve.sim.driver import Simulator
from traces import load_trace
from tuners import make_tuner
from twins.fitted import load_twin

TRACES = (
    "fixed:50ms",
    "bursty:10@500ms",
    "step:8,24@10m",
    "diurnal:4-24@30m",
    "mmpp:6,30@2m",
    "azure-conv",
)
BOARDS = ("xavier-nx", "nano", "orin")
TUNERS = ("ecogd", "ecogd-original")
DURATION = "25m"
#: Window sizes: the paper suite's (416 requests or 30 s), and short windows for many decisions.
WINDOWS = {"paper": (416, 30.0), "short": (48, 4.0)}

#: EcoGD parameters for the direct runs (the replays use the defaults).
OPTION_SETS: tuple[dict[str, Any], ...] = (
    {},
    {"adaptive_step": True, "opening_scan": False},
    {"rate_change_threshold": 0.3, "follow_load": False},
    {"level_memory": False, "research_sizes": 0},
    {"steady_memory": 2.0, "carry_life": 0.3, "research_ratio": 1.2},
    {"guided_scan": False, "capacity_guard": False},
    {"inherit_margin": None, "loser_memory": 1.0, "probe_every": 3},
    {"memory_limit": 3, "max_loops": 2, "guard_headroom": 1.5},
    {"change_threshold": 4.0, "level_width": 0.1, "inherit_reach": 1},
)


def replay(job: tuple[str, str, str, str]) -> dict[str, Any]:
    """One virtual-time run, fingerprinted window by window."""
    board, spec, tuner_name, window = job
    trace = load_trace(spec, duration=DURATION)
    twin = load_twin(board)
    requests, seconds = WINDOWS[window]
    settings = EngineSettings(
        max_wait_s=PAPER_MAX_WAIT_S,
        tuner=tuner_name,
        seed=1,
        window_requests=requests,
        window_seconds=seconds,
    )
    engine = build_engine(twin.knobs(), settings)
    windows: list[list[Any]] = []
    states: list[dict[str, Any]] = []

    def on_window(report: WindowReport) -> None:
        windows.append(
            [report.phase, list(report.config), list(report.next_config), repr(report.cost)]
        )
        if len(windows) % 100 == 0:
            states.append(engine.tuner.state_dict())

    Simulator(twin, engine, noise_seed=settings.seed).run(trace.arrivals, on_window=on_window)
    tuner = engine.tuner
    return {
        "key": f"{board} {spec} {tuner_name} {window}",
        "windows": windows,
        "states": states,
        "final_state": tuner.state_dict(),
        "describe": tuner.describe(),
    }


def synthetic_space() -> SearchSpace:
    return SearchSpace.of(
        Knob(CPU, tuple(range(12))), Knob(GPU, tuple(range(10))), Knob(BATCH, tuple(range(1, 17)))
    )


def synthetic_cost(config: Config, rate: float, rng: random.Random) -> float:
    """A bowl over the clocks times a rugged batch profile whose best size moves with rate."""
    cpu, gpu, b = config
    best_b = min(15.0, max(0.0, math.sqrt(rate) * 1.5))
    shape = 1.0 + 0.02 * (cpu - 6) ** 2 + 0.015 * (gpu - 4) ** 2 + 0.01 * (b - best_b) ** 2
    valley = 0.7 if b == 9 and rate < 20 else 1.0
    return shape * valley * (1.0 + 0.03 * rng.random()) * (1.0 + rate / 40)


def synthetic_metrics(config: Config, rate: float, rng: random.Random) -> dict[str, float]:
    cpu, gpu, b = config
    batch = b + 1
    per_batch = (0.02 + 0.01 * batch) * (12 / (cpu + 1)) ** 0.5 * (10 / (gpu + 1)) ** 0.5
    seconds = 10.0
    arrivals = rate * seconds * (0.9 + 0.2 * rng.random())
    batches = max(1.0, arrivals / batch)
    return {
        "arrival_rate": arrivals / seconds,
        "arrivals": arrivals,
        "requests": arrivals,
        "batches": batches,
        "busy_s": min(seconds, batches * per_batch),
    }


def synthetic(index: int) -> dict[str, Any]:
    """EcoGD under option set ``index`` on a load stepping between levels, resumed halfway."""
    params = OPTION_SETS[index]
    space = synthetic_space()
    env = random.Random(100 + index)
    levels = [4.0, 4.0, 30.0, 4.0, 12.0, 30.0, 60.0, 12.0]
    tuner = make_tuner("ecogd", space, seed=index, **params)
    trail: list[list[Any]] = []
    states: list[dict[str, Any]] = []
    for w in range(1600):
        if w == 800:  # a restart: a fresh tuner resumes the saved state
            saved = json.loads(json.dumps(tuner.state_dict()))
            tuner = make_tuner("ecogd", space, seed=index, **params)
            tuner.load_state_dict(saved)
        rate = levels[(w // 200) % len(levels)]
        config = tuner.ask()
        cost = synthetic_cost(config, rate, env)
        metrics = synthetic_metrics(config, rate, env)
        if w == 0:
            metrics["baseline"] = 1.0
        tuner.tell(config, cost, metrics)
        trail.append([list(config), repr(cost), tuner.describe()["phase"]])
        if w % 200 == 199:
            states.append(tuner.state_dict())
    return {
        "key": f"synthetic {json.dumps(params, sort_keys=True)}",
        "trail": trail,
        "states": states,
        "describe": tuner.describe(),
    }


def fingerprint(workers: int) -> dict[str, Any]:
    jobs = [(b, t, n, w) for b in BOARDS for t in TRACES for n in TUNERS for w in WINDOWS]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(replay, jobs))
        runs += list(pool.map(synthetic, range(len(OPTION_SETS))))
    return {run.pop("key"): run for run in runs}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path}: keys differ {sorted(set(a) ^ set(b))}"
        for k in a:
            if (d := first_difference(a[k], b[k], f"{path}/{k}")) is not None:
                return d
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if (d := first_difference(x, y, f"{path}[{i}]")) is not None:
                return d
        return None if len(a) == len(b) else f"{path}: length {len(a)} != {len(b)}"
    return None if a == b else f"{path}: {a!r} != {b!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the fingerprint here")
    group.add_argument("--check", help="compare with the fingerprint in this file")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # through JSON, so a fresh fingerprint compares like the stored one (tuples become lists)
    result = json.loads(json.dumps(fingerprint(args.workers)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, sort_keys=True)
        print(f"{len(result)} runs written to {args.out}")
        return 0
    with open(args.check) as f:
        reference = json.load(f)
    diff = first_difference(reference, result)
    windows = sum(len(r.get("windows", r.get("trail", []))) for r in result.values())
    if diff is None:
        print(f"identical: {len(result)} runs, {windows} windows")
        return 0
    print(f"DIFFERENT at {diff}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
