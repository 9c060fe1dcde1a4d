"""Reading one number from a sysfs file, with the kernel's refusals turned into clear errors.

Every sysfs meter reads through an injectable ``read_text`` callable so that tests can run
the real parsing code against a fake tree, and can simulate ``EACCES`` even when the test
process runs as root (where ``chmod 000`` does not stop a read).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from devices.base import DeviceError, PermissionDeniedError

#: Reads a whole (small) file as text; ``Path.read_text`` on a real box.
ReadText = Callable[[Path], str]


def read_text(path: Path) -> str:
    """Default reader: sysfs attributes are tiny, so one read is one consistent snapshot."""
    return path.read_text()


def read_number(path: Path, read: ReadText = read_text, fix: str = "") -> float:
    """Read ``path`` and parse it as a number.

    ``fix`` is appended to a permission error so the user learns how to grant access
    rather than just that access was refused.
    """
    try:
        text = read(path)
    except PermissionError as exc:
        hint = f" {fix}" if fix else ""
        raise PermissionDeniedError(f"cannot read {path}: permission denied.{hint}") from exc
    except OSError as exc:
        raise DeviceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return float(text.strip())
    except ValueError as exc:
        raise DeviceError(f"{path}: expected a number, found {text.strip()!r}") from exc
