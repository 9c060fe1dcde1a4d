"""One guard for everything that changes clocks: restore on every exit path, and on a hang.

``install_restore_handlers`` covers a process that exits (normally, by exception, by
SIGTERM or SIGINT) and ``Watchdog`` covers one that stops making progress; anything that
pins clocks needs both, and needs them torn down in the right order (the watchdog stopped
before the final restore, so it cannot re-pin nothing or race it). ``guarded`` does that
once for the profiler, the daemon and tests::

    with guarded(device, watchdog_timeout_s=30) as guard:
        while serving:
            run_batch()
            guard.feed()      # after each batch: no feed for 30 s -> knobs handed back

The guard restores the actuator on leaving; closing the device (its meter) stays with
whoever opened it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from devices.base import Device
from devices.composite import install_restore_handlers, restoring
from devices.watchdog import Watchdog


class Guard:
    """What ``guarded`` yields: ``feed()`` after each unit of progress.

    Without a watchdog ``feed()`` does nothing, so callers never need to check which
    kind they were given.
    """

    def __init__(self, device: Device, watchdog: Watchdog | None) -> None:
        self.device = device
        self.watchdog = watchdog

    def feed(self) -> None:
        """Progress was made: push the watchdog's deadline back and re-arm it."""
        if self.watchdog is not None:
            self.watchdog.feed()

    @property
    def fired_count(self) -> int:
        """How often the watchdog handed the knobs back (0 without a watchdog).

        A caller measuring at pinned clocks compares it before and after a measurement:
        a change means the clocks were not pinned for the whole of it.
        """
        return self.watchdog.fired_count if self.watchdog is not None else 0


@contextmanager
def guarded(device: Device, watchdog_timeout_s: float | None = None) -> Iterator[Guard]:
    """Restore ``device``'s knobs on leaving, on SIGTERM / SIGINT and at interpreter exit.

    With ``watchdog_timeout_s``, a watchdog also hands the knobs back to the governors when
    ``feed()`` is not called for that long. Restore failures on the way out of an exception
    are logged rather than raised, so they never hide the exception that ended the block.
    """
    actuator = device.actuator
    uninstall = install_restore_handlers(actuator)
    try:
        with restoring(actuator):
            watchdog = Watchdog(actuator, watchdog_timeout_s) if watchdog_timeout_s else None
            try:
                if watchdog is not None:
                    watchdog.start()
                yield Guard(device, watchdog)
            finally:
                # Stopped before the restore so it cannot fire in the middle of it.
                if watchdog is not None:
                    watchdog.stop(timeout=2.0)
    finally:
        uninstall()
