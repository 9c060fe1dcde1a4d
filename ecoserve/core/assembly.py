"""Assembling the engine from settings and a list of knobs: space, tuner, controller, queue.

The daemon, the decorator and the simulator all build their engine here from one
``EngineSettings``, so a replay tunes exactly as the daemon does. No I/O: the knobs come
from whatever the driver opened (a device, a twin), and a saved baseline is read by the
driver and handed in.

Several models on one board: ``queues`` gives one ``QueueSpec`` per model (its batch knob,
batch bounds and latency target); the space is the device's knobs plus each model's batch
knob, and one controller scores the models jointly (``ecoserve.core.controller``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from ecoserve.core.controller import Controller
from ecoserve.core.cost import Baseline, CostModel, EnergyAccounting
from ecoserve.core.engine import Engine, QueueSpec
from ecoserve.core.harvest import HarvestPolicy
from ecoserve.core.knobs import Knob, SearchSpace, batch_knob
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


def build_space(
    knobs: Sequence[Knob], settings: EngineSettings, queues: Sequence[QueueSpec] | None = None
) -> SearchSpace:
    """The given frequency knobs plus the batch size (always tunable): one batch knob, or
    one per queue with that queue's bounds (the settings' where it gives none)."""
    if queues is None:
        return SearchSpace(tuple(knobs) + (batch_knob(settings.max_batch, settings.min_batch),))
    if not queues:
        raise ValueError("queues: give at least one QueueSpec (or None for one model)")
    batch = tuple(_queue_batch_knob(q, settings) for q in queues)
    names = [k.name for k in knobs] + [k.name for k in batch]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"knob names {clash} are used twice: give each queue its own batch knob")
    return SearchSpace(tuple(knobs) + batch)


def _queue_batch_knob(q: QueueSpec, settings: EngineSettings) -> Knob:
    """A queue's batch sizes: its bounds, or its preferred sizes and its largest."""
    top = settings.max_batch if q.max_batch is None else q.max_batch
    if q.batch_sizes is not None:
        return Knob(q.batch_knob, tuple(sorted({*q.batch_sizes, top})))
    low = settings.min_batch if q.min_batch is None else q.min_batch
    return batch_knob(top, min(low, top), q.batch_knob)


def _cost_model(settings: EngineSettings, slo_latency_s: float | None) -> CostModel:
    return CostModel(
        alpha=settings.alpha,
        slo_latency_s=slo_latency_s,
        slo_percentile=settings.slo_percentile,
        error_weight=settings.error_weight,
    )


def queue_cost_models(
    settings: EngineSettings, queues: Sequence[QueueSpec]
) -> dict[str, CostModel]:
    """Each model's cost model: the settings', with the queue's latency target if it has one."""
    return {
        q.name: _cost_model(
            settings, settings.slo_latency_s if q.slo_latency_s is None else q.slo_latency_s
        )
        for q in queues
    }


def build_controller(
    space: SearchSpace,
    settings: EngineSettings,
    baseline: Baseline | None = None,
    *,
    queues: Sequence[QueueSpec] | None = None,
    baselines: Mapping[str, Baseline] | None = None,
) -> Controller:
    """The controller and its tuner; ``baseline`` skips measuring E0/L0 when known.

    With ``queues`` it scores them jointly: each model's cost model has the queue's latency
    target (the settings' where it gives none); ``baselines`` (every queue's) skip
    measuring.
    """
    tuner = make_tuner(settings.tuner, space, seed=settings.seed, **settings.tuner_params)
    joint: dict[str, Any] = {}
    if queues is not None:
        joint = {
            "queues": [q.name for q in queues],
            "queue_costs": queue_cost_models(settings, queues),
            "baselines": baselines,
        }
    elif baselines:
        raise ValueError("baselines are per model: give the queues they belong to")
    return Controller(
        space,
        tuner,
        cost_model=_cost_model(settings, settings.slo_latency_s),
        baseline=baseline,
        window_requests=settings.window_requests,
        warmup_requests=settings.warmup_requests,
        window_seconds=settings.window_seconds,
        accounting=settings.accounting,
        **joint,
    )


def build_engine(
    knobs: Sequence[Knob],
    settings: EngineSettings,
    baseline: Baseline | None = None,
    *,
    tick_s: float = 0.5,
    queues: Sequence[QueueSpec] | None = None,
    baselines: Mapping[str, Baseline] | None = None,
    harvest: HarvestPolicy | None = None,
) -> Engine[Any]:
    """The whole sans-IO engine for these knobs: space, tuner, controller and queues.

    ``tick_s``: the longest the engine lets an idle loop wait before it looks at timed
    windows again. ``queues``: one ``QueueSpec`` per model served on this board (e.g.
    ``QueueSpec.for_model("resnet", max_batch=8, slo_latency_s=0.1)``), tuned jointly; None
    serves one model on the ``batch_size`` knob exactly as before. ``baselines``: each
    model's saved baseline, by queue name (all of them, or they are measured). ``harvest``:
    the background slot's policy (None: no background work).
    """
    space = build_space(knobs, settings, queues)
    controller = build_controller(space, settings, baseline, queues=queues, baselines=baselines)

    def tuner_on(space: SearchSpace) -> Tuner:
        return make_tuner(settings.tuner, space, seed=settings.seed, **settings.tuner_params)

    return Engine(
        controller,
        max_wait=settings.max_wait_s,
        max_queue=settings.max_queue,
        tuner_factory=tuner_on,
        timer_kind=settings.batch_timer,
        tick_s=tick_s,
        harvest=harvest,
        **({} if queues is None else {"queues": tuple(queues)}),
    )
