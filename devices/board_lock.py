"""One tuner per board: an exclusive lock per sysfs root, held while its clocks are driven.

Clocks are board-wide. Two daemons (or a daemon and ``ecoserve profile``, or a decorated
function) tuning the same cpufreq and devfreq files would each undo the other's writes, and
each would measure the other's choices as its own. So whoever opens the sysfs device first
takes this lock, and a second one is refused at start with the holder named.

The lock is ``flock(2)`` on a file in the restore folder (next to the restore record, keyed
by the same hash of the resolved sysfs root). The kernel drops an ``flock`` when its holder
dies, SIGKILL and OOM kill included, so a file left by a dead process is simply taken over;
the file is never deleted (deleting a lock file races with a process about to lock it). It
holds the holder's pid, start time and command line, for the refusal's message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devices.base import DeviceError

log = logging.getLogger(__name__)

#: How long a refused opener waits for a holder that has locked but not yet said who it is.
_HOLDER_WAIT_S = 0.5


class ClocksInUseError(DeviceError):
    """Another live process holds the lock of these clocks."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a board's lock, as it wrote itself into the file."""

    pid: int
    started: float | None
    command: str

    def describe(self) -> str:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
            if self.started is not None
            else "at an unknown time"
        )
        return f"pid {self.pid}, started {when}" + (f", {self.command}" if self.command else "")


def lock_path(sysfs_root: str | os.PathLike[str], lock_dir: str | os.PathLike[str]) -> Path:
    """The lock file of ``sysfs_root`` in ``lock_dir`` (one per root, whatever its spelling)."""
    key = hashlib.sha256(str(Path(sysfs_root).resolve()).encode()).hexdigest()[:12]
    return Path(lock_dir) / f"tuner-{key}.lock"


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing, or the process gone: the message says "unknown"
        return None


def read_holder(path: Path) -> Holder | None:
    """The holder written in ``path``, or None when it is empty or unreadable."""
    try:
        data = json.loads(path.read_text())
        return Holder(int(data["pid"]), data.get("started"), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class BoardLock:
    """The held lock of one sysfs root; ``release`` is idempotent."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"BoardLock({str(self.path)!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def acquire(
        cls, sysfs_root: str | os.PathLike[str], lock_dir: str | os.PathLike[str]
    ) -> BoardLock:
        """Take the lock or raise ``ClocksInUseError`` naming the holder.

        OSError when the lock file cannot be created (the caller decides what that means).
        """
        path = lock_path(sysfs_root, lock_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClocksInUseError(_refusal(path, sysfs_root)) from None
        except BaseException:
            os.close(fd)
            raise
        previous = read_holder(path)
        if previous is not None and previous.pid != os.getpid():
            log.info("taking over %s, left by %s (no longer running)", path, previous.describe())
        me = {
            "pid": os.getpid(),
            "started": _process_started(os.getpid()),
            "command": " ".join(sys.argv)[:200],
            "sysfs_root": str(Path(sysfs_root).resolve()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: see the module's docstring)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _refusal(path: Path, sysfs_root: str | os.PathLike[str]) -> str:
    deadline = time.monotonic() + _HOLDER_WAIT_S
    holder = read_holder(path)
    while holder is None and time.monotonic() < deadline:  # locked, not yet written
        time.sleep(0.02)
        holder = read_holder(path)
    who = holder.describe() if holder is not None else "a process that has not said who it is"
    return (
        f"another ecoserve process tunes the clocks under {sysfs_root} ({who}); one tuner per "
        f"board: stop it first (lock {path})"
    )


def take_board_lock(
    sysfs_root: str | os.PathLike[str], lock_dir: str | os.PathLike[str] | None = None
) -> BoardLock | None:
    """The lock of ``sysfs_root`` in ``lock_dir`` (default: the restore folder).

    None, with a warning, when the folder cannot be written: the restore record cannot be
    written there either, so the clocks will be left alone and there is nothing to guard.
    """
    from devices.restore_record import default_restore_dir

    folder = Path(lock_dir) if lock_dir is not None else default_restore_dir()
    try:
        return BoardLock.acquire(sysfs_root, folder)
    except OSError as exc:
        log.warning(
            "cannot take the tuner lock in %s (%s); the clocks will be left alone",
            folder,
            exc.strerror or exc,
        )
        return None
