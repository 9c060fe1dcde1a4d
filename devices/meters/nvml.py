"""NVIDIA GPU energy through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

Volta and newer GPUs keep a hardware energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
mJ since the driver loaded), which is exact and needs no sampling. Older GPUs only report
power (``nvmlDeviceGetPowerUsage``, mW; a 1 s average on Ampere and newer), which is then
sampled and integrated like any other power sensor. Jetson boards have no usable NVML; use
the INA3221 meter there.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from devices.base import DeviceError, PowerMeter
from devices.meters.sampling import MIN_RATE_HZ, SampledPowerMeter

_INSTALL_HINT = "install nvidia-ml-py (pip install 'ecoserve[nvml]')"


def load_nvml(nvml_module: Any = None) -> Any:
    """The ``pynvml`` module (imported only when needed), or the fake passed in by tests."""
    if nvml_module is not None:
        return nvml_module
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise DeviceError(f"NVML is not available: {_INSTALL_HINT}") from exc


def _unsupported(nvml: Any, exc: BaseException) -> bool:
    """True when NVML says the call does not exist or this GPU cannot do it."""
    names = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
    classes = tuple(c for c in (getattr(nvml, n, None) for n in names) if isinstance(c, type))
    if classes and isinstance(exc, classes):
        return True
    codes = {
        getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3),
        getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13),
    }
    return getattr(exc, "value", None) in codes


def _nvml_error(nvml: Any) -> type[BaseException]:
    err = getattr(nvml, "NVMLError", None)
    return err if isinstance(err, type) and issubclass(err, BaseException) else Exception


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlMeter(PowerMeter):
    """Energy of GPU ``index``: the hardware counter where supported, else sampled power.

    ``method`` is "total-energy" or "power-sampling"; ``source`` says which, e.g.
    ``nvml:0:total-energy``. NVML is initialised on open and shut down on close (NVML
    reference-counts init/shutdown, so other NVML users in the process are unaffected).
    """

    estimated = False

    def __init__(
        self,
        index: int = 0,
        nvml_module: ModuleType | Any = None,
        rate_hz: float = MIN_RATE_HZ,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        nvml = load_nvml(nvml_module)
        self._nvml = nvml
        error = _nvml_error(nvml)
        try:
            nvml.nvmlInit()
        except error as exc:
            raise DeviceError(f"NVML could not start (no NVIDIA driver/GPU?): {exc}") from exc
        self._open = True
        self._lock = threading.Lock()
        self._sampler: SampledPowerMeter | None = None
        try:
            count = int(nvml.nvmlDeviceGetCount())
            if not 0 <= index < count:
                raise DeviceError(f"no NVIDIA GPU {index}: NVML sees {count} GPU(s)")
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self.gpu_name = _text(nvml.nvmlDeviceGetName(self._handle))
            self.index = index
            try:
                self._start_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
                self.method = "total-energy"
            except error as exc:
                if not _unsupported(nvml, exc):
                    raise
                self.method = "power-sampling"
                self._sampler = SampledPowerMeter(
                    self._read_watts,
                    rate_hz=rate_hz,
                    clock=clock,
                    source=f"nvml:{index}:power",
                    start=start,
                )
        except error as exc:
            self._shutdown()
            raise DeviceError(f"NVML GPU {index}: {exc}") from exc
        except BaseException:
            self._shutdown()
            raise
        self.source = f"nvml:{index}:{'total-energy' if self._sampler is None else 'power'}"
        self._reported = 0.0
        self._final: float | None = None

    @property
    def sampler(self) -> SampledPowerMeter | None:
        """The power sampler when the GPU has no energy counter (``sample_once`` for tests)."""
        return self._sampler

    def _read_watts(self) -> float:
        return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0

    def energy_joules(self) -> float:
        """Joules since opened; the hardware counter is 64-bit mJ, so it does not wrap."""
        if self._sampler is not None:
            return self._sampler.energy_joules()
        with self._lock:
            if self._final is not None:
                return self._final
            try:
                now_mj = float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            except _nvml_error(self._nvml) as exc:
                raise DeviceError(f"NVML GPU {self.index}: {exc}") from exc
            # A driver reload resets the counter; never let the total go backwards.
            self._reported = max(self._reported, (now_mj - self._start_mj) / 1000.0)
            return self._reported

    def close(self) -> None:
        """Stop sampling, freeze the total and shut NVML down; idempotent."""
        if self._sampler is not None:
            self._sampler.close()
        elif self._open and self._final is None:
            try:
                self._final = self.energy_joules()
            except DeviceError:
                self._final = self._reported
        self._shutdown()

    def _shutdown(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except _nvml_error(self._nvml):
                pass


def count_gpus(nvml_module: Any = None) -> list[str]:
    """Names of the GPUs NVML sees (for probing); raises DeviceError when NVML is absent."""
    nvml = load_nvml(nvml_module)
    error = _nvml_error(nvml)
    try:
        nvml.nvmlInit()
    except error as exc:
        raise DeviceError(f"NVML could not start (no NVIDIA driver/GPU?): {exc}") from exc
    try:
        return [
            _text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(int(nvml.nvmlDeviceGetCount()))
        ]
    except error as exc:
        raise DeviceError(f"NVML: {exc}") from exc
    finally:
        try:
            nvml.nvmlShutdown()
        except error:
            pass
