"""Data-parallel training over a changing set of boards: who averages with whom, and when.

SoCFlow (group-wise parallelism with delayed aggregation) trains on the idle SoCs of a
cluster whose network is the bottleneck: the members are cut into groups, every step each
group averages within itself, and every ``k`` steps the groups' averages are averaged
across groups, so the slow cross-group exchange happens ``k`` times less often. With
grouping off every step is one plain all-reduce over everybody.

:class:`SyncPlan` is that schedule as a sans-IO object (no clock, no Ray, no tensors): a
driver asks it which member takes which data batch, tells it a step is done, and gets back
the :class:`Sync` that closes the step. Members join and leave only at step boundaries
(:meth:`SyncPlan.boundary`); groups are then formed again, deterministically, from the
sorted names. If the replicas have diverged since the last cross-group average, a boundary
that changes membership asks for one first, leavers included, so a board that leaves takes
none of the job's progress with it.

:func:`average_states` is what one average does to the replicas' ``state_dict``s (every
floating-point tensor averaged, weighted; everything else kept per replica), and
:class:`LendSettings` the operator's settings of the lent job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoserve.background.digits_finetune import DigitsFinetune
from ecoserve.background.specs import load_job

#: The job lent boards train when the settings name none.
DEFAULT_JOB = "builtin:digits-finetune"


def _whole(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be a whole number >= {low}")
    return value


@dataclass(frozen=True)
class Sync:
    """The averaging that closes step ``step`` (1-based, counted over the whole job).

    ``groups``: the sets of members whose parameters are averaged together, each group's
    first member being its leader; ``across``: the groups' averages are then averaged across
    groups (weighted by group size), so every replica ends the step identical.
    """

    step: int
    groups: tuple[tuple[str, ...], ...]
    across: bool

    @property
    def kind(self) -> str:
        """``all-reduce`` (one group), ``group`` (within groups only) or ``global``."""
        if len(self.groups) <= 1:
            return "all-reduce"
        return "global" if self.across else "group"

    @property
    def consistent(self) -> bool:
        """Every replica holds the same parameters after this sync."""
        return self.kind != "group"


@dataclass(frozen=True)
class Regroup:
    """A membership change carried out at the boundary after step ``step``.

    ``sync_first``: the replicas diverged since the last cross-group average, so the old
    members (``left`` among them) must be averaged across groups before anyone leaves;
    ``seed_from``: a staying member whose state (after that average) the joiners load, or
    None when no member stays (the driver's saved state seeds them).
    """

    step: int
    left: tuple[str, ...]
    joined: tuple[str, ...]
    members: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    sync_first: bool
    before: tuple[tuple[str, ...], ...]
    seed_from: str | None


def form_groups(members: Iterable[str], group_size: int | None) -> tuple[tuple[str, ...], ...]:
    """Groups of ``group_size`` from the sorted names (the last may be smaller); one group of
    everybody when ``group_size`` is None. Sorted, so every driver forms the same groups."""
    names = tuple(sorted(members))
    if not names:
        return ()
    if group_size is None:
        return (names,)
    return tuple(names[i : i + group_size] for i in range(0, len(names), group_size))


class SyncPlan:
    """The synchronisation schedule of a data-parallel job (see the module doc).

    ``group_size``: members per group, or None for plain all-reduce every step; ``k``: steps
    between cross-group averages (SoCFlow's delayed aggregation); ``step``, ``batches``:
    where a resumed job was (steps done, data batches consumed).
    """

    def __init__(
        self,
        members: Iterable[str] = (),
        group_size: int | None = None,
        k: int = 1,
        *,
        step: int = 0,
        batches: int = 0,
    ) -> None:
        if group_size is not None:
            _whole("group_size", group_size, 1)
        self.group_size = group_size
        self.k = _whole("k", k, 1)
        self.step = _whole("step", step, 0)
        self.batches = _whole("batches", batches, 0)
        names = list(members)
        for name in names:
            self._check_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"members must be distinct, got {names}")
        self.members: tuple[str, ...] = tuple(sorted(names))
        self.groups = form_groups(self.members, group_size)
        self.steps_by_member: dict[str, int] = {}
        self._joining: list[str] = []
        self._leaving: list[str] = []
        #: The last sync left the replicas unequal (a within-group-only average).
        self.diverged = False

    @staticmethod
    def _check_name(name: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a member is named by a non-empty string, got {name!r}")

    @property
    def grouping(self) -> bool:
        return self.group_size is not None

    def sync_at(self, step: int) -> Sync:
        """The sync closing ``step`` with the present groups (cross-group when k divides it)."""
        _whole("step", step, 1)
        return Sync(step, self.groups, across=step % self.k == 0)

    def shards(self) -> dict[str, int]:
        """Which data batch each member takes in the next step: consecutive batch numbers in
        member order, so no two members (and no two steps) train on the same batch."""
        return {name: self.batches + i for i, name in enumerate(self.members)}

    def finish_step(self, lost: Iterable[str] = ()) -> Sync:
        """Count the step the members just took; returns the sync that closes it.

        ``lost``: members whose replica died during the step; they are dropped first (their
        batch is skipped, their state since the last average is gone) and the sync is among
        the others.
        """
        if not self.members:
            raise RuntimeError("no member took a step: lend a board first")
        taken = len(self.members)
        for name in set(lost):
            self.drop(name)
        if not self.members:
            raise RuntimeError("every member was lost during the step")
        self.step += 1
        self.batches += taken
        for name in self.members:
            self.steps_by_member[name] = self.steps_by_member.get(name, 0) + 1
        sync = self.sync_at(self.step)
        self.diverged = not sync.consistent
        return sync

    # -- membership ------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return bool(self._joining or self._leaving)

    @property
    def joining(self) -> tuple[str, ...]:
        return tuple(self._joining)

    @property
    def leaving(self) -> tuple[str, ...]:
        return tuple(self._leaving)

    def join(self, name: str) -> None:
        """Ask for ``name`` to join at the next boundary."""
        self._check_name(name)
        if name in self._leaving:
            self._leaving.remove(name)  # recalled and lent again before the boundary
            return
        if name in self.members or name in self._joining:
            raise ValueError(f"board {name!r} is already in the job (or joining it)")
        self._joining.append(name)

    def leave(self, name: str) -> None:
        """Ask for ``name`` to leave at the next boundary."""
        if name in self._joining:
            self._joining.remove(name)  # lent and recalled before it ever took a step
            return
        if name not in self.members:
            raise ValueError(
                f"board {name!r} is not in the job; members: {', '.join(self.members) or 'none'}"
            )
        if name not in self._leaving:
            self._leaving.append(name)

    def boundary(self) -> Regroup | None:
        """Carry out the asked-for joins and leaves (None if there are none)."""
        if not self.pending:
            return None
        left = tuple(sorted(self._leaving))
        joined = tuple(sorted(self._joining))
        before = self.groups
        staying = [m for m in self.members if m not in left]
        sync_first = self.diverged and len(before) > 1
        self.members = tuple(sorted([*staying, *joined]))
        self.groups = form_groups(self.members, self.group_size)
        self._joining, self._leaving = [], []
        self.diverged = False  # averaged first, or only one group was ever apart
        return Regroup(
            step=self.step,
            left=left,
            joined=joined,
            members=self.members,
            groups=self.groups,
            sync_first=sync_first,
            before=before,
            seed_from=staying[0] if staying else None,
        )

    def drop(self, name: str) -> None:
        """Remove a member that is gone (its replica died) at once, without its state."""
        if name not in self.members:
            raise ValueError(f"board {name!r} is not in the job")
        if name in self._leaving:
            self._leaving.remove(name)
        self.members = tuple(m for m in self.members if m != name)
        self.groups = form_groups(self.members, self.group_size)


# -- what an average does to the replicas ---------------------------------------------------
def _float_paths(state: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    if isinstance(state, torch.Tensor):
        if state.is_floating_point():
            yield path, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _float_paths(value, (*path, key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _float_paths(value, (*path, i))


def float_tensors(state: Mapping[str, Any]) -> dict[tuple[Any, ...], torch.Tensor]:
    """Every floating-point tensor of a ``state_dict`` (weights, optimizer moments...) by its
    path: what replicas exchange (the rest, positions and random states, stays each one's)."""
    return {p: t for p, t in _float_paths(state)}


def mean_tensors(
    parts: Sequence[Mapping[tuple[Any, ...], torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[tuple[Any, ...], torch.Tensor]:
    """The weighted mean of replicas' :func:`float_tensors` (equal weights by default)."""
    if not parts:
        raise ValueError("nothing to average: no replica's tensors were given")
    w = [1.0] * len(parts) if weights is None else [float(x) for x in weights]
    if len(w) != len(parts) or not all(math.isfinite(x) and x > 0 for x in w):
        raise ValueError(f"weights {weights!r}: need one finite weight > 0 per replica")
    keys = set(parts[0])
    for other in parts[1:]:
        if set(other) != keys:
            raise ValueError("replicas of different jobs: their tensors differ in paths")
    total = sum(w)
    out = {}
    for key in parts[0]:
        shapes = {tuple(p[key].shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"tensor {key} has different shapes across replicas: {shapes}")
        acc = parts[0][key].detach().to(torch.float64) * w[0]
        for x, part in zip(w[1:], parts[1:]):
            acc += part[key].detach().to(torch.float64) * x
        out[key] = (acc / total).to(parts[0][key].dtype)
    return out


def with_tensors(state: Any, tensors: Mapping[tuple[Any, ...], torch.Tensor]) -> Any:
    """A copy of ``state`` with the tensors at ``tensors``' paths replaced."""

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if path in tensors:
            return tensors[path].clone()
        if isinstance(node, Mapping):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, tuple):
            return tuple(walk(v, (*path, i)) for i, v in enumerate(node))
        return node

    return walk(state, ())


def average_states(
    states: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Each replica's state with its floating-point tensors replaced by the weighted mean."""
    mean = mean_tensors([float_tensors(s) for s in states], weights)
    return [dict(with_tensors(s, mean)) for s in states]


# -- the operator's settings ----------------------------------------------------------------
@dataclass(frozen=True)
class LendSettings:
    """The job a fleet's lent boards train (the fleet config's ``lend`` table).

    ``job``: a ``--background`` spec; ``options``: its options; ``group_size``: boards per
    SoCFlow group (None: plain all-reduce every step); ``k``: steps between cross-group
    averages; ``eval_every``: steps between held-out evaluations; ``checkpoint``: the file
    the job is saved to at stop (and resumed from), by default ``lend.ckpt`` in the fleet's
    state folder.
    """

    job: str = DEFAULT_JOB
    options: Mapping[str, Any] = field(default_factory=dict)
    group_size: int | None = None
    k: int = 1
    eval_every: int = 10
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not self.job.strip():
            raise ValueError("lend.job: give a background job spec, e.g. builtin:digits-finetune")
        if not isinstance(self.options, Mapping):
            raise ValueError(f"lend.options: expected a table of job options, got {self.options!r}")
        if self.group_size is not None:
            _whole("lend.group_size", self.group_size, 1)
        _whole("lend.k", self.k, 1)
        _whole("lend.eval_every", self.eval_every, 1)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LendSettings:
        """From a config table; numbers given as text (a command line) are converted."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"lend: expected a table (job, group_size, k...), got {raw!r}")
        known = {"job", "options", "group_size", "k", "eval_every", "checkpoint"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"lend: unknown key(s) {unknown}; known: {sorted(known)}")
        data = dict(raw)
        for key in ("group_size", "k", "eval_every"):
            value = data.get(key)
            if isinstance(value, str):
                text = value.strip().lower()
                if key == "group_size" and text in ("", "none", "off"):
                    data[key] = None
                    continue
                try:
                    data[key] = int(text)
                except ValueError:
                    raise ValueError(f"lend.{key}={value!r}: must be a whole number") from None
        return cls(**data)


def shardable_job(spec: str, options: Mapping[str, Any]) -> DigitsFinetune:
    """The job ``spec`` names, built with ``options``, if lending can shard its data across
    boards; ValueError naming ``lend.job`` otherwise. Called where a fleet's settings are
    read, so a bad job fails before Ray starts, and on each board."""
    try:
        job = load_job(spec, **dict(options))
    except ValueError as exc:
        raise ValueError(f"lend.job={spec!r}: {exc}") from None
    if not isinstance(job, DigitsFinetune):
        raise ValueError(
            f"lend.job={spec!r}: data-parallel lending needs a job whose data it can shard "
            "across boards; builtin:digits-finetune is the one it shards"
        )
    return job
