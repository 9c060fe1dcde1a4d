"""A fleet day's parked boards lent to background work, in virtual time: energy and steps.

Two accountings over the fleet replay (``ecoserve.sim.fleet``):

- ``lend_over_run``: the parking run's decisions kept (which boards serve, wake and park, each
  period), and each parked board-period either powered off or lent as
  ``ecoserve.core.fleet_lending`` decides. A lent board draws its background busy power
  instead of the off draw and produces steps. The wake delay is *not* modelled here: a
  board woken from lending is charged the boot as if it had been off (conservative for
  lending's energy, and the serving figures are the parking run's).
- ``lending_parking``: under a value per step the decision is one per board kind, so the
  kinds worth lending can be replayed as a parking mode of their own: parked at the lent
  draw, and woken for serving after one step boundary instead of the boot. This *does*
  model the wake delay (the fleet policy is told the short wake and plans with it); a
  board woken still waits for the policy's next period, as every wake does in the replay.

What is derived: a kind's lent draw and step are its twin's busy power and step time at the
job's tuned background configuration (``tuned_background``: the twin's clocks with the least
joules per item at the job's largest micro-batch; no delay bound applies, a lent board serves
nothing), from the job's cost measured with torch (``ecoserve.sim.background``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from ecoserve.core.fleet_lending import LendingPolicy, LendingProfile
from ecoserve.sim.background import TwinStepCost
from ecoserve.sim.fleet import FleetBoard, FleetRun, Parking
from twins.base import DeviceTwin

#: ``FleetRun.states`` code of a parked board.
PARKED = 2


def tuned_background(twin: DeviceTwin, cost: TwinStepCost) -> tuple[dict[str, float], int]:
    """The clocks with the least joules per item on ``twin`` and the micro-batch they run.

    The micro-batch is the job's largest (its fixed part spread thinnest); every clock
    setting of the twin is tried. What a tuner of the slot settles near, read without noise.
    """
    mb = cost.max_micro_batch or 64
    names = [k.name for k in twin.knobs()]
    best: tuple[float, dict[str, float]] | None = None
    for values in product(*(k.values for k in twin.knobs())):
        clocks = dict(zip(names, values, strict=True))
        joules = twin.power(clocks, 1.0) * cost(mb, clocks) / mb
        if best is None or joules < best[0]:
            best = (joules, clocks)
    assert best is not None
    return best[1], mb


def lending_profile(
    kind: str, twin: DeviceTwin, cost: TwinStepCost, off_w: float
) -> LendingProfile:
    """``kind``'s draw and step while lent, at its tuned background configuration."""
    clocks, mb = tuned_background(twin, cost)
    return LendingProfile(kind, twin.power(clocks, 1.0), off_w, cost(mb, clocks), mb)


@dataclass
class LendingRun:
    """What lending did over one fleet run, beside that run's parking figures."""

    price: str
    energy_j: float
    parked_energy_j: float
    steps: float
    items: float
    lent_board_s: float
    off_board_s: float
    wake_modelled: bool
    per_kind_steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "price": self.price,
            "energy_j": self.energy_j,
            "parked_energy_j": self.parked_energy_j,
            "extra_j": self.energy_j - self.parked_energy_j,
            "steps": self.steps,
            "items": self.items,
            "extra_j_per_step": (self.energy_j - self.parked_energy_j) / self.steps
            if self.steps
            else math.nan,
            "lent_board_h": self.lent_board_s / 3600,
            "off_board_h": self.off_board_s / 3600,
            "wake_modelled": self.wake_modelled,
            "per_kind_steps": self.per_kind_steps,
        }


def _check_states(run: FleetRun, boards: Sequence[FleetBoard]) -> np.ndarray:
    states = run.states
    if states is None or states.ndim != 2 or states.shape[1] != len(boards):
        raise ValueError(
            "lending needs the fleet run's per-period board states for these boards "
            "(FleetRun.states, one column per board, as run_fleet records them)"
        )
    return states


def lend_over_run(
    run: FleetRun,
    boards: Sequence[FleetBoard],
    policy: LendingPolicy,
    park: Parking,
) -> LendingRun:
    """Each parked board-period of ``run`` lent or powered off as ``policy`` decides.

    ``park`` is the parking the run was replayed with: a lent board draws its lent power in
    place of that parked draw. The wake delay is the run's (not modelled, see the module).
    """
    states = _check_states(run, boards)
    dt = run.period_s
    energy = run.energy_j
    steps = items = lent_s = off_s = 0.0
    per_kind: dict[str, float] = {}
    for row in states:
        parked = [(b.name, b.kind) for b, s in zip(boards, row, strict=True) if s == PARKED]
        if not parked:
            continue
        plan = policy.decide(parked, dt)
        kinds = dict(parked)
        for name in plan.lend:
            prof = policy.profiles[kinds[name]]
            energy += (prof.lent_w - park.parked_w[prof.kind]) * dt
            s = dt * prof.steps_per_s
            steps += s
            items += s * prof.items_per_step
            per_kind[prof.kind] = per_kind.get(prof.kind, 0.0) + s
            lent_s += dt
        off_s += dt * len(plan.off)
    return LendingRun(
        policy.price.describe(),
        energy,
        run.energy_j,
        steps,
        items,
        lent_s,
        off_s,
        wake_modelled=False,
        per_kind_steps=per_kind,
    )


def lending_parking(
    park: Parking, profiles: Mapping[str, LendingProfile], lend: Sequence[str]
) -> Parking:
    """``park`` with the ``lend`` kinds parked at their lent draw and woken in one step."""
    unknown = sorted(set(lend) - set(profiles))
    if unknown:
        raise ValueError(f"no lending profile for board kinds {unknown}")
    parked_w = dict(park.parked_w)
    wake_s = dict(park.wake_s)
    waking_w = dict(park.waking_w)
    for kind in lend:
        prof = profiles[kind]
        parked_w[kind] = prof.lent_w
        wake_s[kind] = prof.step_s
        waking_w[kind] = prof.lent_w
    kinds = ", ".join(sorted(lend)) or "none"
    return Parking(
        f"lent:{kinds}" if lend else park.mode,
        parked_w,
        wake_s,
        waking_w,
        basis=f"{park.basis}; lent ({kinds}): background busy draw, woken after one step",
    )


def steps_of_parked(
    run: FleetRun,
    boards: Sequence[FleetBoard],
    profiles: Mapping[str, LendingProfile],
    lend: Sequence[str],
    price: str,
    reference: FleetRun,
) -> LendingRun:
    """Steps of a run replayed with ``lending_parking``: every parked board of a lent kind
    works the whole period; ``reference`` is the parking run its energy is set beside."""
    states = _check_states(run, boards)
    dt = run.period_s
    steps = items = lent_s = off_s = 0.0
    per_kind: dict[str, float] = {}
    chosen = set(lend)
    for j, b in enumerate(boards):
        n = float(np.count_nonzero(states[:, j] == PARKED)) * dt
        if b.kind not in chosen:
            off_s += n
            continue
        prof = profiles[b.kind]
        s = n * prof.steps_per_s
        steps += s
        items += s * prof.items_per_step
        per_kind[b.kind] = per_kind.get(b.kind, 0.0) + s
        lent_s += n
    return LendingRun(
        price,
        run.energy_j,
        reference.energy_j,
        steps,
        items,
        lent_s,
        off_s,
        wake_modelled=True,
        per_kind_steps=per_kind,
    )
