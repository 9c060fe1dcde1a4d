"""Tuners by name, as the CLI and the engine's settings refer to them (``--tuner NAME``)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import SearchSpace
from ecoserve.core.tuner import Tuner
from tuners.bayes import Bayesian
from tuners.cascade_threshold import CascadeThreshold
from tuners.dvfs import DVFS
from tuners.ecogd import EcoGD, EcoGDOriginal
from tuners.fixed import Fixed
from tuners.grid import Grid
from tuners.linear import Linear
from tuners.mab import MAB, MABJoint
from tuners.neurosurgeon import Neurosurgeon
from tuners.random_search import Random

#: Name -> tuner class; read-only so that no import can swap a tuner behind the CLI's back.
TUNERS: Mapping[str, type[Tuner]] = types.MappingProxyType(
    {
        "ecogd": EcoGD,
        "ecogd-original": EcoGDOriginal,
        "grid": Grid,
        "linear": Linear,
        "dvfs": DVFS,
        "bayes": Bayesian,
        "bayesian": Bayesian,
        "mab": MAB,
        "mab-joint": MABJoint,
        "fixed": Fixed,
        "random": Random,
    }
)

#: Tuners of the tier knobs alone, built with a planner or chooser by the tier setup.
TIER_TUNERS: Mapping[str, type[Tuner]] = types.MappingProxyType(
    {"neurosurgeon": Neurosurgeon, "cascade": CascadeThreshold}
)


def make_tuner(name: str, space: SearchSpace, seed: int | None = 0, **params: Any) -> Tuner:
    """Build the tuner called ``name`` (case-insensitive) with its paper defaults.

    ``params`` override those defaults; a name or a parameter that does not exist raises
    ValueError listing what does, since both usually come from a command line or a file.
    """
    key = name.strip().lower()
    try:
        cls = TUNERS[key] if key in TUNERS else TIER_TUNERS[key]
    except KeyError:
        valid = ", ".join(sorted({*TUNERS, *TIER_TUNERS}))
        raise ValueError(f"unknown tuner {name!r}; valid names: {valid}") from None
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "space", "seed")
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no parameters"
        raise ValueError(f"tuner {key!r} does not take {', '.join(unknown)}; {takes}")
    return cls(space, seed=seed, **params)
