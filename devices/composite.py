"""Several actuators seen as one, and the guarantee that clocks are restored on every exit.

A device left pinned at its lowest frequency is a real fault on a real box, so restoring
must survive one actuator failing (the others are still restored, the errors raised
together after), exceptions (``with`` blocks), normal interpreter exit (``atexit``), and
SIGTERM / SIGINT (``install_restore_handlers``). The daemon installs the handlers once
at start-up, after opening its device; servers that install their own signal handlers
(uvicorn) put the previous ones back when they stop and re-raise the signal, so the
restore still runs. SIGKILL and power loss cannot be caught: the restore record
(``devices.restore_record``), written before the first write and removed after a successful
restore, lets the next start or ``ecoserve restore`` put the clocks back.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType, TracebackType

from devices.base import Actuator, DeviceError
from devices.restore_record import ClockState, RestoreRecord
from ecoserve.core.knobs import Knob

log = logging.getLogger(__name__)


class CompositeActuator(Actuator):
    """Merges the knobs of ``actuators``; each ``apply`` reaches every one of them.

    ``notes`` are messages shown with the warnings, e.g. why a knob is missing altogether.
    Usable as a context manager that restores on leaving, exception or not.
    """

    def __init__(
        self,
        actuators: Iterable[Actuator],
        notes: Iterable[str] = (),
        record: RestoreRecord | None = None,
    ) -> None:
        self.actuators: tuple[Actuator, ...] = tuple(actuators)
        # Written before the first write to any knob, removed after a successful restore.
        self.record = record
        self._recorded = False
        self._unrecordable: str | None = None
        names = [k.name for a in self.actuators for k in a.knobs()]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"knobs owned by more than one actuator: {duplicated}")
        self._notes = list(notes)

    def knobs(self) -> list[Knob]:
        return [k for a in self.actuators for k in a.knobs()]

    def original_clocks(self) -> list[ClockState]:
        return [c for a in self.actuators for c in a.original_clocks()]

    def frozen(self) -> dict[str, str]:
        if self._unrecordable is not None:
            return {k.name: self._unrecordable for k in self.knobs()}
        return {k: v for a in self.actuators for k, v in a.frozen().items()}

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        """Apply to every actuator even if one fails; failures are raised together after.

        The first apply (and the first after a restore) writes the restore record first.
        """
        if self._unrecordable is not None:
            return
        if self.record is not None and not self._recorded:
            clocks = self.original_clocks()
            try:
                if clocks:
                    self.record.write(clocks)
            except OSError as exc:
                # No record, no guarantee after a SIGKILL: leave the clocks alone.
                self._unrecordable = (
                    f"{errno.errorcode.get(exc.errno or 0, 'EIO')}: cannot write the restore "
                    f"record {self.record.path} ({exc.strerror or exc}); the clocks are left "
                    "alone: give --restore-dir a writable folder"
                )
                log.error("%s", self._unrecordable)
                return
            self._recorded = True
        errors = []
        for a in self.actuators:
            try:
                a.apply(values, governed)
            except DeviceError as exc:
                errors.append(str(exc))
        if errors:
            raise DeviceError("; ".join(errors))

    def current(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for a in self.actuators:
            merged.update(a.current())
        return merged

    def restore(self) -> None:
        """Restore every actuator, even when one raises; then raise what failed."""
        errors = []
        for a in self.actuators:
            try:
                a.restore()
            except Exception as exc:  # the others must still be restored
                errors.append(f"{type(a).__name__}: {exc}")
        if errors:
            raise DeviceError("restore incomplete: " + "; ".join(errors))
        if self.record is not None:
            self.record.remove()  # every clock is back: nothing left for a later start to do
            self._recorded = False

    def warnings(self) -> list[str]:
        return [*self._notes, *(w for a in self.actuators for w in a.warnings())]

    def __enter__(self) -> CompositeActuator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _exit_restore(self, exc)


@contextmanager
def restoring(actuator: Actuator) -> Iterator[Actuator]:
    """``with restoring(actuator):`` — restore on leaving the block, whatever happens."""
    try:
        yield actuator
    except BaseException as exc:
        _exit_restore(actuator, exc)
        raise
    else:
        _exit_restore(actuator, None)


def _exit_restore(actuator: Actuator, exc: BaseException | None) -> None:
    # A failed restore must not hide the exception that ended the block: log it instead.
    if exc is None:
        actuator.restore()
        return
    try:
        actuator.restore()
    except Exception:
        log.exception("restore failed while handling %s", type(exc).__name__)


def _safe_restore(actuator: Actuator, why: str) -> None:
    try:
        actuator.restore()
        log.info("clocks restored (%s)", why)
    except Exception:
        log.exception("restore on %s failed", why)


def install_restore_handlers(
    actuator: Actuator,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Callable[[], None]:
    """Restore ``actuator`` at interpreter exit and on ``signals``; returns an uninstaller.

    Each signal handler restores, then chains to the handler it replaced: a Python handler
    is called (SIGINT's default raises KeyboardInterrupt as usual), the default action is
    re-raised so the process still dies of the signal, and ignored signals are left ignored.
    Signal handlers can only be set from the main thread; elsewhere only ``atexit`` is used.
    """

    def at_exit() -> None:
        _safe_restore(actuator, "exit")

    atexit.register(at_exit)
    previous: dict[int, object] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _safe_restore(actuator, signal.Signals(signum).name)
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            prev = signal.getsignal(sig)
            if prev == signal.SIG_IGN:
                continue
            previous[int(sig)] = prev
            signal.signal(sig, on_signal)
    else:
        log.debug("not in the main thread: clocks restored at exit only, not on signals")

    def uninstall() -> None:
        atexit.unregister(at_exit)
        for signum, prev in previous.items():
            if signal.getsignal(signum) is on_signal:
                restored = prev if prev is not None else signal.SIG_DFL
                signal.signal(signum, restored)  # type: ignore[arg-type]
        previous.clear()

    return uninstall
