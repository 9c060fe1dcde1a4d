"""How well the guided probes' rescaling carries a cost curve over batch size to a new rate.

On a board twin's noise-free replay (``ecoserve.sim.oracle``: every configuration replayed
on Poisson arrivals, the paper's 2 s buffer, every clock at maximum), the cost over batch
size is computed at two rates; the curve ``c0 + c1/b + c2*b`` is fitted at the first
(``tuners.batch_curve``), every size's value moved by ``c2*b*(old/new - 1)`` as
``tuners.ecogd.probes.BatchProfile.shift`` does, and compared with the true curve at the
second rate, each relative to its cheapest size; ``kept`` is the curve left unmoved.

    python benchmarks/check_curve_shift.py [--board xavier-nx] [--pairs 8:24,24:8,8:4,12:24]
"""

from __future__ import annotations

import argparse

import numpy as np

from ecoserve.core.assembly import EngineSettings, build_space
from ecoserve.core.knobs import BATCH
from ecoserve.replay.suite import PAPER_MAX_WAIT_S
from ecoserve.sim.oracle import config_table, estimate_windows
from tuners.batch_curve import fit_curve
from twins.fitted import load_twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="xavier-nx")
    parser.add_argument("--pairs", default="8:24,24:8,8:4,12:24", help="old:new rates")
    args = parser.parse_args()
    pairs = [tuple(float(r) for r in p.split(":")) for p in args.pairs.split(",")]
    twin = load_twin(args.board)
    space = build_space(twin.knobs(), EngineSettings())
    table = config_table(twin, space)
    top, axis = space.maximum(), space.axis(BATCH)
    rows = [
        i
        for i, c in enumerate(table.configs)
        if all(c[a] == top[a] for a in range(space.dims) if a != axis)
    ]
    sizes = table.batch_size[rows].astype(float)
    rng = np.random.default_rng(0)
    curves: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for rate in sorted({r for p in pairs for r in p}):
        arrivals = np.cumsum(rng.exponential(1.0 / rate, 20000))
        est = estimate_windows(table, arrivals, max_wait=PAPER_MAX_WAIT_S)
        energy, latency = est.energy_per_request_j[rows].mean(1), est.latency_s[rows].mean(1)
        curves[rate] = (energy, latency)
    e0, l0 = curves[pairs[0][0]][0][-1], curves[pairs[0][0]][1][-1]

    def cost(rate: float) -> np.ndarray:
        energy, latency = curves[rate]
        c = 0.5 * energy / e0 + 0.5 * latency / l0
        return np.asarray(c / c.min())

    print(f"# {args.board}: cost over batch sizes {sizes.astype(int).tolist()}, / the cheapest")
    for old, new in pairs:
        before = cost(old)
        fit = fit_curve(dict(zip(sizes.tolist(), before.tolist(), strict=True)))
        assert fit is not None
        moved = before + max(fit.c2, 0.0) * sizes * (old / new - 1.0)
        moved = moved / moved.min()
        true = cost(new)
        print(f"{old:g} -> {new:g} req/s (fit residual {fit.relative_rms:.3f})")
        print("  true   " + " ".join(f"{x:.2f}" for x in true))
        print("  moved  " + " ".join(f"{x:.2f}" for x in moved))
        print("  kept   " + " ".join(f"{x:.2f}" for x in before))
        print(
            f"  largest error: moved {np.max(np.abs(moved / true - 1)):.3f}, "
            f"kept {np.max(np.abs(before / true - 1)):.3f}"
        )


if __name__ == "__main__":
    main()
