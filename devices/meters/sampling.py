"""Turning a power reading (watts, now) into cumulative energy (joules since opened).

Sensors such as the Jetson INA3221 or ``nvmlDeviceGetPowerUsage`` report instantaneous
power, not energy. A batch on an edge board lasts tens of milliseconds, so the power has to
be sampled far faster than batches are timed, in the background, and integrated. The
trapezoidal rule is exact for power that changes linearly between samples, which is the
best one can do without knowing what happened between them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from devices.base import DeviceError, PowerMeter

#: Below this, the integral misses bursts shorter than a typical edge batch (~10–50 ms).
MIN_RATE_HZ = 100.0


class SampledPowerMeter(PowerMeter):
    """Integrates ``read_watts()`` sampled by a daemon thread at ``rate_hz``.

    ``energy_joules()`` returns the trapezoidal integral up to the last sample plus the
    last reading held until now, so a caller that reads the meter right after a burst does
    not lose the interval since the last sample. Because that tail is an extrapolation, a
    later sample can show the power fell meanwhile; the reported total is then held (never
    decreases) until the integral catches up, an error bounded by one sample period.

    With ``rate_hz=0`` or ``start=False`` no thread runs: call ``sample_once(now)`` with a
    fake clock for exact, deterministic integration in tests or replay.

    A failed background read is counted (``errors``, ``last_error``) and skipped; the next
    good sample bridges the gap linearly. Reads failing for 10 sample periods in a row make
    ``energy_joules`` raise: a vanished sensor is reported, not extrapolated. The first reading is taken in the constructor, so
    a sensor that cannot be read at all fails loudly when the meter is opened.
    """

    def __init__(
        self,
        read_watts: Callable[[], float],
        rate_hz: float = MIN_RATE_HZ,
        clock: Callable[[], float] = time.monotonic,
        source: str = "sampled",
        estimated: bool = False,
        start: bool = True,
    ) -> None:
        if rate_hz < 0:
            raise ValueError(f"rate_hz must be >= 0, got {rate_hz}")
        self.source = source
        self.estimated = estimated
        self.rate_hz = float(rate_hz)
        self.errors = 0
        self.last_error: BaseException | None = None
        self._failing = False  # the latest background read failed
        self._read_watts = read_watts
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed_joules: float | None = None
        first = float(read_watts())
        self._last_t = clock()
        self._last_w = first
        self._joules = 0.0
        self._reported = 0.0
        self._thread: threading.Thread | None = None
        if start and rate_hz > 0:
            self._thread = threading.Thread(
                target=self._run, name=f"power-sampler[{source}]", daemon=True
            )
            self._thread.start()

    @property
    def last_watts(self) -> float:
        """The most recent reading, for display (e.g. a live power column)."""
        with self._lock:
            return self._last_w

    def sample_once(self, now: float | None = None) -> float:
        """Take one reading at ``now`` (default: the clock) and integrate up to it.

        Returns the watts read. A ``now`` earlier than the previous sample contributes
        no energy (clocks must not run backwards; this guards against a misused fake one).
        """
        watts = float(self._read_watts())
        t = self._clock() if now is None else now
        with self._lock:
            if self._closed_joules is not None:
                return watts
            dt = t - self._last_t
            if dt > 0:
                self._joules += 0.5 * (self._last_w + watts) * dt
                self._last_t = t
            self._last_w = watts
        return watts

    def energy_joules(self) -> float:
        """Joules since opened: the integral to the last sample plus the tail to now.

        Raises DeviceError (see :meth:`check`) once the sensor has stopped answering, rather
        than extrapolating its last reading forever.
        """
        if self._closed_joules is None:
            self.check()
        now = self._clock()
        with self._lock:
            if self._closed_joules is not None:
                return self._closed_joules
            return self._total_locked(now)

    def close(self) -> None:
        """Stop the sampler and freeze the total; safe to call more than once."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, 5.0 / self.rate_hz) if self.rate_hz else 1.0)
        now = self._clock()
        with self._lock:
            if self._closed_joules is None:
                self._closed_joules = self._total_locked(now)

    def check(self) -> None:
        """Raise when reads have failed for 10+ sample periods, so a dead sensor is not silent.

        Until then ``energy_joules`` holds the last good reading, which would otherwise
        quietly extrapolate forever.
        """
        if self._failing and self.last_error is not None:
            with self._lock:
                stale = self._clock() - self._last_t
            if self.rate_hz and stale > 10.0 / self.rate_hz:
                raise DeviceError(
                    f"{self.source}: no good power reading for {stale:.2f} s "
                    f"({self.errors} failed reads; last: {self.last_error})"
                )

    def _total_locked(self, now: float) -> float:
        """Integral plus held-last-reading tail, clamped so the total never decreases."""
        tail = self._last_w * max(0.0, now - self._last_t)
        self._reported = max(self._reported, self._joules + tail)
        return self._reported

    def _run(self) -> None:
        """Sample on a fixed grid (not sleep-after-work) so the rate does not drift low."""
        period = 1.0 / self.rate_hz
        next_at = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.sample_once()
            except Exception as exc:  # a transient read failure must not kill the meter
                self.errors += 1
                self.last_error = exc
                self._failing = True
            else:
                self._failing = False
            next_at += period
            now = time.monotonic()
            if next_at < now:  # fell behind (machine stalled): skip, don't burst-catch-up
                next_at = now + period
