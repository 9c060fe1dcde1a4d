"""Neurosurgeon: the split point planned from stage profiles and the link, as a tuner.

:class:`SplitPlanner` prices every split point with ``ecoserve.core.tiers.SplitCosts`` and
picks the cheapest for an objective: latency, device energy, or the engine's normalised
cost (through ``CostModel``, with the all-local figures as ``E0``/``L0`` unless given, so
costs stay comparable while the link changes).

:class:`Neurosurgeon` is the planner behind the ask/tell interface: the driver reports the
link estimate with every window (``link_bandwidth_bps``, ``link_rtt_s`` in the metrics, and
the controller closes a window early when the estimate moves), and the tuner answers with the
planned split point, the other knobs held where it was told (every other knob at its maximum
by default, as the paper runs them). It re-plans only when the link moved by more than
``tolerance``, so estimate noise near a crossover does not flip the split every window.

Any other tuner can move the same ``split_point`` knob from measured costs instead, when no
profile is trusted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ecoserve.core.cost import Baseline, CostModel
from ecoserve.core.knobs import SPLIT, Config, Knob, SearchSpace, split_knob
from ecoserve.core.link import Link, link_from_context, link_moved
from ecoserve.core.tiers import DevicePower, SplitCosts, SplitFigures, StageProfile
from ecoserve.core.tuner import Tuner, finite_cost

Goal = Literal["latency", "energy", "cost"]


@dataclass(frozen=True)
class Objective:
    """What the planner minimises.

    ``cost`` is the engine's ``alpha * E / E0 + (1 - alpha) * L / L0``; when ``e0_j`` /
    ``l0_s`` are not given, the baselines are the all-local split's figures, which do not
    depend on the link, so costs stay comparable while the link changes.
    """

    goal: Goal = "latency"
    alpha: float = 0.5
    e0_j: float | None = None
    l0_s: float | None = None

    def __post_init__(self) -> None:
        if self.goal not in ("latency", "energy", "cost"):
            raise ValueError(f"goal must be latency, energy or cost, got {self.goal!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for label, v in (("e0_j", self.e0_j), ("l0_s", self.l0_s)):
            if v is not None and not v > 0:
                raise ValueError(f"{label} must be > 0, got {v}")


class SplitPlanner:
    """Chooses the split point from profiles, power figures and the link (sans-IO)."""

    def __init__(
        self,
        device: StageProfile,
        server: StageProfile,
        power: DevicePower,
        objective: Objective | None = None,
        *,
        fp16: bool = False,
        overhead_bytes: int = 0,
    ) -> None:
        self.costs = SplitCosts(device, server, power, fp16=fp16, overhead_bytes=overhead_bytes)
        self.objective = objective or Objective()

    @property
    def device(self) -> StageProfile:
        return self.costs.device

    @property
    def server(self) -> StageProfile:
        return self.costs.server

    @property
    def power(self) -> DevicePower:
        return self.costs.power

    @property
    def fp16(self) -> bool:
        return self.costs.fp16

    @property
    def overhead_bytes(self) -> int:
        return self.costs.overhead_bytes

    @property
    def n_stages(self) -> int:
        return self.costs.n_stages

    def knob(self) -> Knob:
        return split_knob(self.n_stages)

    def table(self, link: Link) -> list[SplitFigures]:
        """Figures for every split ``0..N`` on ``link`` (index = split point)."""
        rows = [self.costs.figures(j, link) for j in range(self.n_stages + 1)]
        obj = self.objective
        if obj.goal == "latency":
            return rows
        if obj.goal == "energy":
            return [replace(r, cost=r.energy_j) for r in rows]
        local = rows[-1]
        e0 = obj.e0_j if obj.e0_j is not None else local.energy_j
        l0 = obj.l0_s if obj.l0_s is not None else local.latency_s
        if e0 <= 0 or l0 <= 0:
            raise ValueError(
                f"cost needs positive baselines, got E0={e0} J, L0={l0} s; "
                "give Objective(e0_j=..., l0_s=...) or non-zero busy power"
            )
        model, baseline = CostModel(alpha=obj.alpha), Baseline(e0, l0)
        return [replace(r, cost=model.cost(r.energy_j, r.latency_s, baseline)) for r in rows]

    def best_split(self, link: Link) -> int:
        """The split with the lowest goal on ``link``; ties go to the larger split.

        Ties break toward running more here: the same cost with less data in flight and
        less reliance on a link that may degrade.
        """
        return min(self.table(link), key=lambda r: (r.cost, -r.split)).split


class Neurosurgeon(Tuner):
    """The split point from the planner; every other knob fixed (default: its maximum)."""

    name = "neurosurgeon"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        planner: SplitPlanner | None = None,
        config: Sequence[int] | None = None,
        tolerance: float = 0.1,
    ) -> None:
        super().__init__(space, seed)
        if planner is None:
            raise ValueError(
                "the neurosurgeon tuner plans the split point from stage profiles: it is "
                "built by the tier setup (ecoserve serve --next-tier URL --tier-mode split "
                "--tuner neurosurgeon), or give planner=SplitPlanner(...)"
            )
        if not space.has(SPLIT):
            raise ValueError(f"the neurosurgeon tuner needs a {SPLIT!r} knob in the space")
        knob = space.knobs[space.axis(SPLIT)]
        if knob.values != planner.knob().values:
            raise ValueError(
                f"the space's {SPLIT} knob {knob.values} does not match the planner's "
                f"{planner.n_stages} stages"
            )
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.planner = planner
        self.tolerance = tolerance
        self._axis = space.axis(SPLIT)
        self.base: Config = space.maximum() if config is None else space.validate(config)
        self.split = planner.n_stages  # all here until a link is known
        self.planned_for: Link | None = None
        self.changes = 0

    def ask(self) -> Config:
        return self.space.with_value(self.base, SPLIT, self.split)

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        self.space.validate(config)
        finite_cost(cost)
        link = link_from_context(metrics)
        if link is None or not link_moved(self.planned_for, link, self.tolerance):
            return
        new = self.planner.best_split(link)
        self.planned_for = link
        if new != self.split:
            self.changes += 1
            self.split = new

    def reset(self) -> None:
        super().reset()
        self.split = self.planner.n_stages
        self.planned_for = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "split": self.split}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        split = int(state.get("split", self.planner.n_stages))
        if not 0 <= split <= self.planner.n_stages:
            raise ValueError(f"saved split point {split} outside 0..{self.planner.n_stages}")
        self.split = split
        self.planned_for = None

    def describe(self) -> dict[str, Any]:
        link = self.planned_for
        return {
            "tuner": self.name,
            "split": self.split,
            "planned_for_bps": None if link is None else link.bandwidth_bps,
            "changes": self.changes,
        }
