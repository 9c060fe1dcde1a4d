"""A durable record of the clocks as ecoserve found them, so even SIGKILL cannot leave them pinned.

Signal handlers, ``atexit`` and the watchdog restore the clocks on every exit a process
sees. SIGKILL (the OOM killer's signal on an 8 GB board) and a power cut are not seen, and a
restart would then take the pinned values for the originals. So, before the first write to
any knob, the state of every clock it may change (governor, min, max, per cpufreq policy and
devfreq node) is written to a record: a temporary file, flushed to disk, renamed over the
record, and the folder flushed too. It is removed only after a restore has succeeded.

Whoever opens the sysfs device next, or ``ecoserve restore`` (which the systemd unit runs as
``ExecStopPost=``), finds a record left by a dead process, puts every clock back from it,
says so, and only then reads the clocks afresh. This is what ``jetson_clocks --store`` /
``--restore`` do by hand.

One record per sysfs root, in the restore folder: ``--restore-dir``, else ``$STATE_DIRECTORY``
(systemd's ``StateDirectory=``), else ``/var/lib/ecoserve`` when it can be written, else
``$XDG_STATE_HOME/ecoserve`` (``~/.local/state/ecoserve``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from devices.base import DeviceError
from devices.durable import write_json_durably
from devices.sysfs import SysfsRoot

log = logging.getLogger(__name__)

FORMAT = 1
#: The files of each kind of clock directory: governor, lower limit, upper limit.
FILES = {
    "cpufreq": ("scaling_governor", "scaling_min_freq", "scaling_max_freq"),
    "devfreq": ("governor", "min_freq", "max_freq"),
}


@dataclass(frozen=True)
class ClockState:
    """A clock directory's writable state: governor and limits, in the files' own units."""

    kind: str
    rel: str
    governor: str
    min: int
    max: int

    def __post_init__(self) -> None:
        if self.kind not in FILES:
            raise ValueError(f"unknown clock kind {self.kind!r}; known: {sorted(FILES)}")
        if not (isinstance(self.min, int) and isinstance(self.max, int) and self.min <= self.max):
            raise ValueError(f"bad limits for {self.rel}: {self.min}..{self.max}")
        if not self.governor or not self.rel:
            raise ValueError(f"a clock state needs a directory and a governor: {self}")

    def describe(self) -> str:
        unit = "kHz" if self.kind == "cpufreq" else "Hz"
        return f"{self.rel}: {self.governor}, {self.min}..{self.max} {unit}"


def read_clock(root: SysfsRoot, kind: str, rel: str) -> ClockState:
    governor, low, high = FILES[kind]
    return ClockState(
        kind,
        rel,
        root.read_text(f"{rel}/{governor}"),
        root.read_int(f"{rel}/{low}"),
        root.read_int(f"{rel}/{high}"),
    )


def put_clock(root: SysfsRoot, state: ClockState) -> None:
    """Put ``state`` back: the governor first, then the limits in an order the kernel takes.

    Only files that differ are written, so restoring a clock nobody changed writes nothing.
    """
    governor, low, high = FILES[state.kind]
    if root.read_text(f"{state.rel}/{governor}") != state.governor:
        root.write(f"{state.rel}/{governor}", state.governor)
    now = read_clock(root, state.kind, state.rel)
    if (now.min, now.max) != (state.min, state.max):
        root.write_limits(f"{state.rel}/{low}", f"{state.rel}/{high}", state.min, state.max)


def default_restore_dir() -> Path:
    """Where records live when no ``--restore-dir`` is given (see the module's docstring)."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    system = Path("/var/lib/ecoserve")
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return system
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "ecoserve"


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from ``/proc``), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is still the process that wrote the record.

    A zombie (killed, not yet reaped) is dead, and a pid now held by another process (its
    start time differs from the recorded one) is not the writer.
    """
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        state = ""
    if state:
        if state[state.rfind(")") + 2 :].startswith("Z"):
            return False
        return started is None or _process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RestoreRecord:
    """The record for one sysfs root in one restore folder."""

    def __init__(self, root: SysfsRoot, restore_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = root
        self.restore_dir = Path(restore_dir) if restore_dir is not None else default_restore_dir()
        key = hashlib.sha256(str(root.root.resolve()).encode()).hexdigest()[:12]
        self.path = self.restore_dir / f"restore-{key}.json"

    def __repr__(self) -> str:
        return f"RestoreRecord({str(self.path)!r})"

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def write(self, states: Sequence[ClockState]) -> None:
        """Record ``states`` durably (temporary file, fsync, rename, fsync of the folder)."""
        data = {
            "format": FORMAT,
            "pid": os.getpid(),
            "pid_started": _process_start(os.getpid()),
            "written_at": time.time(),
            "sysfs_root": str(self.root.root),
            "clocks": [asdict(s) for s in states],
        }
        write_json_durably(self.path, data)

    def read(self) -> tuple[int, list[ClockState]]:
        """(pid that wrote it, the recorded clocks); ValueError names what is wrong."""
        return self._read()[:2]

    def _read(self) -> tuple[int, list[ClockState], str | None]:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
            clocks = [ClockState(**c) for c in data["clocks"]]
            started = data.get("pid_started")
            return int(data.get("pid", 0)), clocks, None if started is None else str(started)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"restore record {self.path} is unreadable: {exc}") from exc

    def owner_alive(self) -> int | None:
        """The pid of a live process other than this one that owns the record, else None."""
        try:
            pid, _, started = self._read()
        except ValueError:
            return None
        return pid if pid != os.getpid() and _alive(pid, started) else None

    def restore(self) -> list[ClockState]:
        """Put back every recorded clock; remove the record only if all of them succeeded.

        Returns the clocks restored. DeviceError lists the failures (the record is kept, so
        a later attempt can finish the job).
        """
        _, clocks = self.read()
        errors = []
        for state in clocks:
            try:
                put_clock(self.root, state)
            except DeviceError as exc:
                errors.append(f"{state.rel}: {exc}")
        if errors:
            raise DeviceError(f"restore from {self.path} incomplete: " + "; ".join(errors))
        self.remove()
        return clocks

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.path.unlink()


def recover(root: SysfsRoot, restore_dir: str | os.PathLike[str] | None = None) -> RestoreRecord:
    """Before opening the clocks: restore from a record a dead process left, and say so.

    Returns the record to use from now on. A record owned by a live process means another
    ecoserve is driving these clocks: DeviceError, rather than two tuners fighting.
    """
    record = RestoreRecord(root, restore_dir)
    if not record.exists:
        return record
    owner = record.owner_alive()
    if owner is not None:
        raise DeviceError(
            f"another ecoserve process (pid {owner}) controls the clocks under {root.root} "
            f"(record {record.path}); stop it first"
        )
    try:
        clocks = record.restore()
    except ValueError as exc:
        log.warning("%s; removing it and reading the clocks as they are", exc)
        record.remove()
        return record
    log.warning(
        "restored clocks left changed by a process that did not exit cleanly (record %s): %s",
        record.path,
        "; ".join(c.describe() for c in clocks),
    )
    return record
