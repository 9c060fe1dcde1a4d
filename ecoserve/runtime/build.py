"""Building a real-time runtime: open the device, read a saved baseline, assemble the engine.

The decorator and the HTTP daemon both build their runtime here from one settings object,
so they tune the same way; the engine itself comes from ``ecoserve.core.assembly``, as the
simulator's does. ``queues`` gives a board serving several models one queue each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from devices.base import Actuator, Device
from devices.safety import Guard
from ecoserve.core.assembly import EngineSettings, build_engine
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import QueueSpec
from ecoserve.core.harvest import HarvestPolicy
from ecoserve.core.knobs import Knob
from ecoserve.runtime.device_spec import open_device
from ecoserve.runtime.driver import BackgroundStep, BatchFunctions, Runtime, RuntimeObserver
from ecoserve.runtime.state_files import load_baseline
from ecoserve.runtime.tuning_state import TuningState

log = logging.getLogger("ecoserve.runtime")


def saved_baseline(settings: EngineSettings) -> Baseline | None:
    """The baseline file's figures, or None when there is none yet, it is unreadable, or it
    was measured under other energy accounting (its figures would not compare: the state
    file refuses the same mismatch)."""
    path = settings.baseline_path
    if not path:
        return None
    if not os.path.exists(path):
        return None  # none yet: measure one and save it
    try:
        baseline = load_baseline(path)
    except ValueError as exc:
        log.warning("%s; measuring a new baseline, which will replace the file", exc)
        return None
    if baseline.accounting != settings.accounting:
        log.warning(
            "baseline file %s was measured under %r accounting, not %r; measuring a new "
            "baseline, which will replace the file",
            path, baseline.accounting, settings.accounting,
        )  # fmt: skip
        return None
    return baseline


def build_runtime(
    fn: BatchFunctions,
    settings: EngineSettings,
    device: Device | None = None,
    observer: RuntimeObserver | None = None,
    run_inline: bool = False,
    extra_actuator: Actuator | None = None,
    guard: Guard | None = None,
    state: TuningState | None = None,
    queues: Sequence[QueueSpec] | None = None,
    harvest: Callable[[Sequence[Knob]], HarvestPolicy] | None = None,
    background: BackgroundStep | None = None,
    **hooks: Any,
) -> Runtime:
    """A runtime over ``device`` (opened from the settings when None), wired for its life.

    ``guard`` (the device's restore guard, entered by the caller) is fed by the loop, so
    its watchdog sees progress; ``state`` is resumed now and saved after each window and at
    stop. ``extra_actuator`` owns knobs of this process rather than the device (the tier
    knob); they join the search space. ``hooks`` are the runtime's ``context_source`` and
    ``error_source``. ``harvest`` builds the background slot's policy from the device's clock
    knobs, and ``background`` runs one step of the job in that slot.
    """
    device = device or open_device(
        settings.device, settings.sysfs_root, settings.meter, settings.restore_dir
    )
    knobs = list(device.actuator.knobs())
    if extra_actuator is not None:
        knobs += extra_actuator.knobs()
    try:
        slot = None if harvest is None else harvest(list(device.actuator.knobs()))
        engine = build_engine(
            knobs, settings, saved_baseline(settings), queues=queues, harvest=slot
        )
    except Exception:
        device.close()
        raise
    return Runtime(
        fn,
        device,
        engine,
        observer=observer,
        run_inline=run_inline,
        extra_actuator=extra_actuator,
        guard=guard,
        state=state,
        background=background,
        **hooks,
    )
