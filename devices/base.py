"""Contracts between the engine and a device: actuators move knobs, meters count joules.

Back-ends (sysfs cpufreq/devfreq, the virtual twin, INA3221, RAPL, NVML...) implement these
so the runtime never knows which hardware it is on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ecoserve.core.knobs import Knob

if TYPE_CHECKING:
    from devices.board_lock import BoardLock
    from devices.restore_record import ClockState


class DeviceError(RuntimeError):
    """A device cannot do what was asked; the message says what and how to fix it."""

    #: The errno behind a failed sysfs access (``ENOENT``, ``EIO``...), when there was one.
    errno_name: str = ""
    #: Already logged by whoever raised it: exit paths need not say it again.
    reported: bool = False


class PermissionDeniedError(DeviceError):
    """A write or read was refused by the kernel (EACCES/EPERM)."""


#: errno names of a resource the process (or the system) ran short of for a while: file
#: descriptors, kernel memory. The knob is fine; the same call can succeed a moment later.
TRANSIENT_ERRNOS = frozenset({"EMFILE", "ENFILE", "ENOMEM", "ENOBUFS"})


class TransientDeviceError(DeviceError):
    """A read or write failed for want of a resource (EMFILE, ENFILE...), not a fault of
    the knob: it is retried later and never freezes the knob."""


class Actuator(ABC):
    """Owns some knobs (by name) and applies values to them.

    ``apply`` takes knob values (Hz for frequencies), not indices. Knobs in ``governed``
    are handed back to the operating system's governor instead of being pinned.
    ``restore`` puts back exactly what was there when the actuator was created; it is
    idempotent and safe to call from any exit path.
    """

    @abstractmethod
    def knobs(self) -> list[Knob]:
        """The knobs this actuator can move, with their available values (ascending)."""

    @abstractmethod
    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        """Set the knobs named in ``values``; ignore names it does not own."""

    @abstractmethod
    def current(self) -> dict[str, float]:
        """The values in force now, read back from the device."""

    @abstractmethod
    def restore(self) -> None:
        """Put every knob back as it was found."""

    def frozen(self) -> dict[str, str]:
        """Knobs this actuator gave up after a failed write, with the reason (one line each).

        A frozen knob is handed back to the OS (restored) and never written again; the
        engine takes it out of the tuner's search space.
        """
        return {}

    def original_clocks(self) -> list[ClockState]:
        """The clock files this actuator may change, as it found them (for the restore record)."""
        return []

    def warnings(self) -> list[str]:
        """Problems reported once (e.g. a knob dropped for lack of permission)."""
        return []


class PowerMeter(ABC):
    """Cumulative energy in joules since the meter was opened; never decreases."""

    #: True when the figure is estimated rather than measured (shown in every report).
    estimated: bool = False
    #: Short human-readable name of the source, e.g. "ina3221:VDD_IN" or "rapl:package-0".
    source: str = "meter"

    @abstractmethod
    def energy_joules(self) -> float:
        """Monotonic cumulative joules (counter wraparound handled inside)."""

    def close(self) -> None:
        """Release threads or handles."""


class NullActuator(Actuator):
    """Owns no knobs: batch-size-only tuning on a box whose clocks cannot be changed."""

    def knobs(self) -> list[Knob]:
        return []

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        return None

    def current(self) -> dict[str, float]:
        return {}

    def restore(self) -> None:
        return None


class Device:
    """What a runtime drives: one actuator, one meter, and hooks around each batch.

    Real hardware needs no hooks. The virtual device uses them to stretch a batch by the
    twin's slowdown at the current frequencies and to know when the board is busy.
    ``lock`` is the board's tuner lock (``devices.board_lock``), released once the clocks
    are restored, so the next tuner finds them as they were.
    """

    def __init__(
        self, name: str, actuator: Actuator, meter: PowerMeter, lock: BoardLock | None = None
    ) -> None:
        self.name = name
        self.actuator = actuator
        self.meter = meter
        self.lock = lock
        self._closed = False

    def begin_batch(self, batch_size: int) -> None:
        """Called just before a batch runs."""

    def end_batch(self, batch_size: int, measured_s: float) -> float:
        """Called after a batch ran for ``measured_s``; returns extra seconds to wait."""
        return 0.0

    def batch_done(self) -> None:
        """Called once the batch (stretched, if so) is over."""

    def close(self) -> None:
        """Restore the knobs, close the meter, release the lock; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            self.actuator.restore()
        except DeviceError as exc:
            if not exc.reported:
                raise  # a reported one is logged and kept in the restore record
        finally:
            try:
                self.meter.close()
            finally:
                if self.lock is not None:
                    self.lock.release()
