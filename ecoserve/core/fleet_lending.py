"""Lend a fleet's parked boards to background work, or power them off: the operator's price.

A fleet that consolidates parks the boards its load does not need. Powered off, a board
draws almost nothing and does nothing; lent to a background job (a fine-tune, a batch of
offline inference), it draws its busy power at the job's tuned configuration and produces
steps. Whether that is worth it is the operator's call, given as a price:

- a value per step in joules-equivalent: a board kind is lent when one step is worth at least
  the joules lending costs over powering off (``extra_joules_per_step``);
- or a joules budget over a span (a day): the budget accrues evenly over the span, so it is
  not all spent on the first parked hours; each period the boards that give the most steps
  per extra joule are lent first, a whole period at a time, while what has accrued and is
  unspent covers them.

Sans-IO: the driver tells it the parked boards each period and carries out the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LendingProfile:
    """What one board kind draws and yields while lent, against powered off."""

    kind: str
    lent_w: float
    off_w: float
    step_s: float
    items_per_step: int

    def __post_init__(self) -> None:
        figures = {"lent_w": self.lent_w, "off_w": self.off_w, "step_s": self.step_s}
        bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v >= 0)}
        if bad or self.step_s <= 0 or self.items_per_step < 1:
            raise ValueError(
                f"lending profile of {self.kind!r}: need finite watts >= 0, step_s > 0 and "
                f"items_per_step >= 1, got {figures} and items_per_step={self.items_per_step}"
            )

    @property
    def steps_per_s(self) -> float:
        return 1.0 / self.step_s

    @property
    def joules_per_step(self) -> float:
        """The whole board's joules per step while lent."""
        return self.lent_w * self.step_s

    @property
    def extra_joules_per_step(self) -> float:
        """What a step costs over leaving the board powered off (never below 0)."""
        return max(0.0, self.lent_w - self.off_w) * self.step_s


@dataclass(frozen=True)
class LendingPrice:
    """The operator's price: ``value_per_step_j`` or ``budget_j`` (over ``span_s``), exactly
    one."""

    value_per_step_j: float | None = None
    budget_j: float | None = None
    span_s: float = 86_400.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.span_s) and self.span_s > 0):
            raise ValueError(f"a budget's span_s must be seconds > 0, got {self.span_s!r}")
        given = [v for v in (self.value_per_step_j, self.budget_j) if v is not None]
        if len(given) != 1 or not all(math.isfinite(v) and v >= 0 for v in given):
            raise ValueError(
                "a lending price is a value per step in joules (value_per_step_j >= 0) or a "
                f"joules budget (budget_j >= 0), exactly one; got value_per_step_j="
                f"{self.value_per_step_j!r}, budget_j={self.budget_j!r}"
            )

    def describe(self) -> str:
        if self.value_per_step_j is not None:
            return f"value {self.value_per_step_j:g} J/step"
        return f"budget {self.budget_j:g} J over {self.span_s:g} s"


@dataclass(frozen=True)
class LendingPlan:
    """One period's decision over the parked boards."""

    lend: tuple[str, ...]
    off: tuple[str, ...]


class LendingPolicy:
    """Which parked boards to lend and which to power off, period by period."""

    def __init__(self, profiles: Mapping[str, LendingProfile], price: LendingPrice) -> None:
        if not profiles:
            raise ValueError("lending needs a profile for every board kind; got none")
        self.profiles = dict(profiles)
        self.price = price
        #: Extra joules spent on lending so far, and the seconds decided (a budget accrues).
        self.spent_j = 0.0
        self.elapsed_s = 0.0

    def worth_lending(self, kind: str) -> bool:
        """Under a value per step: whether a step of ``kind`` is worth its extra joules."""
        value = self.price.value_per_step_j
        if value is None:
            raise ValueError("worth_lending() needs a value per step; this price is a budget")
        return value >= self._profile(kind).extra_joules_per_step

    def decide(self, parked: Sequence[tuple[str, str]], period_s: float) -> LendingPlan:
        """Lend or power off each parked ``(name, kind)`` board for the next ``period_s``."""
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be a finite number of seconds > 0, got {period_s}")
        budget = self.price.budget_j
        self.elapsed_s += period_s
        if budget is None:
            lend = []
            for name, kind in parked:
                if self.worth_lending(kind):
                    lend.append(name)
                    self.spent_j += self._extra_w(kind) * period_s
        else:
            accrued = budget * min(1.0, self.elapsed_s / self.price.span_s)
            lend = []
            # the most steps per extra joule first; equal kinds in name order
            order = sorted(parked, key=lambda b: (self._profile(b[1]).extra_joules_per_step, b))
            for name, kind in order:
                cost = self._extra_w(kind) * period_s
                if self.spent_j + cost > accrued:
                    break
                self.spent_j += cost
                lend.append(name)
        chosen = set(lend)
        return LendingPlan(
            tuple(n for n, _ in parked if n in chosen),
            tuple(n for n, _ in parked if n not in chosen),
        )

    def _extra_w(self, kind: str) -> float:
        prof = self._profile(kind)
        return max(0.0, prof.lent_w - prof.off_w)

    def _profile(self, kind: str) -> LendingProfile:
        try:
            return self.profiles[kind]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise ValueError(
                f"no lending profile for board kind {kind!r}; known: {known}"
            ) from None
