"""Power meters: one back-end per sensor family, a probe for ``ecoserve devices``, and specs.

A meter spec is what a user writes in config or on the command line:

``auto``                    INA3221 if present, else RAPL if readable, else NVML, else an
                            estimate from CPU utilisation × 15 W (flagged as estimated)
``ina3221``                 Jetson board total (VDD_IN / POM_5V_IN, or the first chip's rails)
``ina3221:RAIL[,RAIL]``     chosen Jetson rails, summed
``rapl``                    every x86 package (RAPL), wraparound handled
``rapl:ZONE[,ZONE]``        chosen RAPL zones by name ("dram") or directory ("intel-rapl:0:2")
``nvml[:INDEX]``            an NVIDIA GPU (default 0)
``estimate[:TDP_W]``        CPU utilisation × TDP (default 15 W); always available, never exact
``zeus``                    delegate to Zeus (needs ``zeus-ml``)

Sysfs back-ends read everything under ``root`` ("/" on a real box, a fake tree in tests).
NVML and Zeus talk to the driver, so they always see the real machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from devices.base import DeviceError, PowerMeter
from devices.meters._read import read_number, read_text
from devices.meters.estimated import DEFAULT_TDP_W, EstimatedCpuMeter
from devices.meters.ina3221 import Ina3221Meter, Rail, default_rails, find_ina3221_rails
from devices.meters.nvml import NvmlMeter, count_gpus
from devices.meters.rapl import (
    RAPL_PERMISSION_FIX,
    RaplMeter,
    RaplZone,
    default_zones,
    find_rapl_zones,
)
from devices.meters.sampling import SampledPowerMeter
from devices.meters.zeus_backend import ZeusMeter

__all__ = [
    "VALID_SPECS",
    "EstimatedCpuMeter",
    "Ina3221Meter",
    "NvmlMeter",
    "Rail",
    "RaplMeter",
    "RaplZone",
    "SampledPowerMeter",
    "ZeusMeter",
    "find_ina3221_rails",
    "find_rapl_zones",
    "open_meter",
    "probe_meters",
]

_log = logging.getLogger(__name__)

#: Every accepted spec form, as shown in the error for a bad one.
VALID_SPECS = (
    "auto",
    "ina3221",
    "ina3221:RAIL[,RAIL]",
    "rapl",
    "rapl:ZONE[,ZONE]",
    "nvml[:INDEX]",
    "estimate[:TDP_W]",
    "zeus",
)


def _bad_spec(spec: str, why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(f"unknown meter spec {spec!r}{detail}; valid: {', '.join(VALID_SPECS)}")


def _names(arg: str) -> list[str]:
    return [n.strip() for n in arg.split(",") if n.strip()]


def open_meter(
    spec: str = "auto",
    root: str | os.PathLike[str] = "/",
    *,
    nvml_module: Any = None,
    zeus_module: Any = None,
) -> PowerMeter:
    """Open the meter a spec names (see the module docstring for the forms).

    Raises ValueError for a malformed spec and DeviceError (or PermissionDeniedError) when
    the named sensor is absent or unreadable; only ``auto`` falls back silently-but-logged.
    ``nvml_module``/``zeus_module`` replace the real libraries (tests).
    """
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    arg = arg.strip()
    if kind == "auto" and not sep:
        return _open_auto(root, nvml_module)
    if kind == "ina3221":
        if sep and not _names(arg):
            raise _bad_spec(spec, "no rail named after 'ina3221:'")
        return Ina3221Meter(root, rails=_names(arg) if sep else None)
    if kind == "rapl":
        if sep and not _names(arg):
            raise _bad_spec(spec, "no zone named after 'rapl:'")
        return RaplMeter(root, zones=_names(arg) if sep else None)
    if kind == "nvml":
        index = 0
        if sep:
            try:
                index = int(arg)
            except ValueError:
                raise _bad_spec(spec, "the GPU index must be an integer") from None
            if index < 0:
                raise _bad_spec(spec, "the GPU index must be >= 0")
        return NvmlMeter(index, nvml_module=nvml_module)
    if kind == "estimate":
        tdp = DEFAULT_TDP_W
        if sep:
            try:
                tdp = float(arg.lower().removesuffix("w"))
            except ValueError:
                raise _bad_spec(spec, "the TDP must be a number of watts") from None
            if not tdp > 0:
                raise _bad_spec(spec, "the TDP must be > 0 W")
        return EstimatedCpuMeter(tdp)
    if kind == "zeus" and not sep:
        return ZeusMeter(zeus_module=zeus_module)
    raise _bad_spec(spec)


def _open_auto(root: str | os.PathLike[str], nvml_module: Any) -> PowerMeter:
    """The most direct measurement available, falling back to a labelled estimate."""
    reasons: list[str] = []
    for label, opener in (
        ("ina3221", lambda: Ina3221Meter(root)),
        ("rapl", lambda: RaplMeter(root)),
        ("nvml", lambda: NvmlMeter(0, nvml_module=nvml_module)),
    ):
        try:
            return opener()
        except DeviceError as exc:
            reasons.append(f"{label}: {exc}")
    _log.warning(
        "no power sensor readable; energy is ESTIMATED from CPU utilisation x %.0f W TDP "
        "(set meter to 'estimate:TDP_W' for your CPU). Tried: %s",
        DEFAULT_TDP_W,
        "; ".join(reasons),
    )
    return EstimatedCpuMeter(DEFAULT_TDP_W)


def _entry(
    name: str,
    kind: str,
    path: str,
    readable: bool,
    reason: str,
    spec: str,
    estimated: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "path": path,
        "readable": readable,
        "reason": reason,
        "estimated": estimated,
        "spec": spec,
    }


def _probe_ina3221(root: Path) -> list[dict[str, Any]]:
    try:
        rails = find_ina3221_rails(root)
    except DeviceError as exc:
        return [_entry("-", "ina3221", str(root), False, str(exc), "ina3221")]
    if not rails:
        where = str(root / "sys/bus/i2c/drivers")
        return [_entry("-", "ina3221", where, False, "no INA3221 power monitor found", "")]
    chosen = default_rails(rails)
    out = []
    for rail in rails:
        try:
            rail.read_mw()
            readable, reason = True, ""
        except DeviceError as exc:
            readable, reason = False, str(exc)
        if readable and rail in chosen:
            reason = "board total (default)" if len(chosen) == 1 else "summed into the default"
        out.append(
            _entry(
                rail.label,
                "ina3221",
                str(rail.directory),
                readable,
                reason,
                f"ina3221:{rail.label}",
            )
        )
    return out


def _probe_rapl(root: Path) -> list[dict[str, Any]]:
    try:
        zones = find_rapl_zones(root)
    except DeviceError as exc:
        return [_entry("-", "rapl", str(root / "sys/class/powercap"), False, str(exc), "rapl")]
    if not zones:
        where = str(root / "sys/class/powercap")
        return [_entry("-", "rapl", where, False, "no RAPL zones found", "")]
    chosen = default_zones(zones)
    out = []
    for zone in zones:
        try:
            read_number(zone.energy_path, read_text, RAPL_PERMISSION_FIX)
            readable = True
            if zone in chosen:
                reason = "default" if len(chosen) == 1 else "summed into the default"
            elif zone.subzone:
                reason = "part of a package"
            else:
                reason = "platform zone (contains the packages)"
        except DeviceError as exc:
            readable, reason = False, str(exc)
        out.append(
            _entry(zone.name, "rapl", str(zone.path), readable, reason, f"rapl:{zone.zone_id}")
        )
    return out


def _probe_nvml(nvml_module: Any) -> list[dict[str, Any]]:
    try:
        names = count_gpus(nvml_module)
    except DeviceError as exc:
        return [_entry("-", "nvml", "", False, str(exc), "")]
    if not names:
        return [_entry("-", "nvml", "", False, "NVML sees no GPU", "")]
    return [
        _entry(f"GPU{i} {name}", "nvml", f"nvml:{i}", True, "", f"nvml:{i}")
        for i, name in enumerate(names)
    ]


def _probe_zeus(zeus_module: Any) -> dict[str, Any]:
    if zeus_module is not None or importlib.util.find_spec("zeus") is not None:
        return _entry("zeus", "zeus", "", True, "", "zeus")
    return _entry("zeus", "zeus", "", False, "zeus-ml not installed (pip install zeus-ml)", "")


def probe_meters(
    root: str | os.PathLike[str] = "/",
    *,
    nvml_module: Any = None,
    zeus_module: Any = None,
) -> list[dict[str, Any]]:
    """What each back-end can see, for ``ecoserve devices``; opens nothing for long.

    One dict per sensor (INA3221 rail, RAPL zone, GPU) with ``name``, ``kind``, ``path``,
    ``readable``, ``reason`` (why not, or how the default uses it), ``estimated`` and the
    ``spec`` that opens it; a back-end that finds nothing gets one unreadable entry saying
    so, so the user sees what was looked for. The CPU estimate is always last.
    """
    base = Path(root)
    entries = _probe_ina3221(base) + _probe_rapl(base) + _probe_nvml(nvml_module)
    entries.append(_probe_zeus(zeus_module))
    entries.append(
        _entry(
            "cpu-util×TDP",
            "estimate",
            "",
            True,
            f"fallback only: CPU utilisation × TDP ({DEFAULT_TDP_W:g} W unless set)",
            "estimate",
            estimated=True,
        )
    )
    return entries
