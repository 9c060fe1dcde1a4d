"""Optional back-end that delegates measurement to Zeus (``pip install zeus-ml``).

Useful where Zeus already knows the hardware (GPUs through NVML, CPUs through RAPL, Jetson
rails) and a deployment standardises on it. Zeus measures windows (begin/end), not a
running total, so the meter keeps one window open and, on each read, closes it and opens
the next, adding the closed window's energy to the total. The few microseconds between
closing one window and opening the next are not counted.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Any

from devices.base import DeviceError, PowerMeter

_WINDOW = "ecoserve-meter"


def load_zeus_monitor_module(zeus_module: Any = None) -> Any:
    """``zeus.monitor`` (imported only when asked for), or a fake passed in by tests."""
    if zeus_module is not None:
        return zeus_module
    try:
        return importlib.import_module("zeus.monitor")
    except ImportError as exc:
        raise DeviceError(
            "the zeus meter needs Zeus: install zeus-ml (pip install zeus-ml)"
        ) from exc


class ZeusMeter(PowerMeter):
    """Cumulative energy from a ``ZeusMonitor`` (GPUs and/or CPUs chosen by index)."""

    estimated = False

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        cpu_indices: Sequence[int] | None = None,
        zeus_module: Any = None,
    ) -> None:
        monitor_mod = load_zeus_monitor_module(zeus_module)
        kwargs: dict[str, Any] = {}
        if gpu_indices is not None:
            kwargs["gpu_indices"] = list(gpu_indices)
        if cpu_indices is not None:
            kwargs["cpu_indices"] = list(cpu_indices)
        try:
            self._monitor = monitor_mod.ZeusMonitor(**kwargs)
        except Exception as exc:  # Zeus raises its own types for "no GPU/CPU found"
            raise DeviceError(f"Zeus could not open a monitor: {exc}") from exc
        self.source = "zeus"
        self._lock = threading.Lock()
        self._joules = 0.0
        self._closed = False
        self._begin()

    def _begin(self) -> None:
        try:
            # No device synchronisation: a meter read must not wait for queued GPU work.
            self._monitor.begin_window(_WINDOW, sync_execution=False)
        except TypeError:  # older Zeus without the keyword
            self._monitor.begin_window(_WINDOW)

    def _end(self) -> float:
        try:
            measurement = self._monitor.end_window(_WINDOW, sync_execution=False)
        except TypeError:
            measurement = self._monitor.end_window(_WINDOW)
        return float(measurement.total_energy)

    def energy_joules(self) -> float:
        """Joules since opened: every closed window plus the one closed now."""
        with self._lock:
            if not self._closed:
                self._joules += max(0.0, self._end())
                self._begin()
            return self._joules

    def close(self) -> None:
        """Close the open window and freeze the total; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._joules += max(0.0, self._end())
            except Exception:  # closing must not fail a shutdown path
                pass
