"""What a fleet is made of: its boards, its policy and the serve settings every board runs.

Read from a ``ecoserve fleet`` command line, from the ``args`` of a Ray Serve config file, or
from ``serve run ecoserve.rayfleet.app:build_app key=value``; all three go through
:meth:`FleetSettings.from_args`, so the same keys mean the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ecoserve.background.data_parallel import LendSettings, shardable_job
from ecoserve.core.fleet import (
    DEFAULTS,
    POLICIES,
    RENAMED_POLICIES,
    FleetParams,
    parse_kind_counts,
    policy_name,
)
from ecoserve.server.deprecated import upgrade_keys, warn
from ecoserve.server.options import RENAMED
from ecoserve.server.settings import ServeSettings

#: The policies a live fleet can run (the oracle needs the future: replay only).
LIVE_POLICIES = tuple(p for p in POLICIES if p != "oracle")
#: Seconds a woken board may take to answer before it counts as failed, per board kind.
#: A stated assumption: four times the replay's 45 s from power-on to serving.
BOOT_TIMEOUT_S: Mapping[str, float] = MappingProxyType(
    {"nano": 180.0, "xavier-nx": 180.0, "orin": 180.0}
)
#: For a kind not in the table.
DEFAULT_BOOT_TIMEOUT_S = 180.0
#: Settings that no longer mean anything, and what to use instead (a line on stderr, not an
#: error, so an old config file still starts the fleet).
DROPPED: Mapping[str, str] = MappingProxyType(
    {
        "capacity_share": "slo_s: a board's capacity is now the highest rate it serves within "
        "the fleet's latency target, estimated from its own batch times",
    }
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class BoardSettings:
    """One board: its name (and Ray custom resource), its device, what parking runs.

    ``device`` is an ``ecoserve serve --device`` spec; the default is the virtual board of
    ``kind``. ``park_command`` / ``unpark_command`` are run by the ingress (which sits next
    to a BMC or PMBus controller) with ``{board}`` replaced by the name; parking always also
    pins the board's clocks at their minimum first. ``wake_s`` is how long an unparked board
    is expected to take to serve again (a power-on boot, when the park command powers it
    off): the policy wakes that far ahead of need. The board serves once it answers; one that
    has not answered ``boot_timeout_s`` after its unpark command is marked failed
    (default: :data:`BOOT_TIMEOUT_S` for its kind).
    """

    name: str
    kind: str = "xavier-nx"
    device: str | None = None
    wake_s: float = 0.0
    park_command: str | None = None
    unpark_command: str | None = None
    boot_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"board name {self.name!r}: use letters, digits, '-', '_' or '.' (at most 63)"
            )
        if not self.wake_s >= 0:
            raise ValueError(f"board {self.name}: wake_s must be >= 0")
        if self.boot_timeout_s is not None and not self.boot_timeout_s > 0:
            raise ValueError(f"board {self.name}: boot_timeout_s must be > 0")

    @property
    def boot_timeout(self) -> float:
        """Seconds to wait for a woken board to answer (its own, or its kind's default)."""
        if self.boot_timeout_s is not None:
            return self.boot_timeout_s
        return BOOT_TIMEOUT_S.get(self.kind, DEFAULT_BOOT_TIMEOUT_S)

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
    (tuner state, shutdown record, restore record). The policy's settings default to the
    fleet's one table (``ecoserve.core.fleet.FleetParams``), the replay's too.
    ``slo_s``: the fleet's p99 latency target, which a board's capacity is defined by and its
    tuner keeps. ``wake_ramp_s``: how long a woken board's traffic share takes to rise to its
    capacity's (consolidation). ``ingress_resource``: a Ray custom resource that pins the ingress to the node
    offering it (the head, next to the BMC its park and unpark commands reach); by default
    Ray places it. ``stats_timeout_s``: a board whose stats call has not answered for this long counts as not
    answering (a policy step waits at most half a period for it; a later answer is used at
    the next step). ``lend``: lend parked boards to one data-parallel training job instead of
    powering them off (``ecoserve.background.data_parallel.LendSettings``'s keys).
    """

    boards: tuple[BoardSettings, ...]
    policy: str = "consolidation"
    period_s: float = 1.0
    headroom: float = DEFAULTS.headroom
    hysteresis: float = DEFAULTS.hysteresis
    park_after_s: float = DEFAULTS.park_after_s
    trend_s: float = DEFAULTS.trend_s
    slo_s: float = DEFAULTS.slo_s
    wake_ramp_s: float = DEFAULTS.wake_ramp_s
    ray_target_ongoing: float = DEFAULTS.ray_target_ongoing
    stats_timeout_s: float = 5.0
    ingress_resource: str | None = None
    model: str = "builtin:cnn"
    state_dir: str | None = None
    serve: Mapping[str, Any] = field(default_factory=dict)
    lend: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.boards:
            raise ValueError("a fleet needs at least one board (boards=KIND:COUNT,...)")
        names = [b.name for b in self.boards]
        if len(set(names)) != len(names):
            raise ValueError(f"board names must be unique, got {names}")
        if self.policy in RENAMED_POLICIES:
            warn("fleet settings", f"policy {self.policy!r}", repr(policy_name(self.policy)))
            object.__setattr__(self, "policy", policy_name(self.policy))
        if self.policy not in LIVE_POLICIES:
            raise ValueError(f"unknown fleet policy {self.policy!r}; use one of {LIVE_POLICIES}")
        if not self.period_s > 0 or not self.stats_timeout_s > 0:
            raise ValueError("period_s and stats_timeout_s must be > 0")
        self.params  # noqa: B018 - checks the policy's settings
        if self.lend is not None:
            lend = LendSettings.from_mapping(self.lend)  # checked now, used by the ingress
            shardable_job(lend.job, lend.options)  # a bad job fails here, before Ray starts

    @property
    def params(self) -> FleetParams:
        """The policy's settings as the fleet's one table has them."""
        return FleetParams(
            headroom=self.headroom,
            hysteresis=self.hysteresis,
            park_after_s=self.park_after_s,
            trend_s=self.trend_s,
            ray_target_ongoing=self.ray_target_ongoing,
            slo_s=self.slo_s,
            wake_ramp_s=self.wake_ramp_s,
        )

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> FleetSettings:
        """From flat keys: ``boards`` is ``KIND:COUNT,...`` or a list of board tables."""
        data = upgrade_keys(args, {"engine": "serve"}, "fleet settings")
        for old, new in DROPPED.items():
            if old in data:
                warn("fleet settings", f"{old} (now ignored)", new)
                del data[old]
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
        for key in (
            "period_s",
            "headroom",
            "hysteresis",
            "park_after_s",
            "trend_s",
            "slo_s",
            "wake_ramp_s",
            "ray_target_ongoing",
            "stats_timeout_s",
        ):
            if key in data:
                try:
                    data[key] = float(data[key])
                except (TypeError, ValueError):
                    raise ValueError(f"{key}={data[key]!r}: expected a number") from None
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


def board_settings(fleet: FleetSettings, board: BoardSettings) -> ServeSettings:
    """The ``ecoserve serve`` settings one board runs with.

    One torch thread per board unless ``serve`` says otherwise: on one machine the virtual
    boards share its cores. The fleet's ``state_dir`` holds each board's files: its tuner
    state, its shutdown record and (unless ``serve`` names a ``restore_dir``) its restore record.
    Each board's tuner keeps the fleet's latency target (p99 within ``slo_s``) unless ``serve``
    names its own: the target a board's capacity is defined by, as in the replay.
    """
    base = ServeSettings(
        model=fleet.model, torch_threads=1, slo_latency_s=fleet.slo_s, slo_percentile=99.0
    )
    settings = replace(base, **dict(fleet.serve)) if fleet.serve else base
    state_file = None
    if fleet.state_dir:
        state_file = f"{fleet.state_dir}/{board.name}.state.json"
    return replace(
        settings,
        device=board.device_spec,
        state_file=state_file or settings.state_file,
        restore_dir=settings.restore_dir or fleet.state_dir,
    )
