"""A change-point test on the arrival process: has the load a tuner tuned for gone?

A raw threshold on the window's arrival rate ("react when it moves by 30%") fails both ways:
on bursty traffic (the Azure traces) a window's rate swings by more than that with no change
of load at all, so the tuner forgets what it learned every few windows; on smooth traffic a
real change smaller than the threshold is never seen. The test here is a two-sided CUSUM on
the log of each window's arrival rate, in units of that series' own noise:

- the noise is estimated online, robustly, from the median absolute difference of successive
  windows (a change point is one outlier among them and barely moves the median), and is
  never taken below the Poisson floor ``1 / sqrt(arrivals)`` of a window, so a bursty process
  needs a proportionally larger shift to raise an alarm than a smooth one;
- the level is the mean log rate since the last change; each window adds its standardised
  excess over ``drift`` to one of two sums, and a sum above ``threshold`` is an alarm (Page's
  test). A step of the rate by a factor of three is tens of noise units on a steady load and
  raises the alarm in the first window after it; the threshold sets how long a smaller or
  noisier shift must last first;
- after an alarm the new level's mean restarts from the windows since the alarming sum last
  left zero, the sums' estimate of when the change happened; the window after an alarm is
  not tested but restarts the level alone, since the alarming window usually straddles the
  change and mixes both rates (``settling`` says when the level is that fresh).

Sans-IO and tiny: a tuner feeds it each window's rate and arrival count as it is told them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any


class LoadChangeTest:
    """Two-sided CUSUM on log arrival rate with an online, robust noise scale."""

    #: The level's mean is over at most this many of its latest windows (bounded memory).
    LEVEL_WINDOWS = 128

    def __init__(
        self,
        drift: float = 0.5,
        threshold: float = 5.0,
        noise_windows: int = 32,
        min_noise: float = 0.02,
    ) -> None:
        if drift < 0 or threshold <= 0:
            raise ValueError(f"drift must be >= 0 and threshold > 0, got {drift}, {threshold}")
        if noise_windows < 4:
            raise ValueError(f"noise_windows must be >= 4, got {noise_windows}")
        self.drift = float(drift)
        self.threshold = float(threshold)
        self.noise_windows = int(noise_windows)
        self.min_noise = float(min_noise)
        self.reset()

    def reset(self) -> None:
        self._steps: deque[float] = deque(maxlen=self.noise_windows)
        self._last: float | None = None
        # log rates of the current level's latest windows (its mean is over these)
        self._level: deque[float] = deque(maxlen=self.LEVEL_WINDOWS)
        self._up = 0.0
        self._down = 0.0
        self._up_run = 0  # windows since each sum last left zero
        self._down_run = 0
        self._settle = False  # the next window restarts the level (it follows an alarm)
        self.alarms = 0

    @property
    def level_rate(self) -> float | None:
        """The current level's mean arrival rate (geometric), None before any window."""
        if not self._level:
            return None
        return math.exp(sum(self._level) / len(self._level))

    @property
    def level_windows(self) -> int:
        """Windows seen since the last change (or the start)."""
        return len(self._level)

    def noise(self, arrivals: float) -> float:
        """The standard deviation of one window's log rate: robust estimate, Poisson floor."""
        floor = max(self.min_noise, 1.0 / math.sqrt(max(arrivals, 1.0)))
        if len(self._steps) < 4:
            return max(floor, 0.1)  # too few windows to trust: assume a noisy process
        steps = sorted(self._steps)
        mid = len(steps) // 2
        median = steps[mid] if len(steps) % 2 else 0.5 * (steps[mid - 1] + steps[mid])
        # a successive difference has sqrt(2) times the noise; MAD -> sigma is 1 / 0.6745
        return max(floor, median / (0.6745 * math.sqrt(2.0)))

    def observe(self, rate: float, arrivals: float) -> bool:
        """One window's arrival rate (req/s) and arrival count; True when the load changed."""
        if not (math.isfinite(rate) and rate > 0):
            return False
        x = math.log(rate)
        if self._last is not None:
            self._steps.append(abs(x - self._last))
        self._last = x
        if not self._level or self._settle:
            self._level = deque([x], maxlen=self.LEVEL_WINDOWS)
            self._settle = False
            return False
        mean = sum(self._level) / len(self._level)
        z = (x - mean) / self.noise(arrivals)
        self._level.append(x)
        self._up = max(0.0, self._up + z - self.drift)
        self._down = max(0.0, self._down - z - self.drift)
        self._up_run = self._up_run + 1 if self._up > 0 else 0
        self._down_run = self._down_run + 1 if self._down > 0 else 0
        if self._up <= self.threshold and self._down <= self.threshold:
            return False
        run = self._up_run if self._up > self.threshold else self._down_run
        recent = list(self._level)[-max(1, run) :]
        self._level = deque(recent, maxlen=self.LEVEL_WINDOWS)
        self._up = self._down = 0.0
        self._up_run = self._down_run = 0
        self._settle = True
        self.alarms += 1
        return True

    @property
    def settling(self) -> bool:
        """True between an alarm and the next window (the level rests on one mixed window)."""
        return self._settle

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self._steps),
            "last": self._last,
            "level": list(self._level),
            "up": self._up,
            "down": self._down,
            "up_run": self._up_run,
            "down_run": self._down_run,
            "settle": self._settle,
            "alarms": self.alarms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = deque((float(s) for s in state["steps"]), maxlen=self.noise_windows)
        self._last = None if state["last"] is None else float(state["last"])
        self._level = deque((float(x) for x in state["level"]), maxlen=self.LEVEL_WINDOWS)
        self._up, self._down = float(state["up"]), float(state["down"])
        self._up_run, self._down_run = int(state["up_run"]), int(state["down_run"])
        self._settle = bool(state.get("settle", False))
        self.alarms = int(state["alarms"])
