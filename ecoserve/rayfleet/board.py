"""One board of the fleet: the daemon's own service (engine, tuner, device guard) on its device.

A :class:`BoardService` is what a Ray replica holds; it has no Ray in it, so it also runs in a
test or a plain script. It serves items through an :class:`InferenceService` exactly as
``ecoserve serve`` does, parks by pinning the clocks at their minimum (the engine's own pin,
so the tuner carries on with the batch size and resumes the clocks on unpark), and reports
what the fleet policy needs: its batch times (from which the ingress estimates its capacity,
``ecoserve.core.fleet.capacity_rps``) and energy per request, measured from its own batches,
and when it started and how long loading took (the steps of a wake, as the ingress reports
them). A virtual board runs at its twin's absolute speed (``twin_pace``). At shutdown
it drains, restores the device and writes a shutdown record saying
whether every knob is back where it was found.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from ecoserve.core.fleet import batch_time_line
from ecoserve.core.knobs import BATCH
from ecoserve.models.loader import load_model
from ecoserve.runtime.device_spec import open_device
from ecoserve.runtime.driver import BatchStats, RuntimeObserver
from ecoserve.server.service import InferenceService
from ecoserve.server.settings import ServeSettings
from twins.virtual_device import VirtualDevice

log = logging.getLogger("ecoserve.fleet")


class _BatchLog(RuntimeObserver):
    """The last batches' sizes, busy seconds and joules (for capacity and J/request)."""

    def __init__(self, keep: int = 200) -> None:
        self.batches: deque[tuple[int, float, float]] = deque(maxlen=keep)

    def on_batch(self, stats: BatchStats) -> None:
        if stats.ok and stats.size > 0:
            self.batches.append((stats.size, stats.run_s, stats.energy_j))


class BoardService:
    """The inference service of one board, with parking and the fleet's statistics.

    Not an engine: the engine (``ecoserve.core.engine.Engine``) is inside the service's
    runtime; this wraps the whole daemon service for one board (see the module doc).
    """

    def __init__(self, name: str, settings: ServeSettings, record_dir: str | None = None) -> None:
        #: Wall-clock time this board's service began (the ingress sets it beside its wake).
        self.created_at = time.time()
        began = time.monotonic()
        self.name = name
        self.settings = settings
        self.record_dir = record_dir
        # opened here, so the knobs are read before the engine first moves them
        self.device = open_device(
            settings.device, settings.sysfs_root, settings.meter, settings.restore_dir
        )
        if isinstance(self.device, VirtualDevice):
            # a virtual board runs at its twin's speed, not the host's, so the fleet ranks
            # board kinds as the replay does
            self.device.board.twin_pace = True
        self._initial: dict[str, float] = dict(self.device.actuator.current())
        self.service = InferenceService(
            settings,
            load_model(
                settings.model,
                settings.input_shape,
                settings.preprocess,
                settings.postprocess,
                settings.onnx_providers,
            ),
            self.device,
        )
        self.load_s = time.monotonic() - began  # device opened and model loaded
        self.start_s: float | None = None  # service started (engine, tuner, first batch)
        self.parked = False
        self.parks = 0
        self._log = _BatchLog()
        self._served = 0
        self._since = time.monotonic()

    async def start(self) -> None:
        began = time.monotonic()
        await self.service.start()
        self.start_s = time.monotonic() - began
        runtime = self.service.runtime
        assert runtime is not None
        observers = getattr(runtime.observer, "observers", None)
        if observers is not None:
            observers.append(self._log)
        log.info("board %s serving on %s", self.name, runtime.device.name)

    async def infer(self, items: list[Any]) -> list[Any]:
        out = await self.service.infer(items)
        self._served += len(items)
        return out

    async def park(self) -> dict[str, float]:
        """Minimum clocks, held until :meth:`unpark`; queued requests are still answered."""
        runtime = self.service.runtime
        assert runtime is not None
        clocks = {k.name for k in runtime.device.actuator.knobs()} - {BATCH}
        lowest = {k.name: k.values[0] for k in runtime.space.knobs if k.name in clocks}
        await runtime.pin(lowest)
        self.parked = True
        self.parks += 1
        return runtime.pinned_values()

    async def unpark(self) -> None:
        runtime = self.service.runtime
        assert runtime is not None
        await runtime.unpin()
        self.parked = False

    def stats(self) -> dict[str, Any]:
        """What the fleet policy and the status page read (JSON-ready)."""
        runtime = self.service.runtime
        now = time.monotonic()
        items = sum(b[0] for b in self._log.batches)
        busy = sum(b[1] for b in self._log.batches)
        joules = sum(b[2] for b in self._log.batches)
        line = batch_time_line((b[0], b[1]) for b in self._log.batches)
        out: dict[str, Any] = {
            "board": self.name,
            "parked": self.parked,
            "parks": self.parks,
            "ready": self.service.ready,
            "served": self._served,
            "uptime_s": now - self._since,
            "busy_rate_rps": items / busy if busy > 0 else None,
            "joules_per_request": joules / items if items else None,
            "batch_line_s": None if line is None else list(line),
            "max_batch": self.settings.max_batch,
            "created_at": self.created_at,
            "load_s": self.load_s,
            "start_s": self.start_s,
        }
        if runtime is not None:
            out.update(
                device=runtime.device.name,
                config=runtime.engine.values(),
                pinned=runtime.pinned_values(),
                tuner=runtime.tuner_name(),
                tuner_phase=runtime.tuner_phase(),
                windows_closed=runtime.engine.windows_closed,
                queue_depth=runtime.queue_depth,
                in_flight=runtime.in_flight,
                energy_j=runtime.energy_joules(),
            )
        return out

    async def close(self) -> dict[str, Any]:
        """Drain, save, restore the device; returns (and writes) the shutdown record."""
        await self.service.close()
        current = dict(self.device.actuator.current())
        record = {
            "board": self.name,
            "served": self._served,
            "initial": self._initial,
            "final": current,
            "restored": current == self._initial,
            "time": time.time(),
        }
        if self.record_dir:
            path = Path(self.record_dir) / f"{self.name}.shutdown.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        log.info("board %s closed; device restored: %s", self.name, record["restored"])
        return record
