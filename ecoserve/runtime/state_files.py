"""The cost's baseline as a file the runtime keeps across restarts.

The core never touches a file; the runtime reads a saved baseline before it builds the
engine and writes the measured one back, durably (``devices.durable``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from devices.durable import write_json_durably
from ecoserve.core.cost import Baseline


def save_baseline(baseline: Baseline, path: str | Path) -> None:
    write_json_durably(path, asdict(baseline))


#: Largest baseline file read: it holds three numbers.
MAX_BASELINE_BYTES = 64 * 1024


def load_baseline(path: str | Path) -> Baseline:
    """The baseline saved at ``path``; ValueError says what is wrong and how to fix it."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_BASELINE_BYTES:
            raise ValueError(f"{size} bytes, over the {MAX_BASELINE_BYTES} a baseline needs")
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
