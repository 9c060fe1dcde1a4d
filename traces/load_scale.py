"""K times a trace's arrivals over the same clock (``ecoserve replay --scale-load K``).

``Trace.rescaled`` changes the load by changing the clock, so a day at twice the load becomes
half a day. Here the clock stays: the duration and the times of the bursts and troughs are
the trace's own, and only the number of requests in them is multiplied.

The method is systematic resampling. Each arrival ``i`` stands for the stretch of time closer
to it than to its neighbours (its cell: from the midpoint with the previous arrival to the
midpoint with the next, the first from 0 s, the last to the trace's end). Arrival ``i`` is
given ``m_i = floor((i+1)K + u) - floor(iK + u)`` requests, with one random phase ``u`` drawn
from the seed, so every ``m_i`` is ``floor(K)`` or ``ceil(K)`` and any run of ``j``
consecutive arrivals gets ``jK`` requests, to within one. The first request of an arrival
keeps its time; the others are drawn uniformly in its cell. So:

- ``K < 1`` thins evenly (``fixed:50ms`` at 0.5 is ``fixed:100ms``, a burst of 10 at 0.5 is a
  burst of 5), where independent coin flips would thin bursts by chance;
- ``K > 1`` keeps every original arrival and adds ``K - 1`` per arrival near it: a burst stays
  a burst at ``K`` times its size, a trough stays a trough at ``K`` times its rate;
- the result is the same for the same trace, ``K`` and seed.
"""

from __future__ import annotations

import math

import numpy as np

from traces.trace import Trace


def scale_load(trace: Trace, k: float, seed: int = 0) -> Trace:
    """``k`` times the arrivals of ``trace`` over the same duration (see the module's text).

    The count is ``floor(len(trace) * k + u)`` for the seeded phase ``u`` in [0, 1): the
    asked multiple to within one request. ``k == 1`` returns ``trace`` itself.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (k > 0 and math.isfinite(k)):
        raise ValueError(
            f"load scale must be a finite number > 0 (K times the trace's arrivals: 0.5 halves "
            f"the load, 3 triples it), got {k!r}"
        )
    if k == 1 or len(trace) == 0:
        return trace
    t = trace.arrivals
    n = len(t)
    rng = np.random.default_rng(seed)
    phase = float(rng.random())
    marks = np.floor(np.arange(n + 1, dtype=np.float64) * k + phase)
    copies = np.diff(marks).astype(np.int64)
    kept = t[copies >= 1]
    extra = np.maximum(copies - 1, 0)
    if extra.any():
        mid = (t[:-1] + t[1:]) / 2.0
        lo = np.concatenate(([0.0], mid))
        hi = np.concatenate((mid, [trace.duration]))
        owner = np.repeat(np.arange(n), extra)
        width = hi[owner] - lo[owner]
        added = lo[owner] + rng.random(owner.size) * width
        arrivals = np.sort(np.concatenate((kept, added)), kind="stable")
    else:
        arrivals = kept
    return Trace(
        name=f"{trace.name} x{k:g} load",
        arrivals=arrivals,
        source=f"{trace.source} (arrivals x{k:g} over the same clock, resampled with seed "
        f"{seed})".strip(),
        duration_s=trace.duration,
    )
