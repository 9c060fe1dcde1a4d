"""Knobs, the search space they span, and configurations as index tuples.

A configuration is a tuple of indices, one per knob, so every tuner works on the same
integer lattice whatever the knob means (a frequency in Hz, a batch size, a split point).
Indices are ordered like the values: index ``len(values) - 1`` is the knob's maximum.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

Config = tuple[int, ...]

# Conventional knob names; the drivers, the devices, the twins and the tuners agree on these.
CPU = "cpu_freq_hz"
GPU = "gpu_freq_hz"
BATCH = "batch_size"
#: How many of a model's stages run here; the rest run on the next tier (0 sends the input).
SPLIT = "split_point"
#: The small model answers here when its confidence reaches this; else the next tier does.
THRESHOLD = "cascade_threshold"

#: Cascade thresholds a tuner chooses among (1.0 forwards everything, 0.0 nothing).
DEFAULT_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)


@dataclass(frozen=True)
class Knob:
    """One tunable dimension: a name and its ordered, discrete values.

    ``floor`` is the lowest index a tuner may choose (e.g. to forbid the slowest
    frequencies on a box that must keep up with a minimum rate).
    """

    name: str
    values: tuple[float, ...]
    floor: int = 0

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"knob {self.name!r} has no values")
        if list(self.values) != sorted(self.values) or len(set(self.values)) != len(self.values):
            raise ValueError(f"knob {self.name!r}: values must be strictly increasing")
        if not 0 <= self.floor < len(self.values):
            raise ValueError(
                f"knob {self.name!r}: floor {self.floor} outside 0..{len(self.values) - 1}"
            )

    @property
    def size(self) -> int:
        return len(self.values)

    @property
    def top(self) -> int:
        return len(self.values) - 1

    def index_of(self, value: float) -> int:
        """Index of the value nearest to ``value`` (the kernel rounds frequencies too)."""
        return min(range(len(self.values)), key=lambda i: abs(self.values[i] - value))


@dataclass(frozen=True)
class SearchSpace:
    """The product of the knobs' value lists."""

    knobs: tuple[Knob, ...]
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate knob names in {names}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @classmethod
    def of(cls, *knobs: Knob) -> SearchSpace:
        return cls(tuple(knobs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    @property
    def dims(self) -> int:
        return len(self.knobs)

    @property
    def size(self) -> int:
        n = 1
        for k in self.knobs:
            n *= k.size
        return n

    def axis(self, name: str) -> int:
        """Position of the knob called ``name``; KeyError names the knobs that exist."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no knob {name!r}; knobs are {list(self.names)}") from None

    def has(self, name: str) -> bool:
        return name in self._index

    def contains(self, config: Sequence[int]) -> bool:
        return len(config) == self.dims and all(
            k.floor <= i <= k.top for k, i in zip(self.knobs, config)
        )

    def validate(self, config: Sequence[int]) -> Config:
        cfg = tuple(int(i) for i in config)
        if not self.contains(cfg):
            raise ValueError(f"configuration {cfg} is outside the search space {self.describe()}")
        return cfg

    def maximum(self) -> Config:
        """Every knob at its top value: the baseline configuration of the cost."""
        return tuple(k.top for k in self.knobs)

    def minimum(self) -> Config:
        return tuple(k.floor for k in self.knobs)

    def step(self, config: Config, axis: int, delta: int) -> Config | None:
        """``config`` moved by ``delta`` on one axis, or None when that leaves the space."""
        i = config[axis] + delta
        knob = self.knobs[axis]
        if not knob.floor <= i <= knob.top:
            return None
        return config[:axis] + (i,) + config[axis + 1 :]

    def neighbours(self, config: Config) -> list[Config]:
        """The axis neighbours (±1 on one knob): at most ``2 * dims`` configurations."""
        out = []
        for axis in range(self.dims):
            for delta in (-1, 1):
                n = self.step(config, axis, delta)
                if n is not None:
                    out.append(n)
        return out

    def moore_neighbours(self, config: Config) -> list[Config]:
        """Every configuration within ±1 on every knob, except ``config`` itself."""
        ranges = [
            range(max(k.floor, i - 1), min(k.top, i + 1) + 1) for k, i in zip(self.knobs, config)
        ]
        return [c for c in itertools.product(*ranges) if c != config]

    def all_configs(self) -> Iterator[Config]:
        return itertools.product(*(range(k.floor, k.size) for k in self.knobs))

    def random_config(self, rng: random.Random) -> Config:
        return tuple(rng.randint(k.floor, k.top) for k in self.knobs)

    def values(self, config: Config) -> dict[str, float]:
        """The knob values a configuration stands for, by knob name."""
        return {k.name: k.values[i] for k, i in zip(self.knobs, config)}

    def config_for(self, values: Mapping[str, float]) -> Config:
        """The configuration nearest to the given values; missing knobs take their maximum."""
        return tuple(k.index_of(values[k.name]) if k.name in values else k.top for k in self.knobs)

    def with_value(self, config: Config, name: str, index: int) -> Config:
        axis = self.axis(name)
        return config[:axis] + (index,) + config[axis + 1 :]

    def describe(self) -> str:
        return " x ".join(f"{k.name}[{k.size}]" for k in self.knobs)


def batch_knob(max_batch: int = 16, min_batch: int = 1, name: str = BATCH) -> Knob:
    """Batch sizes ``min_batch..max_batch`` (the paper tunes 1..16)."""
    if min_batch < 1 or max_batch < min_batch:
        raise ValueError(f"{name}: batch sizes need 1 <= min ({min_batch}) <= max ({max_batch})")
    return Knob(name, tuple(range(min_batch, max_batch + 1)))


def model_batch_knob(model: str) -> str:
    """The name of a served model's own batch-size knob (one per queue on a shared board)."""
    return f"{BATCH}:{model}"


def is_batch_knob(name: str) -> bool:
    """True for ``batch_size`` and for a model's own ``batch_size:<model>``."""
    return name == BATCH or name.startswith(BATCH + ":")


def split_knob(n_stages: int) -> Knob:
    """The split point: ``0..n_stages`` stages here (its maximum runs everything here)."""
    if n_stages < 1:
        raise ValueError(f"a model needs at least one stage to split, got {n_stages}")
    return Knob(SPLIT, tuple(range(n_stages + 1)))


def threshold_knob(values: Sequence[float] = DEFAULT_THRESHOLDS) -> Knob:
    """The cascade threshold; its maximum (1.0) forwards everything, the accurate extreme."""
    vals = tuple(float(v) for v in values)
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"thresholds must lie in [0, 1]: {vals}")
    return Knob(THRESHOLD, vals)
