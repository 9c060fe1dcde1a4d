"""The ask/tell interface every tuner implements.

A tuner never sees a clock or a device: the controller asks it which configuration to run
for the next window, runs it, and tells it the window's cost. ``state_dict`` /
``load_state_dict`` let a daemon resume tuning after a restart instead of exploring from
scratch.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace


def finite_cost(cost: float) -> float:
    """``cost`` as a float, refusing NaN and infinities: one would poison every comparison."""
    value = float(cost)
    if not math.isfinite(value):
        raise ValueError(f"a window's cost must be a finite number, got {cost!r}")
    return value


class Tuner(ABC):
    """Base class: holds the space and a seeded random generator."""

    #: Registry name (``--tuner NAME``).
    name: str = "tuner"

    def __init__(self, space: SearchSpace, seed: int | None = 0) -> None:
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)

    @abstractmethod
    def ask(self) -> Config:
        """The configuration to run for the next window."""

    @abstractmethod
    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        """Report the cost measured for ``config`` over one window.

        ``metrics`` may carry ``arrival_rate`` (requests/s), ``energy_per_request_j``,
        ``latency_mean_s``: tuners that react to load changes read them; ``batches``,
        ``busy_s`` and ``loop_s`` (the window's batch count, the seconds they ran and the
        serving loop's CPU seconds around them), for tuners that model capacity;
        ``baseline`` (1 for the window that set the cost's baseline, whose traffic may be a
        synthetic warm-up). With several models on one board, also each
        model's ``requests:<model>`` and, once it has a baseline, ``cost:<model>`` (its own
        cost, of which ``cost`` is the request-weighted mean).
        """

    def reset(self) -> None:
        """Forget everything learned (the space and seed stay)."""
        self.rng = random.Random(self.seed)

    def governed_knobs(self) -> frozenset[str]:
        """Knobs this tuner hands to the operating system's governors instead of pinning."""
        return frozenset()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; the base part stores the random generator's state."""
        state = self.rng.getstate()
        return {"tuner": self.name, "rng": [state[0], list(state[1]), state[2]]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("tuner") != self.name:
            raise ValueError(
                f"state was saved by tuner {state.get('tuner')!r}, not {self.name!r}; "
                "delete the state file or start with the same tuner"
            )
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def describe(self) -> dict[str, Any]:
        """A short, human-readable summary for status pages."""
        return {"tuner": self.name}
