"""Writing a file so that a crash or a power cut leaves the old file or the new one.

The data goes to a temporary file in the same folder, is flushed to disk, and is renamed over
the target; then the folder itself is flushed, so the rename survives a power cut too. The
restore record, the daemon's state and baseline files and the background jobs' checkpoints
are all written this way.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_durably(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path``: temporary file, fsync, rename, fsync of the folder."""
    write_bytes_durably(path, (json.dumps(data, indent=1) + "\n").encode())


def write_bytes_durably(
    path: str | os.PathLike[str], data: bytes, temporary_infix: str = "."
) -> None:
    """Write ``data`` to ``path`` the same way; the temporary file is named
    ``.<name><temporary_infix>...`` in the same folder (so a caller can find stale ones)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{temporary_infix}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
