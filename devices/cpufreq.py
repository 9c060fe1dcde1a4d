"""CPU clocks through Linux cpufreq: one knob over every controlled policy.

Each ``sys/devices/system/cpu/cpufreq/policyN`` is one clock shared by its CPUs, so it is
written once, not once per CPU. Files are in kHz; the knob's values are in Hz.

Values: the frequencies common to every controlled policy's ``scaling_available_frequencies``.
Drivers without a table (intel_pstate, amd-pstate) accept any value in
``[cpuinfo_min_freq, cpuinfo_max_freq]``; that range is cut into about ``steps`` (16) evenly
spaced points rounded to ``granularity_hz`` (100 MHz), keeping both hardware limits exact, so
a tuner gets a small ordered lattice rather than thousands of near-identical values.

Pinning: where the policy offers the ``userspace`` governor, it is selected, the limits are
opened to the hardware range when the target lies outside them, and the value goes to
``scaling_setspeed``; otherwise ``scaling_min_freq`` = ``scaling_max_freq`` pins it under any
governor (intel_pstate included). Either way pinning overrides a power mode's cap (nvpmodel
writes the same files) while ecoserve runs; ``restore()`` puts the cap back. Every write is
read back, because the kernel clamps and rounds and still reports success.

Hand-back (a knob listed in ``governed``): the governor and limits found at start are put
back, so the OS governor decides again. When the box was found under ``userspace`` (e.g. a
previous run was killed while pinning), handing back to it would keep the clock fixed, so
the first of ``HANDBACK_GOVERNORS`` the policy offers is used instead.

Permission: a refused write (EACCES/EPERM) records one warning, undoes what this actuator
changed, and drops the knob (``knobs()`` returns ``[]``): serving carries on with the other
knobs, batch size at least. ``apply`` never raises for a permission problem. Running out of
file descriptors (EMFILE/ENFILE) is no fault of the knob: ``apply`` raises
``TransientDeviceError`` and the caller applies again later.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devices.base import Actuator, DeviceError, PermissionDeniedError, TransientDeviceError
from devices.restore_record import ClockState, put_clock
from devices.sysfs import SysfsRoot, permission_warning
from ecoserve.core.knobs import CPU, Knob

log = logging.getLogger(__name__)

CPUFREQ_DIR = "sys/devices/system/cpu/cpufreq"
USERSPACE = "userspace"
#: Dynamic governors, in order of preference, used to hand back a policy found under userspace.
HANDBACK_GOVERNORS = ("schedutil", "ondemand", "interactive", "conservative", "powersave")

_POLICY = re.compile(r"^policy(\d+)$")


@dataclass(frozen=True)
class PolicyState:
    """What a policy's writable files said: the state ``restore()`` puts back."""

    governor: str
    min_khz: int
    max_khz: int


@dataclass(frozen=True)
class CpuPolicy:
    """One cpufreq policy as read from its directory."""

    index: int
    rel: str
    #: ``scaling_available_frequencies`` ascending, or None for drivers without a table.
    table_khz: tuple[int, ...] | None
    cpuinfo_min_khz: int
    cpuinfo_max_khz: int
    governors: tuple[str, ...]
    state: PolicyState
    driver: str
    cpus: tuple[int, ...]

    @property
    def has_userspace(self) -> bool:
        return USERSPACE in self.governors

    @property
    def pin_method(self) -> str:
        return "userspace+scaling_setspeed" if self.has_userspace else "scaling_min=max"

    def file(self, name: str) -> str:
        return f"{self.rel}/{name}"


def list_policies(root: SysfsRoot) -> list[int]:
    """Indices of the policies present, ascending."""
    found = []
    for rel in root.glob(f"{CPUFREQ_DIR}/policy*"):
        m = _POLICY.match(rel.rsplit("/", 1)[-1])
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def read_policy(root: SysfsRoot, index: int) -> CpuPolicy:
    """Read everything the actuator and discovery need about ``policyN``; writes nothing."""
    rel = f"{CPUFREQ_DIR}/policy{index}"
    if not root.is_dir(rel):
        raise DeviceError(f"no cpufreq policy {index}: {root.show(rel)} does not exist")
    table_rel = f"{rel}/scaling_available_frequencies"
    table = tuple(sorted(set(root.read_ints(table_rel)))) if root.exists(table_rel) else None
    driver_rel = f"{rel}/scaling_driver"
    cpus_rel = f"{rel}/affected_cpus"
    return CpuPolicy(
        index=index,
        rel=rel,
        table_khz=table or None,
        cpuinfo_min_khz=root.read_int(f"{rel}/cpuinfo_min_freq"),
        cpuinfo_max_khz=root.read_int(f"{rel}/cpuinfo_max_freq"),
        governors=tuple(root.read_words(f"{rel}/scaling_available_governors")),
        state=read_state(root, rel),
        driver=root.read_text(driver_rel) if root.exists(driver_rel) else "",
        cpus=tuple(root.read_ints(cpus_rel)) if root.exists(cpus_rel) else (),
    )


def read_policies(
    root: SysfsRoot, indices: Sequence[int] | None = None
) -> tuple[list[CpuPolicy], list[str]]:
    """The policies to control and a note for each one left out.

    With ``indices`` None, every policy present is tried and one that cannot be read is
    left out: cpufreq answers EBUSY for a policy whose CPUs are all offline (a 2-core power
    mode on a 6-core Xavier NX). Policies named explicitly must all be readable.
    """
    if indices is not None:
        return [read_policy(root, i) for i in indices], []
    policies, notes = [], []
    for i in list_policies(root):
        try:
            policies.append(read_policy(root, i))
        except DeviceError as exc:
            notes.append(f"CPU policy{i} not controlled: {exc}")
    return policies, notes


def read_state(root: SysfsRoot, rel: str) -> PolicyState:
    return PolicyState(
        governor=root.read_text(f"{rel}/scaling_governor"),
        min_khz=root.read_int(f"{rel}/scaling_min_freq"),
        max_khz=root.read_int(f"{rel}/scaling_max_freq"),
    )


def range_steps_khz(
    low: int, high: int, steps: int = 16, granularity_khz: int = 100_000
) -> tuple[int, ...]:
    """About ``steps`` evenly spaced points of ``[low, high]``, inner ones rounded to the grain.

    The end points stay exact: they are the hardware limits, and the maximum is the
    baseline every cost is normalised by.
    """
    if high < low:
        raise ValueError(f"empty frequency range [{low}, {high}] kHz")
    points = {low, high}
    for i in range(1, max(steps, 2) - 1):
        x = low + (high - low) * i / (steps - 1)
        r = round(x / granularity_khz) * granularity_khz
        if low < r < high:
            points.add(r)
    return tuple(sorted(points))


def common_values_khz(
    policies: Sequence[CpuPolicy], steps: int = 16, granularity_khz: int = 100_000
) -> tuple[tuple[int, ...], str]:
    """The knob's values (kHz) and their kind: ``"table"`` or ``"range"``."""
    if all(p.table_khz for p in policies):
        common = set.intersection(*(set(p.table_khz or ()) for p in policies))
        if not common:
            spans = ", ".join(
                f"policy{p.index} {min(p.table_khz or (0,))}-{max(p.table_khz or (0,))} kHz"
                for p in policies
            )
            raise DeviceError(
                f"the cpufreq policies share no frequency ({spans}); control fewer policies "
                "(policies=[...]) so that one table applies"
            )
        return tuple(sorted(common)), "table"
    low = max(p.cpuinfo_min_khz for p in policies)
    high = min(p.cpuinfo_max_khz for p in policies)
    return range_steps_khz(low, high, steps, granularity_khz), "range"


class CpufreqActuator(Actuator):
    """Pins every controlled cpufreq policy to one frequency (knob ``cpu_freq_hz``).

    ``policies`` defaults to every readable policy present (see ``read_policies``). The
    state found at construction is what ``restore()`` puts back, so construct it before
    anything else touches the clocks.
    """

    def __init__(
        self,
        root: SysfsRoot,
        policies: Sequence[int] | None = None,
        *,
        steps: int = 16,
        granularity_hz: int = 100_000_000,
    ) -> None:
        self.root = root
        found, skipped = read_policies(root, policies)
        if not found:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            raise DeviceError(f"no usable cpufreq policy under {root.show(CPUFREQ_DIR)}{why}")
        self.policies: tuple[CpuPolicy, ...] = tuple(found)
        self._original = {p.index: p.state for p in self.policies}
        values_khz, self.table_kind = common_values_khz(
            self.policies, steps, granularity_hz // 1000
        )
        self._table_khz = values_khz
        self._knob = Knob(CPU, tuple(float(v * 1000) for v in values_khz))
        self._lock = threading.RLock()
        self._touched: set[int] = set()
        self._pinned = False
        self._governed = False
        self._dropped = False
        self._frozen: str | None = None
        self._warnings: list[str] = skipped

    def knobs(self) -> list[Knob]:
        return [] if self._dropped else [self._knob]

    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def table_hz(self) -> tuple[int, ...]:
        return tuple(v * 1000 for v in self._table_khz)

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        with self._lock:
            if self._dropped:
                return
            try:
                if CPU in governed:
                    self._hand_back()
                elif CPU in values:
                    khz = self._table_khz[self._knob.index_of(values[CPU])]
                    got = self._pin(khz)
                    if got != khz * 1000:
                        log.debug("CPU asked %d kHz, kernel set %d Hz", khz, got)
            except TransientDeviceError:
                raise  # out of descriptors, not a dead knob: the next apply tries again
            except DeviceError as exc:  # any other errno: freeze the knob, serving goes on
                self._drop(exc)

    def frozen(self) -> dict[str, str]:
        return {CPU: self._frozen} if self._frozen is not None else {}

    def set_frequency(self, hz: float) -> int:
        """Pin to exactly ``hz`` (a table value) and return the frequency read back, in Hz.

        Unlike ``apply``, which takes the knob's own values, this is the path for a value a
        user typed: anything off the table is refused with the valid list, never rounded.
        """
        khz = round(hz / 1000)
        if abs(khz * 1000 - hz) > 0.5 or khz not in self._table_khz:
            valid = ", ".join(f"{v / 1000:g}" for v in self._table_khz)
            raise DeviceError(
                f"{hz:g} Hz is not a CPU operating point; valid values (MHz): {valid}"
            )
        with self._lock:
            if self._dropped:
                raise DeviceError(self._warnings[0] if self._warnings else "CPU knob dropped")
            try:
                return self._pin(khz)
            except PermissionDeniedError as exc:
                self._drop(exc)
                raise

    def original_clocks(self) -> list[ClockState]:
        return [_clock(p.rel, self._original[p.index]) for p in self.policies]

    def current(self) -> dict[str, float]:
        with self._lock:
            if self._dropped:
                return {}
            p = self.policies[0]
            if self._pinned:
                name = "scaling_setspeed" if p.has_userspace else "scaling_max_freq"
            else:
                name = "scaling_cur_freq"
            return {CPU: float(self.root.read_int(p.file(name)) * 1000)}

    def restore(self) -> None:
        """Put back each changed policy's governor, then its limits; idempotent.

        Only files that differ from the recorded state are written. Every policy is tried
        even if one fails; the failures are raised together at the end.
        """
        with self._lock:
            errors = []
            for p in self.policies:
                if p.index not in self._touched:
                    continue
                try:
                    self._put_state(p, self._original[p.index])
                except DeviceError as exc:
                    errors.append(str(exc))
                else:
                    self._touched.discard(p.index)
            self._pinned = False
            self._governed = False
            if errors:
                raise DeviceError("cpufreq restore incomplete: " + "; ".join(errors))

    # -- internals -------------------------------------------------------------------

    def _pin(self, khz: int) -> int:
        readback = []
        for p in self.policies:
            self._touched.add(p.index)
            if p.has_userspace:
                if self.root.read_text(p.file("scaling_governor")) != USERSPACE:
                    self.root.write(p.file("scaling_governor"), USERSPACE)
                low = self.root.read_int(p.file("scaling_min_freq"))
                high = self.root.read_int(p.file("scaling_max_freq"))
                if not low <= khz <= high:
                    self.root.write_limits(
                        p.file("scaling_min_freq"),
                        p.file("scaling_max_freq"),
                        min(p.cpuinfo_min_khz, khz),
                        max(p.cpuinfo_max_khz, khz),
                    )
                self.root.write(p.file("scaling_setspeed"), khz)
                readback.append(self.root.read_int(p.file("scaling_setspeed")))
            else:
                self.root.write_limits(
                    p.file("scaling_min_freq"), p.file("scaling_max_freq"), khz, khz
                )
                readback.append(self.root.read_int(p.file("scaling_max_freq")))
        self._pinned = True
        self._governed = False
        if len(set(readback)) > 1:
            log.warning("cpufreq policies settled at different frequencies: %s kHz", readback)
        return readback[0] * 1000

    def _hand_back(self) -> None:
        if self._governed:
            return
        for p in self.policies:
            self._touched.add(p.index)
            orig = self._original[p.index]
            governor = orig.governor
            if governor == USERSPACE:
                governor = next((g for g in HANDBACK_GOVERNORS if g in p.governors), governor)
            self._put_state(p, PolicyState(governor, orig.min_khz, orig.max_khz))
        self._pinned = False
        self._governed = True

    def _put_state(self, p: CpuPolicy, state: PolicyState) -> None:
        put_clock(self.root, _clock(p.rel, state))

    def _drop(self, exc: DeviceError) -> None:
        if isinstance(exc, PermissionDeniedError):
            self._warnings.append(permission_warning("CPU frequency", exc))
        else:
            self._warnings.append(
                f"CPU frequency knob frozen: {exc}. Serving continues without it."
            )
        log.warning(self._warnings[-1])
        self._frozen = f"{exc.errno_name or 'error'}: {exc}"
        self._dropped = True
        try:
            self.restore()
        except DeviceError as err:
            log.warning("could not undo partial CPU frequency changes: %s", err)


def _clock(rel: str, state: PolicyState) -> ClockState:
    return ClockState("cpufreq", rel, state.governor, state.min_khz, state.max_khz)
