"""The virtual device: an actuator and a meter backed by a device twin.

It lets a laptop or CI run the real runtime with no hardware. Frequencies are "applied"
by remembering them; each batch's measured wall time is stretched by the twin's slowdown
at those frequencies relative to the maximum, and energy is the twin's power integrated
over wall-clock time (busy while a batch runs, idle otherwise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from devices.base import Actuator, Device, PowerMeter
from ecoserve.core.knobs import Knob
from twins.base import DeviceTwin


class VirtualActuator(Actuator):
    def __init__(self, twin: DeviceTwin) -> None:
        self._knobs = twin.knobs()
        self._initial = {k.name: k.values[-1] for k in self._knobs}
        self._values = dict(self._initial)
        self.governed: frozenset[str] = frozenset()

    def knobs(self) -> list[Knob]:
        return list(self._knobs)

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        owned = {k.name: k for k in self._knobs}
        for name, value in values.items():
            if name in owned and name not in governed:
                knob = owned[name]
                self._values[name] = knob.values[knob.index_of(value)]
        self.governed = frozenset(n for n in governed if n in owned)

    def current(self) -> dict[str, float]:
        return dict(self._values)

    def restore(self) -> None:
        self._values = dict(self._initial)
        self.governed = frozenset()


class TwinMeter(PowerMeter):
    """Integrates the twin's power over a clock; the board is busy between batch hooks."""

    estimated = True

    def __init__(
        self,
        twin: DeviceTwin,
        actuator: VirtualActuator,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.twin = twin
        self.actuator = actuator
        self.clock = clock
        self.source = f"twin:{twin.name}"
        self._lock = threading.Lock()
        self._joules = 0.0
        self._busy = 0.0
        self._batch: int | None = None
        self._last = clock()

    def _advance(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._last)
        self._last = now
        self._joules += self.twin.power(self.actuator.current(), self._busy, batch=self._batch) * dt

    def set_busy(self, busy: bool, batch: int | None = None) -> None:
        with self._lock:
            self._advance()
            self._busy = 1.0 if busy else 0.0
            self._batch = batch if busy else None

    def energy_joules(self) -> float:
        with self._lock:
            self._advance()
            return self._joules


class VirtualDevice(Device):
    def __init__(self, twin: DeviceTwin, clock: Callable[[], float] = time.monotonic) -> None:
        actuator = VirtualActuator(twin)
        super().__init__(f"virtual:{twin.name}", actuator, TwinMeter(twin, actuator, clock))
        self.twin = twin

    def begin_batch(self, batch_size: int) -> None:
        assert isinstance(self.meter, TwinMeter)
        self.meter.set_busy(True, batch_size)

    def end_batch(self, batch_size: int, measured_s: float) -> float:
        freqs = self.actuator.current()
        slowdown = self.twin.batch_time(batch_size, freqs) / self.twin.batch_time(
            batch_size, self.twin.max_freqs()
        )
        return max(0.0, measured_s * (slowdown - 1.0))

    def batch_done(self) -> None:
        """Called once the stretched batch is over: the board goes idle."""
        assert isinstance(self.meter, TwinMeter)
        self.meter.set_busy(False)
