"""x86 package energy from the Linux powercap RAPL counters.

``sys/class/powercap/intel-rapl:N/energy_uj`` is a cumulative microjoule counter per CPU
package (``intel-rapl:N:M`` are its core/uncore/dram parts). It wraps at
``max_energy_range_uj`` — at 135 W a 262 kJ range wraps in about 32 minutes — and a wrap
can only be detected if the counter is read at least once per wrap period, so a background
poller reads it every ``poll_s`` seconds whether or not anyone asks.

Since the CVE-2020-8694 fix (kernel 5.10, backported to older stable kernels) ``energy_uj``
is readable by root only; the error says how to grant access.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.base import DeviceError, PermissionDeniedError, PowerMeter
from devices.meters._read import ReadText, read_number, read_text

POWERCAP_DIR = "sys/class/powercap"

#: How to make the counters readable; part of every permission error.
RAPL_PERMISSION_FIX = (
    "RAPL energy_uj is root-only since the CVE-2020-8694 fix. Run ecoserve as root, or "
    "make the counters readable: `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj` "
    "(until reboot), or persistently with a udev rule such as "
    '`ACTION=="add", SUBSYSTEM=="powercap", RUN+="/bin/chmod 0444 /sys%p/energy_uj"` '
    "in /etc/udev/rules.d/. Note this re-exposes the power side channel the fix closed."
)

# intel-rapl:N (package/psys) and intel-rapl:N:M (parts). "intel-rapl-mmio:N" is the same
# package seen through MMIO and is deliberately not matched: counting it would double-count.
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone: ``name`` as the kernel calls it, e.g. "package-0" or "dram"."""

    name: str
    #: Directory name, e.g. "intel-rapl:0" or "intel-rapl:0:2".
    zone_id: str
    path: Path
    max_energy_range_uj: float
    #: True for intel-rapl:N:M (a part of a package), False for a top-level zone.
    subzone: bool

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"


def _zone_sort_key(path: Path) -> tuple[int, int]:
    m = _ZONE_DIR.match(path.name)
    assert m is not None
    return int(m.group(1)), -1 if m.group(2) is None else int(m.group(2))


def find_rapl_zones(
    root: str | os.PathLike[str] = "/",
    include_subzones: bool = True,
    read: ReadText = read_text,
) -> list[RaplZone]:
    """Every RAPL zone under ``root`` (parents before their parts); reads no counter."""
    base = Path(root) / POWERCAP_DIR
    if not base.is_dir():
        return []
    dirs = sorted((p for p in base.iterdir() if _ZONE_DIR.match(p.name)), key=_zone_sort_key)
    zones: list[RaplZone] = []
    for d in dirs:
        sub = _ZONE_DIR.match(d.name).group(2) is not None  # type: ignore[union-attr]
        if sub and not include_subzones:
            continue
        name_path = d / "name"
        try:
            name = read(name_path).strip() if name_path.exists() else d.name
        except OSError:
            name = d.name
        rng = read_number(d / "max_energy_range_uj", read, RAPL_PERMISSION_FIX)
        zones.append(RaplZone(name, d.name, d, rng, sub))
    return zones


def default_zones(zones: Sequence[RaplZone]) -> list[RaplZone]:
    """Top-level package zones: parts are inside them, and ``psys`` (the whole platform,
    on some laptops) contains them, so summing either with the packages double-counts.
    Falls back to every top-level zone when none is called "package-*" (e.g. psys only)."""
    top = [z for z in zones if not z.subzone]
    packages = [z for z in top if z.name.startswith("package")]
    return packages or top


class RaplMeter(PowerMeter):
    """Summed energy of RAPL zones, wraparound handled, polled in the background.

    ``zones`` picks zones by kernel name ("package-0", "dram") or directory
    ("intel-rapl:0:2"); by default every top-level package. ``poll_s`` is the background
    poll period (0 disables it; then the caller must call ``energy_joules`` at least once
    per wrap period). ``read_text`` reads a file; tests inject one to simulate ``EACCES``.
    """

    estimated = False

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        zones: Sequence[str] | None = None,
        poll_s: float = 5.0,
        read_text: ReadText = read_text,
    ) -> None:
        if poll_s < 0:
            raise ValueError(f"poll_s must be >= 0, got {poll_s}")
        self._read = read_text
        every = find_rapl_zones(root, include_subzones=True, read=read_text)
        if not every:
            raise DeviceError(f"no RAPL zones under {Path(root) / POWERCAP_DIR}")
        self.zones: list[RaplZone] = (
            default_zones(every) if zones is None else self._pick(every, zones)
        )
        if not self.zones:
            raise DeviceError("no RAPL zones selected")
        names = [z.name for z in self.zones]
        # Two packages both have a "dram" part: disambiguate by directory only when needed.
        self._labels = [
            z.name if names.count(z.name) == 1 else f"{z.name}({z.zone_id})" for z in self.zones
        ]
        self.source = "rapl:" + "+".join(self._labels)
        self.poll_s = float(poll_s)
        self.last_error: BaseException | None = None
        self._lock = threading.Lock()
        self._prev = [self._read_uj(z) for z in self.zones]  # fails fast on EACCES
        self._acc_uj = [0.0 for _ in self.zones]
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if poll_s > 0:
            self._thread = threading.Thread(
                target=self._run, name=f"rapl-poller[{self.source}]", daemon=True
            )
            self._thread.start()

    @staticmethod
    def _pick(every: Sequence[RaplZone], names: Sequence[str]) -> list[RaplZone]:
        chosen: list[RaplZone] = []
        for name in names:
            match = next((z for z in every if name in (z.name, z.zone_id)), None)
            if match is None:
                known = ", ".join(f"{z.name} ({z.zone_id})" for z in every)
                raise DeviceError(f"no RAPL zone {name!r}; available: {known}")
            if match not in chosen:
                chosen.append(match)
        return chosen

    def _read_uj(self, zone: RaplZone) -> float:
        try:
            return read_number(zone.energy_path, self._read, RAPL_PERMISSION_FIX)
        except PermissionDeniedError:
            raise
        except DeviceError as exc:
            raise DeviceError(f"RAPL zone {zone.name}: {exc}") from exc

    def poll(self) -> None:
        """Read every counter once and accumulate the deltas, unwrapping a wrap."""
        # Read under the lock: two polls interleaving (poller and caller) could otherwise
        # apply an older reading after a newer one, which would look like a wrap.
        with self._lock:
            if self._closed:
                return
            readings = [self._read_uj(z) for z in self.zones]
            for i, (zone, new) in enumerate(zip(self.zones, readings, strict=True)):
                prev = self._prev[i]
                if new >= prev:
                    delta = new - prev
                else:  # wrapped once (the poller keeps us well inside one wrap period)
                    delta = (zone.max_energy_range_uj - prev) + new
                self._acc_uj[i] += delta
                self._prev[i] = new

    def energy_joules(self) -> float:
        """Joules since opened, summed over the selected zones (reads the counters now)."""
        if not self._closed:
            self.poll()
        with self._lock:
            return sum(self._acc_uj) / 1e6

    def zone_joules(self) -> dict[str, float]:
        """Joules since opened per zone, as of the last poll."""
        with self._lock:
            return {label: uj / 1e6 for label, uj in zip(self._labels, self._acc_uj, strict=True)}

    def close(self) -> None:
        """Take a last reading, stop the poller, freeze the total; idempotent."""
        if self._closed:
            return
        try:
            self.poll()
        except DeviceError as exc:
            self.last_error = exc
        self._stop.set()
        with self._lock:
            self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except DeviceError as exc:  # keep polling; a wrap missed now is lost for good
                self.last_error = exc
