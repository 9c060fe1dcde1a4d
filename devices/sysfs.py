"""Reading and writing kernel attribute files under a configurable root.

Every path is relative to ``root``: a user points it at ``/``, a test at a temporary
folder holding a fake tree (``devices.testing``), and the same actuator code runs on both.
The kernel's refusals come back as ``OSError``; this module turns them into errors that
name the file and say what to do:

- ``EACCES`` / ``EPERM`` -> ``PermissionDeniedError`` (run as root, or grant write access
  with a udev rule — see the README's "Permissions" section);
- ``EINVAL`` -> ``DeviceError`` naming the file and the value the kernel refused;
- ``EBUSY`` (some 5.x kernels during CPU hotplug) -> a write is retried a few times, then
  ``DeviceError``; a read is not retried (cpufreq answers EBUSY for every file of a policy
  whose CPUs are all offline, which does not pass);
- ``EMFILE`` / ``ENFILE`` (the process or the system is out of file descriptors, e.g. a
  flood of idle connections) -> ``TransientDeviceError``: the file is fine, so the caller
  retries later instead of giving the knob up.

Faults a test cannot produce with file modes (the suite runs as root, where ``chmod 0444``
does not stop a write) are injected through a ``SysfsHook`` passed as ``hook=``: it sees
every read and write before it happens and may refuse it with an ``OSError``, exactly
where the kernel would. ``devices.testing.FakeKernel`` is the hook the tests use.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Protocol

from devices.base import (
    TRANSIENT_ERRNOS,
    DeviceError,
    PermissionDeniedError,
    TransientDeviceError,
)

#: Appended to every permission error so the user learns the fix, not only the refusal.
PERMISSION_FIX = (
    "Run ecoserve as root, or grant write access to the clock files with a udev rule "
    "(see the README, 'Permissions')."
)


def permission_warning(what: str, exc: PermissionDeniedError) -> str:
    """The one warning an actuator records when it loses a knob to permissions."""
    return f"{what} control disabled: {exc} Serving continues without this knob."


class SysfsHook(Protocol):
    """Sees writes before they reach the file; used to simulate the kernel in tests."""

    def before_write(self, path: Path, rel: str, text: str) -> str:
        """Return the text to store, or raise ``OSError`` as the kernel would."""
        ...

    def before_read(self, path: Path, rel: str) -> None:
        """Raise ``OSError`` to make a read fail as the kernel would; else do nothing."""
        ...

    def access_error(self, rel: str) -> int | None:
        """The errno a write to ``rel`` would fail with, or None if it would be accepted."""
        ...


class SysfsRoot:
    """The sysfs tree seen from ``root``; all paths given to it are relative to that root.

    A leading ``/`` on a path is ignored, so ``"/sys/class/devfreq"`` and
    ``"sys/class/devfreq"`` name the same file under any root.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        hook: SysfsHook | None = None,
        busy_retries: int = 5,
        busy_delay_s: float = 0.02,
    ) -> None:
        self.root = Path(root)
        self.hook = hook
        self.busy_retries = busy_retries
        self.busy_delay_s = busy_delay_s

    def __repr__(self) -> str:
        return f"SysfsRoot({str(self.root)!r})"

    def path(self, rel: str) -> Path:
        """The real location of ``rel`` under the root."""
        return self.root / rel.lstrip("/")

    def show(self, rel: str) -> str:
        """``rel`` as the user should see it in messages: absolute on the real box."""
        return str(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def is_dir(self, rel: str) -> bool:
        return self.path(rel).is_dir()

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob ``pattern`` (relative to the root), sorted."""
        base = self.root
        found = base.glob(pattern.lstrip("/"))
        return sorted(p.relative_to(base).as_posix() for p in found)

    def read_text(self, rel: str) -> str:
        """The file's contents, stripped of whitespace and device-tree NUL terminators."""
        path = self.path(rel)
        try:
            if self.hook is not None:
                self.hook.before_read(path, rel)
            raw = path.read_bytes()
        except OSError as exc:
            raise self._error(exc, rel, "read") from exc
        return raw.decode("utf-8", "replace").strip().strip("\x00").strip()

    def read_int(self, rel: str) -> int:
        text = self.read_text(rel)
        try:
            return int(text)
        except ValueError:
            raise DeviceError(f"{self.show(rel)}: expected an integer, found {text!r}") from None

    def read_ints(self, rel: str) -> list[int]:
        """A whitespace-separated list of integers (e.g. a frequency table)."""
        words = self.read_words(rel)
        try:
            return [int(w) for w in words]
        except ValueError:
            raise DeviceError(
                f"{self.show(rel)}: expected integers, found {' '.join(words)!r}"
            ) from None

    def read_words(self, rel: str) -> list[str]:
        return self.read_text(rel).split()

    def write(self, rel: str, value: str | int) -> None:
        """Write ``value`` in one system call, retrying while the kernel answers EBUSY."""
        text = str(value)
        path = self.path(rel)
        for attempt in range(self.busy_retries + 1):
            try:
                data = text if self.hook is None else self.hook.before_write(path, rel, text)
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
                return
            except OSError as exc:
                if exc.errno == errno.EBUSY and attempt < self.busy_retries:
                    time.sleep(self.busy_delay_s)
                    continue
                raise self._error(exc, rel, "write", text) from exc

    def access_error(self, rel: str) -> int | None:
        """Why a write to ``rel`` would fail (an errno), without writing; None if it would not.

        Uses the file's mode against this process's credentials, so it answers correctly for
        a non-root user on a real box; the hook answers for simulated refusals.
        """
        path = self.path(rel)
        if not path.exists():
            return errno.ENOENT
        if self.hook is not None:
            err = self.hook.access_error(rel)
            if err is not None:
                return err
        if not os.access(path, os.W_OK):
            return errno.EACCES
        return None

    def write_limits(self, min_rel: str, max_rel: str, low: int, high: int) -> None:
        """Set a ``[low, high]`` pair of limit files so that min never exceeds max in between.

        Older kernels answer EINVAL when a write would cross the other limit (newer ones
        clamp silently, which is as bad): when raising past the current max, write max first;
        otherwise write min first.
        """
        if low > high:
            raise ValueError(f"limits out of order: {low} > {high}")
        if low > self.read_int(max_rel):
            self.write(max_rel, high)
            self.write(min_rel, low)
        else:
            self.write(min_rel, low)
            self.write(max_rel, high)

    def _error(self, exc: OSError, rel: str, op: str, value: str | None = None) -> DeviceError:
        err = self._describe(exc, rel, op, value)
        err.errno_name = errno.errorcode.get(exc.errno or 0, "EIO")
        return err

    def _describe(self, exc: OSError, rel: str, op: str, value: str | None = None) -> DeviceError:
        where = self.show(rel)
        code = exc.errno
        if errno.errorcode.get(code or 0) in TRANSIENT_ERRNOS:
            reason = exc.strerror or str(exc)
            return TransientDeviceError(f"cannot {op} {where} for now: {reason}")
        if code in (errno.EACCES, errno.EPERM):
            return PermissionDeniedError(
                f"cannot {op} {where}: permission denied. {PERMISSION_FIX}"
            )
        if code == errno.EINVAL and value is not None:
            return DeviceError(f"the kernel refused {value!r} for {where} (invalid argument)")
        if code == errno.EBUSY and op == "read":
            # cpufreq answers EBUSY for every file of a policy whose CPUs are all offline.
            return DeviceError(f"cannot read {where}: device busy (are its CPUs offline?)")
        if code == errno.EBUSY:
            return DeviceError(
                f"cannot {op} {where}: device busy after {self.busy_retries + 1} attempts"
            )
        if code == errno.ENOENT:
            return DeviceError(f"cannot {op} {where}: no such file")
        reason = exc.strerror or str(exc)
        return DeviceError(f"cannot {op} {where}: {reason}")
