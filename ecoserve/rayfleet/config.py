"""What a fleet is made of: its boards, its policy and the serve settings every board runs.

Read from a ``ecoserve fleet`` command line, from the ``args`` of a Ray Serve config file, or
from ``serve run ecoserve.rayfleet.app:build_app key=value``; all three go through
:meth:`FleetSettings.from_args`, so the same keys mean the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ecoserve.core.fleet import parse_kind_counts
from ecoserve.server.deprecated import upgrade_keys
from ecoserve.server.options import RENAMED

POLICIES = ("consolidation", "all-on", "ray-rule")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class BoardSettings:
    """One board: its name (and Ray custom resource), its device, what parking runs.

    ``device`` is an ``ecoserve serve --device`` spec; the default is the virtual board of
    ``kind``. ``park_command`` / ``unpark_command`` are run by the ingress (which sits next
    to a BMC or PMBus controller) with ``{board}`` replaced by the name; parking always also
    pins the board's clocks at their minimum first. ``wake_s`` is how long an unparked board
    takes to serve again (a power-on boot, when the park command powers it off).
    """

    name: str
    kind: str = "xavier-nx"
    device: str | None = None
    wake_s: float = 0.0
    park_command: str | None = None
    unpark_command: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"board name {self.name!r}: use letters, digits, '-', '_' or '.' (at most 63)"
            )
        if not self.wake_s >= 0:
            raise ValueError(f"board {self.name}: wake_s must be >= 0")

    @property
    def resource(self) -> str:
        """The Ray custom resource that pins this board's replica to its node."""
        return f"board_{self.name}"

    @property
    def device_spec(self) -> str:
        return self.device or f"virtual:{self.kind}"


@dataclass(frozen=True)
class FleetSettings:
    """The whole fleet (see the module doc).

    ``serve`` overrides ``ServeSettings`` fields for every board (the ``[serve]`` table, as in
    an ``ecoserve serve`` config file). ``state_dir`` is the fleet's folder of per-board files
    (tuner state, shutdown record, restore record).
    """

    boards: tuple[BoardSettings, ...]
    policy: str = "consolidation"
    period_s: float = 1.0
    headroom: float = 0.5
    hysteresis: float = 0.15
    park_after_s: float = 30.0
    capacity_share: float = 0.6
    ray_target_ongoing: float = 2.0
    model: str = "builtin:cnn"
    state_dir: str | None = None
    serve: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.boards:
            raise ValueError("a fleet needs at least one board (boards=KIND:COUNT,...)")
        names = [b.name for b in self.boards]
        if len(set(names)) != len(names):
            raise ValueError(f"board names must be unique, got {names}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown fleet policy {self.policy!r}; use one of {POLICIES}")
        if not self.period_s > 0 or not 0 < self.capacity_share <= 1:
            raise ValueError("period_s must be > 0 and capacity_share within (0, 1]")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> FleetSettings:
        """From flat keys: ``boards`` is ``KIND:COUNT,...`` or a list of board tables."""
        data = upgrade_keys(args, {"engine": "serve"}, "fleet settings")
        if "serve" in data:
            data["serve"] = upgrade_keys(data["serve"], RENAMED, "fleet settings [serve]")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fleet setting(s) {unknown}; known: {sorted(known)}")
        raw = data.pop("boards", None)
        if raw is None:
            raise ValueError("give boards, e.g. boards=xavier-nx:2,nano:1")
        boards = parse_boards(raw)
        for key in ("period_s", "headroom", "hysteresis", "park_after_s", "capacity_share",
                    "ray_target_ongoing"):
            if key in data:
                data[key] = float(data[key])
        return cls(boards=boards, **data)


def parse_boards(raw: Any) -> tuple[BoardSettings, ...]:
    """``"xavier-nx:2,nano:1"`` (named ``xavier-nx-0``...) or a list of board mappings."""
    if isinstance(raw, str):
        out: list[BoardSettings] = []
        for kind, count in parse_kind_counts(raw, "boards", "nano:2"):
            start = sum(1 for b in out if b.kind == kind)
            out += [BoardSettings(f"{kind}-{start + i}", kind) for i in range(count)]
        return tuple(out)
    if isinstance(raw, (list, tuple)):
        boards = []
        for entry in raw:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"boards: each entry needs at least a name, got {entry!r}")
            allowed = {f.name for f in fields(BoardSettings)}
            extra = sorted(set(entry) - allowed)
            if extra:
                raise ValueError(f"board {entry['name']}: unknown key(s) {extra}")
            boards.append(BoardSettings(**dict(entry)))
        return tuple(boards)
    raise ValueError(f"boards: expected 'KIND:COUNT,...' or a list of boards, got {raw!r}")
