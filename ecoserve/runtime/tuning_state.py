"""The tuner's state as a file the runtime saves and resumes, so a restart does not re-explore.

The file is JSON, written durably (temporary file, fsync, rename) after every window and at
exit. It holds the tuner's ``state_dict``, the baseline (E0, L0), pinned knobs and the
window count, tagged with the model, device and accounting they were measured for: a
file from another model or device is ignored with a warning rather than trusted. So is one
past :data:`MAX_STATE_BYTES` or holding a list past :data:`MAX_ENTRIES`: no tuner keeps that
much, and parsing it held the start for many seconds and hundreds of megabytes. A newly
measured baseline also goes to the baseline file, when one is configured.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from devices.durable import write_json_durably
from ecoserve.core.cost import Baseline
from ecoserve.core.engine import Engine
from ecoserve.runtime.state_files import save_baseline

log = logging.getLogger("ecoserve.runtime.tuning_state")

FORMAT = 1
#: Largest state file resumed; a tuner's state over the largest search space is far smaller.
MAX_STATE_BYTES = 8 * 1024 * 1024
#: Most entries in any one list of the state (a tuner's history of measured configurations).
MAX_ENTRIES = 100_000


def _longest_list(value: Any) -> int:
    """Entries in the longest list anywhere in ``value`` (parsed JSON)."""
    longest = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            longest = max(longest, len(item))
            stack.extend(x for x in item if isinstance(x, (list, dict)))
        elif isinstance(item, dict):
            stack.extend(x for x in item.values() if isinstance(x, (list, dict)))
    return longest


def snapshot(engine: Engine[Any], model: str, device: str) -> dict[str, Any]:
    """Everything needed to resume tuning, as JSON-ready data, tagged with what it is for."""
    return {
        "format": FORMAT,
        "saved_at": time.time(),
        "model": model,
        "device": device,
        **engine.state_dict(),
    }


def resume(engine: Engine[Any], path: str | Path, model: str, device: str) -> list[str]:
    """Load a saved state into ``engine`` (before it starts); returns what was restored.

    Anything missing, unreadable or measured for another model/device is skipped with a
    warning: the daemon then measures afresh instead of refusing to start.
    """
    try:
        size = Path(path).stat().st_size
        if size > MAX_STATE_BYTES:
            log.warning(
                "state file %s is %d bytes, over the %d a tuner's state needs; not resumed, "
                "starting fresh (it is replaced after the first window)",
                path, size, MAX_STATE_BYTES,
            )  # fmt: skip
            return []
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("state file %s unreadable (%s); starting fresh", path, exc)
        return []
    if (entries := _longest_list(data)) > MAX_ENTRIES:
        log.warning(
            "state file %s holds a list of %d entries, over the %d a tuner keeps; not "
            "resumed, starting fresh",
            path, entries, MAX_ENTRIES,
        )  # fmt: skip
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.warning("state file %s has an unknown format; starting fresh", path)
        return []
    if data.get("model") != model or data.get("device") != device:
        log.warning(
            "state file %s was saved for model %s on %s, not %s on %s; starting fresh",
            path,
            data.get("model"),
            data.get("device"),
            model,
            device,
        )
        return []
    try:
        restored, problems = engine.load_state_dict(data)
    except Exception as exc:  # never a crash loop under systemd's Restart=
        log.warning("state file %s not resumed (%s); starting fresh", path, exc)
        return []
    for problem in problems:
        log.warning("state file %s: %s", path, problem)
    return restored


class TuningState:
    """Where one runtime keeps its tuner state (``path``) and its baseline (``baseline_path``).

    ``model`` and ``device`` tag the state file, so a file measured for something else is
    never resumed.
    """

    def __init__(
        self,
        path: str | None,
        model: str,
        device: str,
        baseline_path: str | None = None,
    ) -> None:
        self.path = path
        self.model = model
        self.device = device
        self.baseline_path = baseline_path
        #: What :meth:`resume` restored (``baseline``, ``tuner``, ...).
        self.resumed: list[str] = []
        self._baseline_saved: Baseline | None = None

    def resume(self, engine: Engine[Any]) -> list[str]:
        """Resume ``engine`` from the state file, if there is one (before it starts)."""
        # the baseline the file holds: a provisional one is replaced by the re-measured one
        self._baseline_saved = engine.baseline if self.baseline_path is not None else None
        if self.path:
            self.resumed = resume(engine, self.path, self.model, self.device)
            if self.resumed:
                log.info("resumed %s from %s", " and ".join(self.resumed), self.path)
        return self.resumed

    def save(self, engine: Engine[Any]) -> None:
        """Write the state file, and the baseline file when a new baseline was measured."""
        if self.path:
            try:
                write_json_durably(self.path, snapshot(engine, self.model, self.device))
            except OSError as exc:
                log.warning("cannot write state file %s: %s", self.path, exc)
        baseline = engine.baseline
        measured = engine.phase == "tuning"
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
