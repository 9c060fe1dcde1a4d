"""The normalised energy-plus-latency cost of a window, and its baseline.

``cost = a * E / E0 + (1 - a) * L / L0`` where ``E`` is the mean energy per request and
``L`` the mean latency per request (arrival to completion, waiting included); ``E0`` and
``L0`` are the same figures with every knob at its maximum. A cost of 1.0 means "as good
as running flat out"; lower is better.

Optional SLO mode: minimise energy subject to a latency percentile bound. The cost is
then ``E / E0`` while the percentile meets the bound, plus a penalty that grows with the
relative violation, so the tuners still see one scalar to minimise.

Optional accuracy term, for knobs that trade answers for energy (the cascade threshold):
``+ error_weight * error_rate``, where ``error_rate`` is the share of answers estimated
wrong. With the default weight 0 the cost is the paper's.

Several models on one board (one queue each, one set of clocks): the window's joint cost is
``sum_i (n_i / N) * cost_i``, each model's cost on its own baseline (its own E0, L0 measured
at all-maximum) and with its own cost model (its own latency target in SLO mode), weighted
by the requests it served. Normalising each model by itself keeps a heavy model's joules
from drowning a light one's latency; weighting by requests makes the joint cost the mean
cost per request. A model that served nothing in a window drops out of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import overload

import numpy as np


class EnergyAccounting(str, Enum):
    """How a window's energy is divided among its requests (reports say which)."""

    #: Energy measured while batches ran, divided among their requests (the paper's).
    ACTIVE = "active"
    #: All energy of the window, idle included, divided by requests served (the power bill).
    TOTAL = "total"


#: Smallest figures a baseline can hold (the controller floors measured ones at these).
MIN_ENERGY_J = 1e-12
MIN_LATENCY_S = 1e-9


@dataclass(frozen=True)
class Baseline:
    """Energy per request (J) and latency per request (s) with every knob at maximum."""

    energy_per_request_j: float
    latency_s: float
    accounting: str = EnergyAccounting.ACTIVE.value

    def __post_init__(self) -> None:
        e, lat = self.energy_per_request_j, self.latency_s
        if not (math.isfinite(e) and math.isfinite(lat)):
            raise ValueError(f"baseline figures must be finite, got {self}")
        # The controller floors measured figures at these; anything below is not a measurement.
        if not (e >= MIN_ENERGY_J and lat >= MIN_LATENCY_S):
            raise ValueError(
                f"baseline figures must be at least {MIN_ENERGY_J} J and {MIN_LATENCY_S} s, "
                f"got {self}"
            )
        if self.accounting not in {a.value for a in EnergyAccounting}:
            raise ValueError(f"unknown accounting {self.accounting!r} in baseline {self}")


@dataclass(frozen=True)
class CostModel:
    alpha: float = 0.5
    slo_latency_s: float | None = None
    slo_percentile: float = 95.0
    slo_penalty: float = 10.0
    error_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")
        if not self.error_weight >= 0.0:
            raise ValueError(f"error_weight must be >= 0, got {self.error_weight}")

    @overload
    def cost(
        self,
        energy_per_request_j: float,
        latency_mean_s: float,
        baseline: Baseline,
        latency_percentile_s: float | None = None,
        error_rate: float = 0.0,
    ) -> float: ...

    @overload
    def cost(
        self,
        energy_per_request_j: np.ndarray,
        latency_mean_s: np.ndarray,
        baseline: Baseline,
        latency_percentile_s: np.ndarray | None = None,
        error_rate: float | np.ndarray = 0.0,
    ) -> np.ndarray: ...

    def cost(
        self,
        energy_per_request_j: float | np.ndarray,
        latency_mean_s: float | np.ndarray,
        baseline: Baseline,
        latency_percentile_s: float | np.ndarray | None = None,
        error_rate: float | np.ndarray = 0.0,
    ) -> float | np.ndarray:
        """The window's cost; also works element-wise on numpy arrays (oracles, reports)."""
        e = energy_per_request_j / baseline.energy_per_request_j
        if self.slo_latency_s is not None:
            tail = latency_percentile_s if latency_percentile_s is not None else latency_mean_s
            over = tail / self.slo_latency_s - 1.0
            excess = np.maximum(0.0, over) if isinstance(over, np.ndarray) else max(0.0, over)
            cost = e + self.slo_penalty * excess
        else:
            cost = self.alpha * e + (1.0 - self.alpha) * latency_mean_s / baseline.latency_s
        if self.error_weight:
            cost = cost + self.error_weight * error_rate
        return cost


def joint_cost(parts: Iterable[tuple[int, float]]) -> float:
    """The request-weighted mean of each model's cost: ``sum_i (n_i / N) * cost_i``.

    ``parts`` holds ``(requests, cost)`` per model; models with no requests drop out (so
    one model's joint cost is exactly its own). NaN when no model served anything.
    """
    served = []
    for requests, cost in parts:
        if requests < 0:
            raise ValueError(f"a model's request count must be >= 0, got {requests}")
        if requests:
            served.append((requests, cost))
    total = sum(n for n, _ in served)
    if not total:
        return math.nan
    return sum((n / total) * cost for n, cost in served)
