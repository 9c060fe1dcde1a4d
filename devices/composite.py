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

from devices.base import TRANSIENT_ERRNOS, Actuator, DeviceError, TransientDeviceError
from devices.restore_record import (
    ClockState,
    IncompleteRestoreError,
    Recovery,
    RestoreRecord,
    Unrestored,
    put_clock,
)
from ecoserve.core.knobs import Knob

log = logging.getLogger(__name__)


class CompositeActuator(Actuator):
    """Merges the knobs of ``actuators``; each ``apply`` reaches every one of them.

    ``notes`` are messages shown with the warnings, e.g. why a knob is missing altogether.
    Usable as a context manager that restores on leaving, exception or not. ``follow``
    binds it to the restore record that ``recover`` left it.
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
        # Clocks a dead process left that would not go back: recorded until they do, and
        # their actuators (which read the pinned values as the originals) never written.
        self._held: list[Unrestored] = []
        self._left_alone: dict[str, str] = {}
        self._reported: set[str] = set()
        names = [k.name for a in self.actuators for k in a.knobs()]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"knobs owned by more than one actuator: {duplicated}")
        self._notes = list(notes)

    def follow(self, recovery: Recovery) -> None:
        """Use ``recovery``'s record; leave alone what it could not put back or read.

        An unreadable record blocks every clock (the originals are unknown); a clock that
        would not go back blocks the actuator owning it, and stays in the record.
        """
        self.record = recovery.record
        if recovery.unreadable is not None:
            self._unrecordable = f"ERECORD: {recovery.unreadable}; clocks left alone"
        self._held = list(recovery.remaining)
        self._left_alone = {u.clock.rel: u.describe() for u in recovery.remaining}

    def _is_held(self, actuator: Actuator) -> bool:
        return any(c.rel in self._left_alone for c in actuator.original_clocks())

    def _active(self) -> list[Actuator]:
        return [a for a in self.actuators if not self._is_held(a)]

    def knobs(self) -> list[Knob]:
        return [k for a in self.actuators for k in a.knobs()]

    def original_clocks(self) -> list[ClockState]:
        return [c for a in self._active() for c in a.original_clocks()] + [
            u.clock for u in self._held
        ]

    def frozen(self) -> dict[str, str]:
        if self._unrecordable is not None:
            return {k.name: self._unrecordable for k in self.knobs()}
        out = {k: v for a in self._active() for k, v in a.frozen().items()}
        for a in self.actuators:
            whys = [
                self._left_alone[c.rel] for c in a.original_clocks() if c.rel in self._left_alone
            ]
            if whys:
                why = f"ERESTORE: left alone, as the last run left it: {'; '.join(whys)}"
                out.update({k.name: why for k in a.knobs()})
        return out

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        """Apply to every actuator even if one fails; failures are raised together after.

        The first apply (and the first after a restore) writes the restore record first.
        Running out of descriptors then is retried on the next apply; anything else leaves
        the clocks alone for good (no record, no guarantee after a SIGKILL).
        """
        if self._unrecordable is not None:
            return
        if self.record is not None and not self._recorded:
            clocks = self.original_clocks()
            try:
                if clocks:
                    self.record.write(clocks)
            except OSError as exc:
                code = errno.errorcode.get(exc.errno or 0, "EIO")
                why = f"cannot write the restore record {self.record.path} ({exc.strerror or exc})"
                if code in TRANSIENT_ERRNOS:
                    err = TransientDeviceError(f"{why}; clocks left as they are until it can")
                    err.errno_name = code
                    raise err from exc
                self._unrecordable = (
                    f"{code}: {why}; the clocks are left alone: give --restore-dir a writable "
                    "folder"
                )
                log.error("%s", self._unrecordable)
                return
            self._recorded = True
        errors: list[DeviceError] = []
        for a in self._active():
            try:
                a.apply(values, governed)
            except DeviceError as exc:
                errors.append(exc)
        if errors:
            transient = all(isinstance(e, TransientDeviceError) for e in errors)
            kind: type[DeviceError] = TransientDeviceError if transient else DeviceError
            failed = kind("; ".join(str(e) for e in errors))
            failed.errno_name = errors[0].errno_name
            raise failed

    def current(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for a in self._active():
            merged.update(a.current())
        return merged

    def restore(self) -> None:
        """Restore every actuator, even when one raises; then raise what failed.

        With a record, each clock that did not go back stays in it (and nothing else), the
        clocks held since the start are tried again, and the failure is logged once
        (``reported``): exit paths need not say it again.
        """
        errors, remaining = [], []
        for a in self._active():
            try:
                a.restore()
            except Exception as exc:  # the others must still be restored
                errors.append(f"{type(a).__name__}: {exc}")
                remaining += self._unrestored(a)
        if self.record is None or self._unrecordable is not None:
            if errors:
                raise DeviceError("restore incomplete: " + "; ".join(errors))
            return
        remaining += self._retry_held()
        if remaining:
            self._keep(remaining)
        else:
            self.record.remove()  # every clock is back: nothing left for a later start to do
        self._recorded = False
        if errors or remaining:
            if not remaining:  # failed, yet every clock reads as recorded: say what failed
                raise DeviceError("restore incomplete: " + "; ".join(errors))
            err = IncompleteRestoreError([], remaining, self.record.path)
            if str(err) not in self._reported:
                self._reported.add(str(err))
                log.error("%s", err)
            err.reported = True
            raise err

    def _unrestored(self, actuator: Actuator) -> list[Unrestored]:
        """The clocks of a failed ``actuator`` still not as recorded, each with its own error.

        Each is tried once more on its own (only differing files are written), so the error
        names that clock's files and errno rather than the whole actuator's.
        """
        if self.record is None:
            return []
        out = []
        for clock in actuator.original_clocks():
            try:
                put_clock(self.record.root, clock)
            except DeviceError as exc:
                out.append(Unrestored(clock, exc))
        return out

    def _retry_held(self) -> list[Unrestored]:
        """Try again the clocks a dead process left; the ones that go back are done with."""
        assert self.record is not None
        still = []
        for u in self._held:
            try:
                put_clock(self.record.root, u.clock)
            except DeviceError as exc:
                still.append(Unrestored(u.clock, exc))
            else:
                log.warning("put back at last: %s", u.clock.describe())
        self._held = still
        return still

    def _keep(self, remaining: list[Unrestored]) -> None:
        assert self.record is not None
        try:
            self.record.write([u.clock for u in remaining])
        except OSError as exc:
            log.error("cannot rewrite the restore record %s: %s", self.record.path, exc)

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
    # One already reported (and kept in the restore record) is not said twice.
    try:
        actuator.restore()
    except DeviceError as err:
        if err.reported:
            return
        if exc is None:
            raise
        log.error("restore failed while handling %s: %s", type(exc).__name__, err)
    except Exception:
        if exc is None:
            raise
        log.exception("restore failed while handling %s", type(exc).__name__)


def _safe_restore(actuator: Actuator, why: str) -> None:
    try:
        actuator.restore()
        log.info("clocks restored (%s)", why)
    except DeviceError as err:
        if not err.reported:
            log.error("restore on %s failed: %s", why, err)
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
