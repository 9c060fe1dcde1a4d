"""How faithful is the fleet replay's board model? Compare it with a full replay of each board.

The fleet replay reads each board's energy and latency from a model measured at steady rates
(``ecoserve.sim.board_model``). Here one board of each kind gets an hour whose rate moves
(a cosine between 15% and 75% of the board's tuned capacity over the hour, times the Azure
conv trace's minute-scale swings), and two figures are set side by side:

- direct: every request of that hour replayed through the board's own engine (EcoGD, the
  fleet's latency target as its SLO) by the ordinary simulator;
- model: the board model read at each second's rate, as ``ecoserve replay --fleet`` does.

Latency is compared after the first 10 minutes (the model leaves out the tuner's cold
start); the whole hour's p99 is shown beside it.

Run: ``python benchmarks/bench_fleet_model.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np

from ecoserve.core.assembly import EngineSettings
from ecoserve.sim.board_model import LATENCY_EDGES, calibrate, histogram_quantile
from ecoserve.sim.driver import simulate
from traces.rates import RateSeries, burst_shape
from twins.fitted import load_twin

#: The model leaves out the tuner's cold start; so does the direct row it is compared with.
WARM_S = 600.0


def hour_of_rates(capacity: float, seed: int) -> RateSeries:
    t = np.arange(3600) + 0.5
    envelope = capacity * (0.15 + 0.6 * (1 - np.cos(2 * math.pi * t / 3600)) / 2)
    shape = burst_shape("azure-conv", 60.0)
    rates = envelope * shape[(t // 60).astype(int) % shape.size]
    rates = np.minimum(rates, capacity)  # stay within what the board is rated for
    return RateSeries("hour", 1.0, np.random.default_rng(seed).poisson(rates))


def arrivals_of(series: RateSeries, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    counts = series.counts.astype(np.int64)
    starts = np.repeat(np.arange(counts.size) * series.step_s, counts)
    return np.sort(starts + rng.uniform(0, series.step_s, size=starts.size))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="nano,xavier-nx,orin")
    p.add_argument("--slo-ms", type=float, default=250.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    slo = args.slo_ms / 1e3
    settings = EngineSettings(slo_latency_s=slo, slo_percentile=99.0)
    print(
        "| board | requests | model W | direct W | error | model p50/p99 ms "
        "| direct p50/p99 ms, after 10 min | direct p99 ms, whole hour |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.kinds.split(","):
        model = calibrate(kind, "ecogd", settings, workers=2, seed=args.seed)
        cap = model.capacity(slo)
        series = hour_of_rates(cap, args.seed)
        rates = series.rates
        model_w = float(model.power(rates).mean())
        hist = np.zeros(len(LATENCY_EDGES) - 1)
        for r, n in zip(rates, series.counts, strict=True):
            hist += n * model.histogram_at(float(r))
        arrivals = arrivals_of(series, args.seed)
        res = simulate(arrivals, load_twin(kind), replace(settings, tuner="ecogd", seed=args.seed))
        direct_w = res.total_energy_j / max(res.end_s, series.duration_s)
        lat = res.latencies
        done = ~np.isnan(res.completions)
        late = (res.completions - arrivals)[done & (arrivals >= WARM_S)]
        print(
            f"| {kind} | {arrivals.size:,} | {model_w:.2f} | {direct_w:.2f} | "
            f"{100 * (model_w / direct_w - 1):+.1f}% | "
            f"{histogram_quantile(hist, 50) * 1e3:.0f} / {histogram_quantile(hist, 99) * 1e3:.0f} | "
            f"{np.percentile(late, 50) * 1e3:.0f} / {np.percentile(late, 99) * 1e3:.0f} | "
            f"{np.percentile(lat, 99) * 1e3:.0f} |"
        )


if __name__ == "__main__":
    main()
