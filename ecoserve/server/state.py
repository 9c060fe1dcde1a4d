"""Saving the tuner's state to a file and resuming from it, so a restart does not re-explore.

The file is JSON, written atomically (temporary file + rename) after every window and at
exit. It holds the tuner's ``state_dict``, the baseline (E0, L0), pinned knobs and the
window count, tagged with the model, device and accounting they were measured for: a
file from another model or device is ignored with a warning rather than trusted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ecoserve.controller import Controller, WindowReport
from ecoserve.cost import Baseline
from ecoserve.runtime import RuntimeObserver

log = logging.getLogger("ecoserve.server.state")

FORMAT = 1


def snapshot(controller: Controller, model: str, device: str) -> dict[str, Any]:
    """Everything needed to resume tuning, as JSON-ready data."""
    baseline = controller.baseline
    return {
        "format": FORMAT,
        "saved_at": time.time(),
        "model": model,
        "device": device,
        "accounting": controller.accounting.value,
        "tuner": controller.tuner.name,
        "tuner_state": controller.tuner.state_dict(),
        "baseline": asdict(baseline) if baseline is not None else None,
        "config": list(controller.config),
        "values": controller.values(),
        "pinned": dict(controller.pinned),
        "windows_closed": controller.windows_closed,
    }


def write_atomic(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resume(controller: Controller, path: str | Path, model: str, device: str) -> list[str]:
    """Load a saved state into ``controller`` (before it starts); returns what was restored.

    Anything missing, unreadable or measured for another model/device is skipped with a
    warning: the daemon then measures afresh instead of refusing to start.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("state file %s unreadable (%s); starting fresh", path, exc)
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.warning("state file %s has an unknown format; starting fresh", path)
        return []
    if data.get("model") != model or data.get("device") != device:
        log.warning(
            "state file %s was saved for model %s on %s, not %s on %s; starting fresh",
            path, data.get("model"), data.get("device"), model, device,
        )  # fmt: skip
        return []
    restored: list[str] = []
    base = data.get("baseline")
    if isinstance(base, dict) and data.get("accounting") == controller.accounting.value:
        try:
            controller.baseline = Baseline(
                float(base["energy_per_request_j"]),
                float(base["latency_s"]),
                str(base.get("accounting", controller.accounting.value)),
            )
            restored.append("baseline")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state file %s: bad baseline (%s); measuring a new one", path, exc)
    try:
        controller.tuner.load_state_dict(data["tuner_state"])
        restored.append("tuner")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("state file %s: tuner state not resumed (%s)", path, exc)
    if "tuner" in restored:
        controller.windows_closed = int(data.get("windows_closed", 0))
        for name, index in dict(data.get("pinned") or {}).items():
            if controller.space.has(name):
                knob = controller.space.knobs[controller.space.axis(name)]
                if 0 <= int(index) < knob.size:
                    controller.pinned[name] = int(index)
    return restored


class StateSaver(RuntimeObserver):
    """Writes the state file after each window; also saves a newly measured baseline."""

    def __init__(
        self,
        controller: Controller,
        path: str | None,
        model: str,
        device: str,
        baseline_path: str | None = None,
    ) -> None:
        self.controller = controller
        self.path = path
        self.model = model
        self.device = device
        self.baseline_path = baseline_path
        self._baseline_saved = baseline_path is not None and controller.baseline is not None

    def save(self) -> None:
        if self.path:
            try:
                write_atomic(self.path, snapshot(self.controller, self.model, self.device))
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.path, exc)
        measured = self.controller.baseline is not None and self.controller.phase == "tuning"
        if self.baseline_path and not self._baseline_saved and measured:
            try:
                self.controller.baseline.save(self.baseline_path)
                self._baseline_saved = True
            except OSError as exc:
                log.warning("cannot write baseline file %s: %s", self.baseline_path, exc)

    def on_window(self, report: WindowReport) -> None:
        self.save()
