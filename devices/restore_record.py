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
``--restore`` do by hand. Both go through ``recover``, so they always agree:

- a clock that will not go back (a broken ``min_freq``, a refused write) does not stop the
  others: they are put back, it stays in the record (rewritten with it alone), and whoever
  opens the clocks leaves it alone and says what remains and how to fix it;
- a record that cannot be read (cut short, a string for a number, wrong nesting) is kept and
  never replaced by the current values, which may be the pinned ones: the clocks are not
  tuned until ``ecoserve restore --from-board`` puts the board's defaults back.

One record per sysfs root, in the restore folder: ``--restore-dir``, else ``$STATE_DIRECTORY``
(systemd's ``StateDirectory=``), else ``/var/lib/ecoserve`` when it can be written, else
``$XDG_STATE_HOME/ecoserve`` (``~/.local/state/ecoserve``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devices.base import TRANSIENT_ERRNOS, DeviceError, TransientDeviceError
from devices.boards import PROFILES
from devices.durable import write_json_durably
from devices.sysfs import PERMISSION_FIX, SysfsRoot

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
    Every file is tried even when another fails (a broken ``min_freq`` must not keep
    ``max_freq`` pinned too); DeviceError then names each file left wrong, and is a
    ``TransientDeviceError`` when only descriptors or memory were short.
    """
    governor, low, high = FILES[state.kind]
    errors: list[DeviceError] = []

    def attempt(rel: str, value: str | int) -> None:
        try:
            if root.read_text(rel) != str(value):
                root.write(rel, value)
        except DeviceError as exc:
            errors.append(exc)

    attempt(f"{state.rel}/{governor}", state.governor)
    limits = [(f"{state.rel}/{low}", state.min), (f"{state.rel}/{high}", state.max)]
    try:
        if state.min > root.read_int(f"{state.rel}/{high}"):
            limits.reverse()  # raising past the current max: max first, so they never cross
    except DeviceError:
        pass  # unreadable max: try min first; a refusal is reported below
    for rel, value in limits:
        attempt(rel, value)
    if errors:
        transient = all(isinstance(e, TransientDeviceError) for e in errors)
        raise _joined(TransientDeviceError if transient else DeviceError, errors)


def _joined(kind: type[DeviceError], errors: Sequence[DeviceError]) -> DeviceError:
    err = kind("; ".join(str(e) for e in errors))
    err.errno_name = errors[0].errno_name
    return err


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
        """(pid that wrote it, the recorded clocks); UnreadableRecordError says what is wrong."""
        return self._read()[:2]

    def _read(self) -> tuple[int, list[ClockState], str | None]:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                found = data.get("format") if isinstance(data, dict) else data
                raise ValueError(f"unknown format {found!r}")
            clocks = [ClockState(**c) for c in data["clocks"]]
            started = data.get("pid_started")
            return int(data.get("pid", 0)), clocks, None if started is None else str(started)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UnreadableRecordError(
                f"restore record {self.path} cannot be read ({type(exc).__name__}: {exc})"
            ) from exc

    def owner_alive(self) -> int | None:
        """The pid of a live process other than this one that owns the record, else None."""
        try:
            pid, _, started = self._read()
        except UnreadableRecordError:
            return None
        return pid if pid != os.getpid() and _alive(pid, started) else None

    def restore(self) -> list[ClockState]:
        """Put back every recorded clock that can be; returns them and removes the record.

        Clocks that cannot be put back stay recorded (the record is rewritten with them
        alone, so a later attempt finishes the job) and IncompleteRestoreError lists them.
        """
        _, clocks = self.read()
        restored, remaining = [], []
        for state in clocks:
            try:
                put_clock(self.root, state)
            except DeviceError as exc:
                remaining.append(Unrestored(state, exc))
            else:
                restored.append(state)
        if remaining:
            self.write([u.clock for u in remaining])
            raise IncompleteRestoreError(restored, remaining, self.path)
        self.remove()
        return clocks

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.path.unlink()


@dataclass(frozen=True)
class Unrestored:
    """A recorded clock that could not be put back, and why."""

    clock: ClockState
    error: DeviceError

    def describe(self) -> str:
        return f"{self.clock.describe()} not put back: {self.error}"


class UnreadableRecordError(DeviceError):
    """The record is there but cannot be read: it is kept, never replaced by the clocks'
    current values (those may be what a dead process pinned)."""


class IncompleteRestoreError(DeviceError):
    """Some clocks could not be put back; they stay recorded in ``kept_in`` (if any)."""

    def __init__(
        self,
        restored: Sequence[ClockState],
        remaining: Sequence[Unrestored],
        kept_in: Path | None,
    ) -> None:
        self.restored = list(restored)
        self.remaining = list(remaining)
        self.kept_in = kept_in
        where = (
            f"; kept in {kept_in} for `ecoserve restore` (or the next start) to finish"
            if kept_in is not None
            else ""
        )
        super().__init__(
            f"restore incomplete: {'; '.join(u.describe() for u in self.remaining)}{where}. "
            f"{fix_hint(self.remaining)}"
        )
        self.errno_name = self.remaining[0].error.errno_name if self.remaining else ""


class RecordOwnedError(DeviceError):
    """A live ecoserve owns the record: it drives these clocks and restores them itself."""


def fix_hint(remaining: Sequence[Unrestored]) -> str:
    """What a user can do about clocks that would not go back, by the errno behind it."""
    codes = {u.error.errno_name for u in remaining}
    if codes <= TRANSIENT_ERRNOS:
        return "The process was short of file descriptors or memory; it is retried later."
    if codes & {"EACCES", "EPERM"}:
        return f"Fix: {PERMISSION_FIX}"
    return (
        "Fix: check the named files by hand (cat them; a driver reload or a reboot brings "
        "back a vanished or broken one), then run `ecoserve restore`; or put the board's "
        "defaults back with `ecoserve restore --from-board BOARD`."
    )


def unreadable_hint(record: RestoreRecord) -> str:
    """How to fix an unreadable record; said by ``serve`` and ``ecoserve restore`` alike."""
    where = "" if str(record.root.root) == "/" else f" --sysfs-root {record.root.root}"
    return (
        "It is kept, and no clock is tuned until it is fixed: put the board's defaults back "
        f"with `ecoserve restore --from-board BOARD{where} --restore-dir {record.restore_dir}` "
        f"(BOARD: {', '.join(sorted(PROFILES))}, or a JSON file of clocks), which then removes "
        "the record; or put every clock back by hand and delete the record."
    )


@dataclass
class Recovery:
    """What ``recover`` found and did, for ``serve`` and ``ecoserve restore`` to act on."""

    record: RestoreRecord
    #: A record was there (left by a process that did not restore).
    found: bool = False
    restored: list[ClockState] = field(default_factory=list)
    #: Clocks that would not go back: still recorded, and not tuned by whoever opens them.
    remaining: list[Unrestored] = field(default_factory=list)
    #: Why the record cannot be read: kept, and no clock under this root is tuned.
    unreadable: str | None = None

    def messages(self) -> list[str]:
        """One line per thing the user must know, empty when nothing was there."""
        out = []
        if self.restored:
            out.append(
                "restored clocks left changed by a process that did not exit cleanly (record "
                f"{self.record.path}): " + "; ".join(c.describe() for c in self.restored)
            )
        return out + self.problems()

    def problems(self) -> list[str]:
        """What is still wrong, with the fix: the unreadable record, the clocks left changed."""
        out = []
        if self.unreadable is not None:
            out.append(f"{self.unreadable}. {unreadable_hint(self.record)}")
        if self.remaining:
            out.append(
                "could not put back "
                + "; ".join(u.describe() for u in self.remaining)
                + f". They stay in {self.record.path} and are not tuned until they go back. "
                + fix_hint(self.remaining)
            )
        return out


def recover(
    root: SysfsRoot, restore_dir: str | os.PathLike[str] | None = None, *, force: bool = False
) -> Recovery:
    """Before opening the clocks: put back what a dead process left in its record.

    The one path for a new start and for ``ecoserve restore``. A record owned by a live
    process means another ecoserve is driving these clocks: RecordOwnedError (unless
    ``force``), rather than two tuners fighting. An unreadable record is kept and reported,
    never replaced by the clocks' current values; clocks that would not go back stay in it.
    """
    record = RestoreRecord(root, restore_dir)
    if not record.exists:
        return Recovery(record)
    owner = record.owner_alive()
    if owner is not None and not force:
        raise RecordOwnedError(
            f"another ecoserve process (pid {owner}) controls the clocks under {root.root} "
            f"(record {record.path}); stop it first"
        )
    try:
        clocks = record.restore()
    except UnreadableRecordError as exc:
        return Recovery(record, found=True, unreadable=str(exc))
    except IncompleteRestoreError as exc:
        return Recovery(record, found=True, restored=exc.restored, remaining=exc.remaining)
    return Recovery(record, found=True, restored=clocks)
