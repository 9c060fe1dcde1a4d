"""The device twin: how long a batch takes and how much power the board draws.

A twin answers two questions for a given set of knob values (frequencies in Hz):
``batch_time(batch, freqs)`` in seconds and ``power(freqs, busy)`` in watts, where
``busy`` is the fraction of time the accelerator is running batches (0 = idle, 1 = busy).
The simulator uses it for virtual time; the virtual device uses it in real time.

``AnalyticTwin`` is a small, documented model (no measured data): use it where no fitted
twin exists. Fitted twins live in ``twins.fitted``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from devices.boards import BoardProfile
from ecoserve.core.knobs import CPU, GPU, Knob


class DeviceTwin(ABC):
    """Batch time and power as functions of the knobs; ``noise`` is a relative std-dev."""

    name: str = "twin"
    noise: float = 0.0
    #: Relative std-dev of sampled power; None means the same as ``noise``.
    power_noise: float | None = None

    @abstractmethod
    def knobs(self) -> list[Knob]:
        """Frequency knobs the twin models (CPU and/or GPU)."""

    @abstractmethod
    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        """Expected seconds to run one batch of ``batch`` items (noise-free)."""

    @abstractmethod
    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        """Expected whole-board watts at these frequencies and activity (noise-free).

        ``batch`` is the size of the batch running while busy (power grows with it on
        real boards); twins that do not model it ignore it.
        """

    def sample_batch_time(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random
    ) -> float:
        return _jitter(self.batch_time(batch, freqs), self.noise, rng)

    def sample_power(
        self,
        freqs: Mapping[str, float],
        busy: float,
        rng: random.Random,
        *,
        batch: int | None = None,
    ) -> float:
        rel = self.noise if self.power_noise is None else self.power_noise
        return _jitter(self.power(freqs, busy, batch=batch), rel, rng)

    def max_freqs(self) -> dict[str, float]:
        return {k.name: k.values[-1] for k in self.knobs()}

    #: True for twins whose figures depend on the time (a link schedule): the simulator then
    #: asks :meth:`context` as time passes and hands it to the engine.
    observes_environment: bool = False

    def sample_batch(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random, now: float
    ) -> BatchSample:
        """One batch started at ``now``: its seconds, its energy and its wrong answers.

        The default draws the time, then the busy power, from ``rng`` (in that order), and
        no errors; tier twins also move data over their link and count answers.
        """
        seconds = self.sample_batch_time(batch, freqs, rng)
        joules = self.sample_power(freqs, 1.0, rng, batch=batch) * seconds
        return BatchSample(seconds, joules)

    def context(self, now: float) -> dict[str, float]:
        """What a driver on this device would know of its environment at ``now`` (none)."""
        return {}


class BatchSample(NamedTuple):
    """What one simulated batch took: seconds, joules, and answers estimated wrong."""

    seconds: float
    joules: float
    errors: float = 0.0


def _jitter(value: float, rel: float, rng: random.Random) -> float:
    """``value`` with relative Gaussian noise, floored so a sample never turns negative."""
    return value * max(0.05, 1.0 + rel * rng.gauss(0.0, 1.0)) if rel else value


@dataclass
class AnalyticTwin(DeviceTwin):
    """A stated model, not a measurement.

    Batch time: ``t(b) = (c0 + c1*b) * fc_max/fc + (g0 + g1*b) * fg_max/fg`` — a CPU part
    (pre-processing, kernel launches) that scales with 1/f_cpu and a GPU part that scales
    with 1/f_gpu, each affine in the batch size (fixed overhead plus per-item work).

    Power: ``P = P_idle + P_cpu * u_cpu * (fc/fc_max) * V(fc)^2 + P_gpu * busy * (fg/fg_max) * V(fg)^2``
    with the relative voltage ``V(f) = v_min + (1 - v_min) * f/f_max`` (dynamic power grows
    with f·V²) and the CPU utilisation ``u_cpu`` taken as the CPU share of the batch time
    while busy plus a small polling load.
    """

    profile: BoardProfile
    c0: float = 0.004
    c1: float = 0.0006
    g0: float = 0.006
    g1: float = 0.0035
    p_idle: float = 4.0
    p_cpu: float = 3.0
    p_gpu: float = 7.0
    v_min: float = 0.55
    noise: float = 0.0
    name: str = "analytic"

    def knobs(self) -> list[Knob]:
        return self.profile.knobs()

    def _ratios(self, freqs: Mapping[str, float]) -> tuple[float, float]:
        fc_max = self.profile.cpu_freqs_hz[-1]
        fg_max = self.profile.gpu_freqs_hz[-1]
        rc = float(freqs.get(CPU, fc_max)) / fc_max
        rg = float(freqs.get(GPU, fg_max)) / fg_max
        return max(rc, 1e-3), max(rg, 1e-3)

    def _parts(self, batch: int, freqs: Mapping[str, float]) -> tuple[float, float]:
        rc, rg = self._ratios(freqs)
        return (self.c0 + self.c1 * batch) / rc, (self.g0 + self.g1 * batch) / rg

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        cpu, gpu = self._parts(batch, freqs)
        return cpu + gpu

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        rc, rg = self._ratios(freqs)
        cpu_part, gpu_part = self._parts(8, freqs)
        cpu_share = cpu_part / (cpu_part + gpu_part)
        u_cpu = 0.05 + busy * (cpu_share + 0.25 * (1 - cpu_share))
        v_c = self.v_min + (1 - self.v_min) * rc
        v_g = self.v_min + (1 - self.v_min) * rg
        return self.p_idle + self.p_cpu * u_cpu * rc * v_c**2 + self.p_gpu * busy * rg * v_g**2
