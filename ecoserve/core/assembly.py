"""Assembling the engine from settings and a list of knobs: space, tuner, controller, queue.

The daemon, the decorator and the simulator all build their engine here from one
``EngineSettings``, so a replay tunes exactly as the daemon does. No I/O: the knobs come
from whatever the driver opened (a device, a twin), and a saved baseline is read by the
driver and handed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ecoserve.core.controller import Controller
from ecoserve.core.cost import Baseline, CostModel, EnergyAccounting
from ecoserve.core.engine import Engine, QueueSpec
from ecoserve.core.knobs import BATCH, Knob, SearchSpace, batch_knob
from ecoserve.core.tuner import Tuner
from tuners.registry import make_tuner

#: Old setting name -> new, accepted (with a deprecation message) for one release. The faces
#: that read settings from users (flags, TOML, environment, decorator keywords) apply it.
RENAMED_SETTINGS: Mapping[str, str] = MappingProxyType({"state_dir": "restore_dir"})


@dataclass
class EngineSettings:
    """Everything that shapes tuning; every field is also a CLI flag of ``ecoserve serve``."""

    device: str = "virtual:xavier-nx"
    sysfs_root: str = "/"
    restore_dir: str | None = None
    meter: str = "auto"
    tuner: str = "ecogd"
    tuner_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    min_batch: int = 1
    max_batch: int = 16
    max_wait_s: float = 0.05
    batch_timer: str = "fixed"
    max_queue: int = 1024
    window_requests: int | None = 416
    warmup_requests: int = 100
    window_seconds: float | None = 30.0
    alpha: float = 0.5
    accounting: str = EnergyAccounting.ACTIVE.value
    baseline_path: str | None = None
    slo_latency_s: float | None = None
    slo_percentile: float = 95.0
    error_weight: float = 0.0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class ModelQueue:
    """One model's queue on a board that serves several: its name and largest batch."""

    name: str
    max_batch: int

    @property
    def batch_knob(self) -> str:
        """The name of the knob that sets this queue's batch size."""
        return f"{BATCH}:{self.name}"


def build_space(
    knobs: Sequence[Knob], settings: EngineSettings, queues: Sequence[ModelQueue] = ()
) -> SearchSpace:
    """The given frequency knobs plus the batch size (always tunable): one batch-size knob,
    or one per model's queue."""
    if not queues:
        return SearchSpace(tuple(knobs) + (batch_knob(settings.max_batch, settings.min_batch),))
    sizes = []
    for q in queues:
        low = min(settings.min_batch, q.max_batch)
        sizes.append(replace(batch_knob(q.max_batch, low), name=q.batch_knob))
    return SearchSpace(tuple(knobs) + tuple(sizes))


def build_controller(
    space: SearchSpace, settings: EngineSettings, baseline: Baseline | None = None
) -> Controller:
    """The controller and its tuner; ``baseline`` skips measuring E0/L0 when known."""
    tuner = make_tuner(settings.tuner, space, seed=settings.seed, **settings.tuner_params)
    return Controller(
        space,
        tuner,
        cost_model=CostModel(
            alpha=settings.alpha,
            slo_latency_s=settings.slo_latency_s,
            slo_percentile=settings.slo_percentile,
            error_weight=settings.error_weight,
        ),
        baseline=baseline,
        window_requests=settings.window_requests,
        warmup_requests=settings.warmup_requests,
        window_seconds=settings.window_seconds,
        accounting=settings.accounting,
    )


def build_engine(
    knobs: Sequence[Knob],
    settings: EngineSettings,
    baseline: Baseline | None = None,
    *,
    tick_s: float = 0.5,
    queues: Sequence[ModelQueue] = (),
) -> Engine[Any]:
    """The whole sans-IO engine for these knobs: space, tuner, controller and queue(s).

    ``tick_s``: the longest the engine lets an idle loop wait before it looks at timed
    windows again. ``queues``: one per model of a board that serves several (none: one
    model on the default queue).
    """
    space = build_space(knobs, settings, queues)
    controller = build_controller(space, settings, baseline)
    specs = [QueueSpec(q.name, q.batch_knob) for q in queues] or [QueueSpec()]

    def tuner_on(space: SearchSpace) -> Tuner:
        return make_tuner(settings.tuner, space, seed=settings.seed, **settings.tuner_params)

    return Engine(
        controller,
        max_wait=settings.max_wait_s,
        max_queue=settings.max_queue,
        tuner_factory=tuner_on,
        timer_kind=settings.batch_timer,
        queues=specs,
        tick_s=tick_s,
    )
