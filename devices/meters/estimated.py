"""A last-resort energy estimate from CPU utilisation when no power sensor can be read.

P = idle + (TDP − idle) × utilisation is a crude linear model: it ignores frequency,
voltage, memory and accelerators, so it is only good for relative comparisons on one box.
The meter says so (``estimated = True``) and every report shows that flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from devices.meters.sampling import SampledPowerMeter

#: TDP assumed when none is given: a typical edge/laptop SoC envelope.
DEFAULT_TDP_W = 15.0
#: Idle power as a fraction of TDP when none is given (a rough guess for modern SoCs).
DEFAULT_IDLE_FRACTION = 0.2


class CpuUtilization:
    """Whole-machine busy fraction (0..1) between successive calls, from ``psutil.cpu_times``.

    It keeps its own previous sample rather than using ``psutil.cpu_percent(None)``, whose
    "since last call" state is shared by the whole process and would be disturbed by any
    other caller.
    """

    def __init__(self) -> None:
        import psutil  # a project dependency, imported here so the module loads without it

        self._cpu_times = psutil.cpu_times
        self._prev = self._busy_total()

    def _busy_total(self) -> tuple[float, float]:
        t = self._cpu_times()
        fields = t._asdict()
        # guest time is already counted in user/nice on Linux.
        total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
        idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
        return total - idle, total

    def __call__(self) -> float:
        busy, total = self._busy_total()
        prev_busy, prev_total = self._prev
        self._prev = (busy, total)
        d_total = total - prev_total
        if d_total <= 0:
            return 0.0
        return min(1.0, max(0.0, (busy - prev_busy) / d_total))


class EstimatedCpuMeter(SampledPowerMeter):
    """Integrates ``idle_w + (tdp_w - idle_w) * utilisation`` sampled at ``rate_hz``.

    ``read_util`` returns utilisation in 0..1 (values outside are clamped); by default the
    machine-wide CPU busy fraction since the previous sample.
    """

    def __init__(
        self,
        tdp_w: float = DEFAULT_TDP_W,
        idle_w: float | None = None,
        rate_hz: float = 10.0,
        read_util: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        if tdp_w <= 0:
            raise ValueError(f"tdp_w must be > 0, got {tdp_w}")
        idle = tdp_w * DEFAULT_IDLE_FRACTION if idle_w is None else float(idle_w)
        if not 0 <= idle <= tdp_w:
            raise ValueError(f"idle_w must be within [0, tdp_w={tdp_w}], got {idle}")
        self.tdp_w = float(tdp_w)
        self.idle_w = idle
        self._util = read_util if read_util is not None else CpuUtilization()
        super().__init__(
            self._estimate_watts,
            rate_hz=rate_hz,
            clock=clock,
            source="estimate:cpu-util×TDP",
            estimated=True,
            start=start,
        )

    def _estimate_watts(self) -> float:
        util = min(1.0, max(0.0, float(self._util())))
        return self.idle_w + (self.tdp_w - self.idle_w) * util
