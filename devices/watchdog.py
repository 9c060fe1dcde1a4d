"""Hands the clocks back to the OS when the engine stops making progress.

Signal handlers and ``atexit`` cover a process that exits; they do not cover one that
hangs (a stuck model, a deadlock) with the CPU and GPU pinned, possibly at their lowest
frequencies. The engine calls ``feed()`` after each batch or window; if ``timeout_s`` pass
without one, the watchdog calls ``actuator.restore()`` once, which returns every knob to
the governors the box had at start, and logs it. The next ``feed()`` re-arms it; the
engine's next ``apply`` pins again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from devices.base import Actuator, DeviceError

log = logging.getLogger(__name__)


class Watchdog:
    """A daemon thread that restores ``actuator`` after ``timeout_s`` without a ``feed()``.

    ``clock`` is injectable and ``check()`` runs one evaluation, so tests drive it with a
    fake clock and no thread. ``poll_s`` (default: a quarter of the timeout, at most 1 s)
    bounds how late the restore can come.
    """

    def __init__(
        self,
        actuator: Actuator,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        poll_s: float | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.actuator = actuator
        self.timeout_s = timeout_s
        self.clock = clock
        self.poll_s = poll_s if poll_s is not None else min(timeout_s / 4, 1.0)
        self.fired_count = 0
        self._lock = threading.Lock()
        self._last_feed = clock()
        self._armed = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        """Start the background thread (once); returns self."""
        if self._thread is None:
            self.feed()
            self._thread = threading.Thread(target=self._run, name="ecoserve-watchdog", daemon=True)
            self._thread.start()
        return self

    def feed(self) -> None:
        """The engine made progress: push the deadline back and re-arm."""
        with self._lock:
            self._last_feed = self.clock()
            self._armed = True

    def check(self) -> bool:
        """Restore now if the deadline has passed and it has not fired since the last feed.

        Returns True when it fired on this call.
        """
        with self._lock:
            starved = self.clock() - self._last_feed
            if not self._armed or starved < self.timeout_s:
                return False
            self._armed = False
            self.fired_count += 1
        log.warning(
            "no progress for %.1f s (timeout %.1f s): handing the clocks back to the governors",
            starved,
            self.timeout_s,
        )
        try:
            self.actuator.restore()
        except DeviceError as exc:
            if not exc.reported:  # a reported one is logged and kept in the restore record
                log.error("watchdog restore failed: %s", exc)
        except Exception:
            log.exception("watchdog restore failed")
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; does not restore (the owner restores on its own exit path)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()
