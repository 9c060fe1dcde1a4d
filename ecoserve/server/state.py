"""Saving the tuner's state to a file and resuming from it, so a restart does not re-explore.

The file is JSON, written durably (temporary file, fsync, rename) after every window and at
exit. It holds the tuner's ``state_dict``, the baseline (E0, L0), pinned knobs and the
window count, tagged with the model, device and accounting they were measured for: a
file from another model or device is ignored with a warning rather than trusted.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from devices.durable import write_json_durably
from ecoserve.core.controller import WindowReport
from ecoserve.runtime.driver import Runtime, RuntimeObserver
from ecoserve.runtime.state_files import save_baseline

log = logging.getLogger("ecoserve.server.state")

FORMAT = 1


def snapshot(runtime: Runtime, model: str, device: str) -> dict[str, Any]:
    """Everything needed to resume tuning, as JSON-ready data, tagged with what it is for."""
    return {
        "format": FORMAT,
        "saved_at": time.time(),
        "model": model,
        "device": device,
        **runtime.state_dict(),
    }


def resume(runtime: Runtime, path: str | Path, model: str, device: str) -> list[str]:
    """Load a saved state into ``runtime`` (before it starts); returns what was restored.

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
        )
        return []
    try:
        restored, problems = runtime.load_state_dict(data)
    except Exception as exc:  # never a crash loop under systemd's Restart=
        log.warning("state file %s not resumed (%s); starting fresh", path, exc)
        return []
    for problem in problems:
        log.warning("state file %s: %s", path, problem)
    return restored


class StateSaver(RuntimeObserver):
    """Writes the state file after each window; also saves a newly measured baseline."""

    def __init__(
        self,
        runtime: Runtime,
        path: str | None,
        model: str,
        device: str,
        baseline_path: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.path = path
        self.model = model
        self.device = device
        self.baseline_path = baseline_path
        # the baseline the file holds: a provisional one is replaced by the re-measured one
        self._baseline_saved = runtime.baseline if baseline_path is not None else None

    def save(self) -> None:
        if self.path:
            try:
                write_json_durably(self.path, snapshot(self.runtime, self.model, self.device))
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.path, exc)
        baseline = self.runtime.baseline
        measured = self.runtime.phase == "tuning"
        if (
            self.baseline_path
            and baseline is not None
            and measured
            and baseline != self._baseline_saved
        ):
            try:
                save_baseline(baseline, self.baseline_path)
                self._baseline_saved = baseline
            except OSError as exc:
                log.warning("cannot write baseline file %s: %s", self.baseline_path, exc)

    def on_window(self, report: WindowReport) -> None:
        self.save()
