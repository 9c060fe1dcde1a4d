"""Assembling the engine: device + search space + tuner + controller + runtime.

The decorator and the HTTP daemon both build their runtime here from one settings
object, so they tune the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from devices.base import Device
from devices.factory import open_device
from tuners.registry import make_tuner

from .controller import Controller
from .cost import Baseline, CostModel, EnergyAccounting
from .runtime import BatchFunction, Runtime, RuntimeObserver
from .space import SearchSpace, batch_knob


@dataclass
class EngineSettings:
    """Everything that shapes tuning; every field is also a CLI flag of ``ecoserve serve``."""

    device: str = "virtual:xavier-nx"
    sysfs_root: str = "/"
    meter: str = "auto"
    tuner: str = "ecogd"
    tuner_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    min_batch: int = 1
    max_batch: int = 16
    max_wait_s: float = 0.05
    max_queue: int = 1024
    window_requests: int | None = 416
    warmup_requests: int = 100
    window_seconds: float | None = 30.0
    alpha: float = 0.5
    accounting: str = EnergyAccounting.ACTIVE.value
    baseline_path: str | None = None
    slo_latency_s: float | None = None
    slo_percentile: float = 95.0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def build_space(device: Device, settings: EngineSettings) -> SearchSpace:
    """The device's frequency knobs plus the batch size (always tunable)."""
    return SearchSpace(
        tuple(device.actuator.knobs()) + (batch_knob(settings.max_batch, settings.min_batch),)
    )


def build_controller(space: SearchSpace, settings: EngineSettings) -> Controller:
    tuner = make_tuner(settings.tuner, space, seed=settings.seed, **settings.tuner_params)
    baseline = None
    if settings.baseline_path:
        try:
            baseline = Baseline.load(settings.baseline_path)
        except ValueError:
            baseline = None  # missing or unreadable: measure a new one and save it
    return Controller(
        space,
        tuner,
        cost_model=CostModel(
            alpha=settings.alpha,
            slo_latency_s=settings.slo_latency_s,
            slo_percentile=settings.slo_percentile,
        ),
        baseline=baseline,
        window_requests=settings.window_requests,
        warmup_requests=settings.warmup_requests,
        window_seconds=settings.window_seconds,
        accounting=settings.accounting,
    )


def build_runtime(
    fn: BatchFunction,
    settings: EngineSettings,
    device: Device | None = None,
    observer: RuntimeObserver | None = None,
    run_inline: bool = False,
) -> Runtime:
    device = device or open_device(settings.device, settings.sysfs_root, settings.meter)
    try:
        space = build_space(device, settings)
        controller = build_controller(space, settings)
    except Exception:
        device.close()
        raise
    return Runtime(
        fn,
        device,
        controller,
        max_wait=settings.max_wait_s,
        max_queue=settings.max_queue,
        observer=observer,
        run_inline=run_inline,
    )
