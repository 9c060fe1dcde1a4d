"""What this box offers: frequency knobs, power meters and a board guess (``ecoserve devices``).

``discover`` only reads. For each knob it reports where it lives, its values (Hz), the
governors, and whether ecoserve could write it and, if not, why: ``absent`` (no such
driver or file) or ``permission`` (with the fix). Meters are found by probes the meter
modules provide (``meter_probes``), so this module does not depend on them.

The board guess compares the tables found with ``devices.boards``: a profile is named
when a frequency table overlaps it by at least 80 % and the overall score (both tables
plus the GPU node's name) is clear; otherwise the box is ``generic``, which works the same
way, only without a known profile for the twin.

``open_sysfs_actuator`` builds the real actuator from what is found, skipping (with a
note among its warnings) a knob that is absent.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from devices.base import DeviceError
from devices.boards import PROFILES
from devices.composite import CompositeActuator
from devices.cpufreq import (
    CPUFREQ_DIR,
    CpufreqActuator,
    CpuPolicy,
    common_values_khz,
    list_policies,
    read_policies,
)
from devices.devfreq import DEVFREQ_DIR, GPU_NAMES, DevfreqActuator, find_devfreq_node, read_node
from devices.sysfs import PERMISSION_FIX, SysfsRoot
from ecoserve.core.knobs import CPU, GPU

#: Smallest table overlap (Jaccard) for a profile to be named.
MATCH_THRESHOLD = 0.8


@dataclass(frozen=True)
class MeterInfo:
    """One energy source a meter module can use, as reported by its probe."""

    name: str
    #: e.g. "ina3221-hwmon", "ina3221-iio", "rapl", "nvml", "estimate".
    kind: str
    path: str
    readable: bool
    reason: str = ""
    #: True when the figure is a model's estimate rather than a measurement.
    estimated: bool = False


MeterProbe = Callable[[SysfsRoot], list[MeterInfo]]


@dataclass(frozen=True)
class KnobInfo:
    """One frequency knob as found: values in Hz, governors, and whether it can be written."""

    name: str
    #: "cpufreq" or "devfreq".
    source: str
    path: str
    values_hz: tuple[int, ...] = ()
    #: "table" (the driver's operating points) or "range" (evenly spaced points of a range).
    value_kind: str = ""
    governors: tuple[str, ...] = ()
    governor: str = ""
    #: The limits in force now (Hz), e.g. a power mode's cap.
    min_hz: int | None = None
    max_hz: int | None = None
    pin_method: str = ""
    #: Driver, policies or device-tree name: whatever identifies the hardware.
    detail: str = ""
    writable: bool = False
    #: Empty when writable; else starts with "absent:", "permission:" or "error:".
    reason: str = ""


@dataclass
class DeviceReport:
    root: str
    board: str
    board_reason: str
    knobs: list[KnobInfo]
    meters: list[MeterInfo] = field(default_factory=list)

    def knob(self, name: str) -> KnobInfo | None:
        return next((k for k in self.knobs if k.name == name), None)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render_text(self) -> str:
        lines = [f"root   {self.root}", f"board  {self.board} ({self.board_reason})", "", "knobs"]
        for k in self.knobs:
            lines.append(f"  {k.name:<12} {k.source}  {_describe_values(k)}")
            rows = [
                ("where", f"{k.path}" + (f"  ({k.detail})" if k.detail else "")),
                ("governor", f"{k.governor}  [{' '.join(k.governors)}]" if k.governors else ""),
                ("limits", _mhz_range(k.min_hz, k.max_hz) if k.min_hz is not None else ""),
                ("pin", k.pin_method),
                ("writable", "yes" if k.writable else f"no — {k.reason}"),
            ]
            lines.extend(f"      {label:<9} {text}" for label, text in rows if text)
        lines += ["", "meters"]
        if not self.meters:
            lines.append("  (none found)")
        for m in self.meters:
            state = "readable" if m.readable else f"not readable — {m.reason}"
            est = ", estimated" if m.estimated else ""
            lines.append(f"  {m.name:<20} {m.kind}{est}  {m.path}  {state}")
        return "\n".join(lines)


def discover(
    root: SysfsRoot | str | os.PathLike[str] = "/",
    meter_probes: Sequence[MeterProbe] = (),
) -> DeviceReport:
    """Probe ``root`` (read-only) and report knobs, meters and a board guess."""
    sysfs = root if isinstance(root, SysfsRoot) else SysfsRoot(root)
    cpu = _cpu_knob(sysfs)
    gpu, gpu_names = _gpu_knob(sysfs)
    board, reason = guess_board(cpu.values_hz, gpu.values_hz, gpu_names)
    meters: list[MeterInfo] = []
    for probe in meter_probes:
        name = getattr(probe, "__name__", type(probe).__name__)
        try:
            meters.extend(probe(sysfs))
        except Exception as exc:  # a broken probe must not hide the rest of the report
            meters.append(MeterInfo(name, "error", "", False, f"probe failed: {exc}"))
    return DeviceReport(str(sysfs.root), board, reason, [cpu, gpu], meters)


def open_sysfs_actuator(
    root: SysfsRoot | str | os.PathLike[str] = "/",
    *,
    policies: Sequence[int] | None = None,
    gpu_node: str | None = None,
) -> CompositeActuator:
    """The cpufreq and devfreq actuators found under ``root``, as one.

    A knob that is absent is left out with a note in ``warnings()``; permission problems
    surface on the first write (one warning each, the knob dropped, serving continues).
    """
    sysfs = root if isinstance(root, SysfsRoot) else SysfsRoot(root)
    actuators: list[CpufreqActuator | DevfreqActuator] = []
    notes: list[str] = []
    try:
        actuators.append(CpufreqActuator(sysfs, policies))
    except DeviceError as exc:
        notes.append(f"CPU frequency knob unavailable: {exc}")
    try:
        actuators.append(DevfreqActuator(sysfs, gpu_node))
    except DeviceError as exc:
        notes.append(f"GPU frequency knob unavailable: {exc}")
    return CompositeActuator(actuators, notes)


def guess_board(
    cpu_hz: Sequence[int], gpu_hz: Sequence[int], gpu_names: Sequence[str]
) -> tuple[str, str]:
    """The profile the tables look like, with the reason; ``generic`` when none is clear."""
    best: tuple[float, str, str] | None = None
    for profile in PROFILES.values():
        cpu = _overlap(cpu_hz, profile.cpu_freqs_hz)
        gpu = _overlap(gpu_hz, profile.gpu_freqs_hz)
        named = [n for n in gpu_names if n and n in profile.gpu_node_names]
        if max(cpu, gpu) < MATCH_THRESHOLD:
            continue
        score = 2 * cpu + 2 * gpu + (1 if named else 0)
        why = f"CPU table {cpu:.0%} match, GPU table {gpu:.0%} match"
        if named:
            why += f", GPU node {named[0]}"
        if best is None or score > best[0]:
            best = (score, profile.name, why)
    if best is None or best[0] < 3:
        return "generic", "no board profile matches the frequency tables"
    return best[1], best[2]


# -- knobs -------------------------------------------------------------------------------


def _cpu_knob(root: SysfsRoot) -> KnobInfo:
    where = root.show(CPUFREQ_DIR)
    if not list_policies(root):
        return KnobInfo(CPU, "cpufreq", where, reason="absent: no cpufreq policies")
    policies, skipped = read_policies(root)
    try:
        if not policies:
            raise DeviceError("; ".join(skipped))
        values_khz, kind = common_values_khz(policies)
    except DeviceError as exc:
        return KnobInfo(CPU, "cpufreq", where, reason=f"error: {exc}")
    first = policies[0]
    methods = sorted({p.pin_method for p in policies})
    drivers = sorted({p.driver for p in policies if p.driver})
    detail = f"policies {','.join(str(p.index) for p in policies)}"
    if drivers:
        detail += f", driver {','.join(drivers)}"
    if skipped:
        detail += f"; {'; '.join(skipped)}"
    reason = _write_problem(root, [f for p in policies for f in _cpu_files(p)])
    return KnobInfo(
        name=CPU,
        source="cpufreq",
        path=where,
        values_hz=tuple(v * 1000 for v in values_khz),
        value_kind=kind,
        governors=first.governors,
        governor=first.state.governor,
        min_hz=first.state.min_khz * 1000,
        max_hz=first.state.max_khz * 1000,
        pin_method=" / ".join(methods),
        detail=detail,
        writable=not reason,
        reason=reason,
    )


def _cpu_files(p: CpuPolicy) -> list[str]:
    names = ["scaling_min_freq", "scaling_max_freq", "scaling_governor"]
    if p.has_userspace:
        names.append("scaling_setspeed")
    return [p.file(n) for n in names]


def _gpu_knob(root: SysfsRoot) -> tuple[KnobInfo, list[str]]:
    rel = find_devfreq_node(root, GPU_NAMES)
    if rel is None:
        where = root.show(DEVFREQ_DIR)
        return KnobInfo(GPU, "devfreq", where, reason="absent: no GPU devfreq node"), []
    where = root.show(rel)
    try:
        node = read_node(root, rel)
    except DeviceError as exc:
        return KnobInfo(GPU, "devfreq", where, reason=f"error: {exc}"), [rel.rsplit("/", 1)[-1]]
    detail = f"of_node {node.of_name}" if node.of_name else ""
    reason = _write_problem(root, [node.file(n) for n in ("min_freq", "max_freq", "governor")])
    info = KnobInfo(
        name=GPU,
        source="devfreq",
        path=where,
        values_hz=node.table_hz,
        value_kind="table",
        governors=node.governors,
        governor=node.state.governor,
        min_hz=node.state.min_hz,
        max_hz=node.state.max_hz,
        pin_method="min_freq=max_freq",
        detail=detail,
        writable=not reason,
        reason=reason,
    )
    return info, [node.of_name, node.name]


def _write_problem(root: SysfsRoot, rels: Sequence[str]) -> str:
    for rel in rels:
        err = root.access_error(rel)
        if err == errno.ENOENT:
            return f"absent: {root.show(rel)} does not exist"
        if err is not None:
            return f"permission: cannot write {root.show(rel)}. {PERMISSION_FIX}"
    return ""


def _overlap(found: Sequence[int], known: Sequence[int]) -> float:
    a, b = set(found), set(known)
    return len(a & b) / len(a | b) if a and b else 0.0


def _describe_values(k: KnobInfo) -> str:
    if not k.values_hz:
        return "not available"
    return (
        f"{len(k.values_hz)} values, {_mhz_range(k.values_hz[0], k.values_hz[-1])} ({k.value_kind})"
    )


def _mhz_range(low: int | None, high: int | None) -> str:
    return f"{(low or 0) / 1e6:g}-{(high or 0) / 1e6:g} MHz"
