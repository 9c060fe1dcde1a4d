"""Files the runtime keeps across restarts: JSON written durably, and the cost's baseline.

The core never touches a file; the runtime reads a saved baseline before it builds the
engine and writes the measured one back. Writes go to a temporary file in the same folder,
are flushed to disk, then renamed over the old file, so a crash or power cut leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devices.durable import write_json_durably
from ecoserve.core.cost import Baseline


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` durably (``devices.durable``: temp, fsync, rename)."""
    write_json_durably(path, data)


def save_baseline(baseline: Baseline, path: str | Path) -> None:
    write_json_atomic(path, asdict(baseline))


def load_baseline(path: str | Path) -> Baseline:
    """The baseline saved at ``path``; ValueError says what is wrong and how to fix it."""
    try:
        data = json.loads(Path(path).read_text())
        return Baseline(
            float(data["energy_per_request_j"]),
            float(data["latency_s"]),
            str(data.get("accounting", "active")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"cannot read baseline file {path}: {exc}; expected JSON with "
            "energy_per_request_j and latency_s (delete it to measure a new baseline)"
        ) from exc
