"""A request-arrival trace: when each request reaches the server.

A trace is only arrival times. Everything a replay needs beyond that (the model, the inputs)
comes from the benchmark, so one trace can drive any model. Traces are immutable: rescaling
or cutting returns a new trace, so a trace loaded once can be shared by several replays
without one of them changing what the others see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrival times in seconds from the start of the trace, sorted ascending.

    ``duration_s`` is the length of the observation window the arrivals came from. It can
    be longer than the last arrival (a generator asked for 10 s whose last request lands at
    9.95 s still covers 10 s), which keeps the mean rate honest for sparse traces. When not
    given it is the last arrival time.

    ``source`` says where the arrivals came from (generator spec or data set, with its
    attribution and licence) so that every report built on the trace can cite it.

    Equality is identity: two traces are compared by their arrays, explicitly, where needed.
    """

    name: str
    arrivals: np.ndarray
    source: str = ""
    duration_s: float | None = None

    def __post_init__(self) -> None:
        arrivals = np.array(self.arrivals, dtype=np.float64, copy=True).reshape(-1)
        if arrivals.size and not np.all(np.isfinite(arrivals)):
            raise ValueError(f"trace {self.name!r}: arrival times must be finite")
        if arrivals.size and arrivals[0] < 0:
            raise ValueError(f"trace {self.name!r}: arrival times must be >= 0 s")
        if arrivals.size > 1 and np.any(np.diff(arrivals) < 0):
            raise ValueError(f"trace {self.name!r}: arrival times must be sorted")
        # Read-only so that a trace shared between replays cannot be edited in place.
        arrivals.flags.writeable = False
        object.__setattr__(self, "arrivals", arrivals)
        last = float(arrivals[-1]) if arrivals.size else 0.0
        duration = last if self.duration_s is None else float(self.duration_s)
        if duration < last:
            raise ValueError(
                f"trace {self.name!r}: duration {duration:g} s is shorter than the last "
                f"arrival at {last:g} s"
            )
        object.__setattr__(self, "duration_s", duration)

    def __len__(self) -> int:
        return int(self.arrivals.size)

    @property
    def duration(self) -> float:
        """Seconds covered by the trace (``duration_s``, always set once constructed)."""
        assert self.duration_s is not None
        return self.duration_s

    @property
    def mean_rate(self) -> float:
        """Mean requests per second over the trace (NaN when it covers no time)."""
        if self.duration <= 0:
            return float("nan")
        return len(self) / self.duration

    def rescaled(self, time_scale: float | None = None, rate: float | None = None) -> Trace:
        """The same arrival pattern on a stretched or compressed clock.

        ``time_scale`` multiplies every time (2.0 = twice as slow). ``rate`` asks for a
        target mean rate in requests per second and scales time to reach it. Scaling time,
        rather than thinning or duplicating requests, keeps the trace's burst structure:
        the shape of the load is the real one, only its speed changes.
        """
        if (time_scale is None) == (rate is None):
            raise ValueError("rescaled() takes exactly one of time_scale= or rate=")
        if rate is not None:
            if not rate > 0:
                raise ValueError(f"target rate must be > 0 requests/s, got {rate!r}")
            current = self.mean_rate
            if not current > 0:
                raise ValueError(
                    f"trace {self.name!r} has no mean rate to rescale "
                    f"({len(self)} requests over {self.duration:g} s)"
                )
            time_scale = current / rate
        assert time_scale is not None
        if not (time_scale > 0 and np.isfinite(time_scale)):
            raise ValueError(f"time_scale must be a positive finite number, got {time_scale!r}")
        return Trace(
            name=self.name,
            arrivals=self.arrivals * time_scale,
            source=self.source,
            duration_s=self.duration * time_scale,
        )

    def cut(self, duration_s: float) -> Trace:
        """The first ``duration_s`` seconds (never longer than the trace itself)."""
        if not duration_s >= 0:
            raise ValueError(f"cut duration must be >= 0 s, got {duration_s!r}")
        end = min(float(duration_s), self.duration)
        keep = int(np.searchsorted(self.arrivals, end, side="left"))
        if end == self.duration:
            keep = len(self)
        return Trace(
            name=self.name, arrivals=self.arrivals[:keep], source=self.source, duration_s=end
        )

    def describe(self) -> str:
        """One line for logs and reports."""
        return (
            f"{self.name}: {len(self)} requests over {self.duration:.1f} s "
            f"(mean {self.mean_rate:.2f} req/s)"
        )
