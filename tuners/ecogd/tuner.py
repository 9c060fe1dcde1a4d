"""EcoGD as served: the paper's climber consulting its strategies.

Each option turns one strategy on or off; the climber (``climber.Climber``) asks them at its
consultation points and knows nothing else of them. The saved state keeps one flat set of
keys whatever is on, so a state file resumes under any version of the options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from tuners.ecogd.axis_scans import AxisScans
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.capacity import CapacityGuard
from tuners.ecogd.climber import Climber, memory_of
from tuners.ecogd.load_following import LoadFollowing
from tuners.ecogd.losses import LossMemory
from tuners.ecogd.probes import Probes, read_state
from tuners.ecogd.scan import BatchScan, ScanEnd


class EcoGD(Climber):
    """Hill climbing on the axis neighbours plus estimated CPU–GPU diagonals, with strategies.

    The climber's options: ``memory_limit``, ``max_loops``, ``rate_change_threshold``,
    ``adaptive_step``, ``max_step``, ``step_growth`` (see ``climber.Climber``).
    ``probe_every``: windows between batch-size probes once settled (``probes``); ``None``
    or 0 turns probes off, as does a space without a batch-size knob. ``guided_probes``:
    take a probe only where the models cannot rule it out (the cost curve over batch size,
    with ``guide_margin``; the capacity guard), and keep what the curve knows, rescaled,
    across a change of load (``probes``).
    ``loser_memory``: the longest life of a losing measurement, in memories (1 = off);
    ``inherit_margin``: the smallest relative loss of a batch neighbour that is inherited
    across frequency moves (``None`` = always measure); ``inherit_reach``: how many steps
    away, on every other knob, the measurement it is inherited from may lie (``losses``).
    ``opening_scan``: measure batch sizes once before climbing (with one batch-size knob per
    model, each model's in turn: ``axis_scans``; the other batch strategies then stand by);
    ``guided_scan``: only those
    a fitted cost curve does not call clear losers; ``guide_margin``: how far (relative)
    above the best measured cost a size's predicted cost must lie, beyond the fit's own
    residual, to be skipped (``scan``).
    ``follow_load``: run the change-point test on the arrival rate and forget every
    measurement when it alarms; ``level_memory``: remember each load level's best centre and
    its neighbourhood, met again at once; ``level_width``: rates within this relative distance
    are one level; ``research_sizes``: batch sizes measured on a new level (0 = just climb);
    ``research_ratio``: how far (a rate ratio) a level must lie from every remembered one to be
    re-searched; ``change_threshold``: the change test's alarm level, in noise units;
    ``carry_life``: the most a carried-over measurement has left to live, in memories;
    ``steady_memory``: how many times longer measurements live while following the load
    (off by default: expiry also follows what the arrival rate does not show, a board warming
    up or a model swapped, and on the twins it saved under 1.5% of cost) (``load_following``).
    ``capacity_guard``: never choose, measure or probe a configuration whose capacity, from
    the online model of batch time (needs the windows' ``batches``, ``busy_s`` and, live,
    ``loop_s``), is below
    ``guard_headroom`` times the busiest arrival rate of the last memory's windows, each
    taken over its busy seconds (``busy_rate``) when the driver counts them (``capacity``).
    """

    name = "ecogd"

    # The strategies, None while off (read on class level by the climber's first reset).
    _probes: Probes | None = None
    _scan: BatchScan | None = None
    _load: LoadFollowing | None = None
    _guard: CapacityGuard | None = None
    _axis_scans: AxisScans | None = None

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        memory_limit: int = 20,
        max_loops: int = 10,
        rate_change_threshold: float | None = None,
        adaptive_step: bool = False,
        max_step: int = 4,
        step_growth: float = 0.1,
        probe_every: int | None = 10,
        loser_memory: float = 6.0,
        opening_scan: bool = True,
        inherit_margin: float | None = 0.2,
        inherit_reach: int = 8,
        follow_load: bool = True,
        level_memory: bool = True,
        level_width: float = 0.25,
        research_sizes: int = 4,
        research_ratio: float = 2.0,
        steady_memory: float = 1.0,
        change_threshold: float = 12.0,
        carry_life: float = 0.5,
        guided_scan: bool = True,
        guide_margin: float = 0.05,
        capacity_guard: bool = True,
        guard_headroom: float = 1.0,
        guided_probes: bool = True,
    ) -> None:
        scale = steady_memory if follow_load else 1.0
        batch = self._batch = BatchAxis.of(space)
        # kept whatever the options (see ``losses``), so built before the climber's reset
        self._losses = LossMemory(
            memory_of(space, memory_limit, scale),
            None if batch is None else batch.axis,
            loser_memory,
            inherit_margin,
            inherit_reach,
        )
        super().__init__(
            space,
            seed,
            memory_limit=memory_limit,
            max_loops=max_loops,
            rate_change_threshold=rate_change_threshold,
            adaptive_step=adaptive_step,
            max_step=max_step,
            step_growth=step_growth,
            memory_scale=scale,
        )
        # Every option is checked, whether or not its strategy is on.
        if probe_every is not None and probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 windows (0 = off), got {probe_every}")
        if steady_memory < 1:
            raise ValueError(f"steady_memory must be >= 1 (1 = off), got {steady_memory}")
        if loser_memory < 1:
            raise ValueError(f"loser_memory must be >= 1 (1 = off), got {loser_memory}")
        if inherit_margin is not None and inherit_margin < 0:
            raise ValueError(f"inherit_margin must be >= 0 (None = off), got {inherit_margin}")
        if inherit_reach < 0:
            raise ValueError(f"inherit_reach must be >= 0 steps, got {inherit_reach}")
        if not level_width > 0:
            raise ValueError(f"level_width must be > 0, got {level_width}")
        if research_sizes < 0:
            raise ValueError(f"research_sizes must be >= 0 (0 = off), got {research_sizes}")
        if not research_ratio >= 1:
            raise ValueError(f"research_ratio must be >= 1, got {research_ratio}")
        if not guide_margin >= 0:
            raise ValueError(f"guide_margin must be >= 0, got {guide_margin}")
        if not guard_headroom > 0:
            raise ValueError(f"guard_headroom must be > 0, got {guard_headroom}")
        # the options as given, for status and introspection
        self.steady_memory = float(steady_memory)
        self.loser_memory = float(loser_memory)
        self.probe_every = int(probe_every or 0)
        self.opening_scan = bool(opening_scan)
        self.inherit_margin = inherit_margin
        self.inherit_reach = int(inherit_reach)
        self.follow_load = bool(follow_load)
        self.level_memory = bool(level_memory) and self.follow_load
        self.level_width = float(level_width)
        self.research_sizes = int(research_sizes)
        self.research_ratio = float(research_ratio)
        self.change_threshold = float(change_threshold)
        self.carry_life = float(carry_life)
        self.guided_scan = bool(guided_scan)
        self.guide_margin = float(guide_margin)
        self.capacity_guard = bool(capacity_guard)
        self.guard_headroom = float(guard_headroom)
        self.guided_probes = bool(guided_probes)
        memory = self._memory
        if self.follow_load:
            self._load = LoadFollowing(
                memory,
                batch,
                level_memory=self.level_memory,
                level_width=self.level_width,
                research_sizes=self.research_sizes,
                research_ratio=self.research_ratio,
                change_threshold=self.change_threshold,
                carry_life=self.carry_life,
            )
        if batch is not None:
            if self.opening_scan or (self.follow_load and self.research_sizes > 0):
                self._scan = BatchScan(
                    batch, self.opening_scan, self.guided_scan, self.guide_margin
                )
            if self.probe_every or self._scan is not None:  # scans count as probes
                self._probes = Probes(
                    batch, self.probe_every, self.guided_probes, self.guide_margin
                )
            if self.capacity_guard:
                self._guard = CapacityGuard(space, batch, self.guard_headroom, memory)
        elif self.opening_scan and len(axes := BatchAxis.every(space)) > 1:
            models = [space.knobs[a.axis].name.partition(":")[2] for a in axes]
            self._axis_scans = AxisScans(axes, models, self.guided_scan, self.guide_margin)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._probe_mark = 0  # without probes: the window ``since_probe`` counts from
        strategies = (self._losses, self._probes, self._scan, self._load, self._guard)
        for strategy in (*strategies, self._axis_scans):
            if strategy is not None:
                strategy.reset()

    # -- consultation points --------------------------------------------------------------
    def _preempt(self) -> Config | None:
        """The window after a load alarm re-measures the centre (the refuge instead when the
        new load makes the centre unsafe); a scan runs before climbing."""
        if self._load is not None and self._load.refine:
            if self._unsafe(self._centre):
                self._set_centre(self._refuge())
            return self._centre
        scan = self._scan
        if scan is None or not scan.running:
            return self._axis_scan()
        step = scan.ask(self._centre, self._unsafe)
        if isinstance(step, ScanEnd):
            self._end_scan(step)
            return None
        return step

    def _axis_scan(self) -> Config | None:
        """Several models' batch sizes: the next of their opening scans, in turn."""
        scans = self._axis_scans
        if scans is None or not scans.running:
            return None
        step, centre = scans.ask(self._centre)
        if centre != self._centre:
            self._set_centre(centre)
        return step

    @property
    def _axis_scanning(self) -> bool:
        return self._axis_scans is not None and self._axis_scans.running

    def _end_scan(self, end: ScanEnd) -> None:
        """Climb from the cheapest size; every size's result counts as a probe."""
        assert self._batch is not None and self._probes is not None
        best_cost = end.costs[end.best]
        if best_cost > 0:
            for index, cost in end.costs.items():
                self._probes.note(index, self._window, self._losses.life(cost / best_cost - 1.0))
        self._set_centre(self._batch.at(self._centre, end.best))

    def _estimate(self, neighbour: Config, centre: Config) -> float | None:
        return self._losses.inherited(neighbour, centre, self._history[centre][0], self._history)

    def _unsafe(self, config: Config) -> bool:
        guard = self._guard
        return guard is not None and guard.unsafe(config, guard.demand())

    def _refuge(self) -> Config:
        guard = self._guard
        return self._centre if guard is None else guard.refuge(guard.demand())

    def _candidate(self) -> Config | None:
        return None if self._probes is None else self._probes.take()

    def _while_staying(self, centre: Config) -> Config | None:
        if self._probes is None:
            return None
        return self._probes.next(centre, self._window, self.rng, self._unsafe)

    def _centre_cost(self) -> float | None:
        known = self._history.get(self._centre)
        return None if known is None else known[0]

    def _lifetime(self, config: Config, cost: float) -> int:
        return self._losses.lifetime(config, cost, self._centre, self._centre_cost())

    def _observe(
        self, config: Config, cost: float, metrics: Mapping[str, float], rate: float | None
    ) -> None:
        if self._guard is not None and metrics:
            self._guard.observe(config, metrics)
        if self._load is not None and rate is not None:
            arrivals = metrics.get("arrivals", metrics.get("requests", 0.0))
            self._follow(rate, float(arrivals), config, cost)
        if self._axis_scans is not None:
            self._axis_scans.record(config, cost, self._centre, metrics)
        scanned = self._scan is not None and self._scan.record(config, cost, self._centre)
        if self._probes is not None:
            here = self._centre_cost()
            if not scanned:
                self._probes.measured(config, cost, here, self._window, self._losses.life)
            self._probes.observe(config, cost, self._centre, here, self._window, self._losses.life)

    def _measured(self, config: Config, cost: float) -> None:
        self._losses.record(config, cost, self._centre, self._centre_cost())

    def _expired(self, config: Config) -> None:
        self._losses.drop(config)

    def _cleared(self, old_rate: float | None, new_rate: float | None) -> None:
        self._losses.clear()
        if self._probes is not None:
            # clear losers stay known, moved to the new rate (guided; else forgotten)
            self._probes.load_changed(old_rate, new_rate, self._window)

    # -- following the load -----------------------------------------------------------------
    def _follow(self, rate: float, arrivals: float, config: Config, cost: float) -> None:
        """Feed the change test with a window; after an alarm, apply what the next window
        settles (``LoadFollowing.settle``)."""
        load, scan = self._load, self._scan
        assert load is not None
        change = load.observe(
            rate,
            arrivals,
            opening=(scan is not None and scan.opening) or self._axis_scanning,
            scanning=(scan is not None and scan.running) or self._axis_scanning,
            centre=self._centre,
            history=self._history,
        )
        if change is None:
            return
        settled = load.settle(*change, config, cost, self._centre, self._window)
        self._forget(change[1], load.level_rate)
        self._history.update(settled.known)
        if settled.centre is not None:
            self._set_centre(settled.centre)
        if settled.research and scan is not None:
            scan.start(settled.research)

    def _forget(self, old_rate: float | None, new_rate: float | None) -> None:
        """Drop every measurement (they describe a load that is gone) and any scan or pending
        probe; what the probes know of clear losers is moved to the new rate."""
        self._clear(old_rate, new_rate)
        if self._probes is not None:
            self._probes.forget()
        if self._scan is not None:
            self._scan.stop()  # an unfinished scan of a past level

    # -- persistence and status ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._probes is not None:
            state.update(self._probes.state_dict(self._window))
        else:
            state.update(
                since_probe=self._window - self._probe_mark,
                probe_queue=[],
                probe=None,
                probes=0,
                probed=[],
                profile=[],
                probes_skipped=0,
            )
        scan = {"scan": None, "scan_order": None} if self._scan is None else self._scan.state_dict()
        state["scan"] = scan["scan"]
        state.update(self._losses.state_dict())
        state["scan_order"] = scan["scan_order"]
        if self._load is not None:
            state.update(self._load.state_dict())
        else:
            state.update(load=None, level_rate=None, refine=False, before=[], levels=[], changes=0)
        if self._axis_scans is not None:  # several batch knobs only
            state.update(self._axis_scans.state_dict())
        return state

    def _load_climb(self, state: Mapping[str, Any]) -> None:
        """The climb's state, then every strategy's (a strategy that is off ignores its own)."""
        super()._load_climb(state)
        if self._probes is not None:
            self._probes.load_state_dict(state, self.space, self._window)
        else:
            self._probe_mark = self._window - read_state(state, self.space)[3]
        self._losses.load_state_dict(state, self.space)
        if self._scan is not None:
            self._scan.load_state_dict(state)
        if self._load is not None:
            self._load.load_state_dict(state, self.space)
        if self._axis_scans is not None:
            self._axis_scans.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        load, scan, guard = self._load, self._scan, self._guard
        return {
            "tuner": self.name,
            "centre": list(self._centre),
            "centre_values": self.space.values(self._centre),
            "centre_cost": self._centre_cost(),
            "known": len(self._history),
            "loops": self._loops,
            "moves": self._moves,
            "jumps": self._jumps,
            "probes": 0 if self._probes is None else self._probes.count,
            "probes_skipped": 0 if self._probes is None else self._probes.skipped,
            "scanning": (scan is not None and scan.running) or self._axis_scanning,
            "load_changes": 0 if load is None else load.changes,
            "load_levels": 0 if load is None else len(load.levels),
            "level_rate": None if load is None else load.level_rate,
            "peak_rate": self.peak_rate(),
            "demand_rate": None if guard is None else guard.demand(),
            "centre_capacity": None if guard is None else guard.capacity(self._centre),
            "windows": self._window,
            "phase": self.phase(),
        }

    def phase(self) -> str:
        """What it is doing: ``scan`` (the opening scan), ``research`` (the bounded re-search
        of a new load level), ``probe`` (a batch-size probe is out), ``settled`` (the centre
        stayed best at the last decision) or ``climb``."""
        if self._scan is not None and self._scan.running:
            return "scan" if self._scan.opening else "research"
        if self._axis_scanning:
            return "scan"
        if self._probes is not None and self._probes.pending is not None:
            return "probe"
        return super().phase()


class EcoGDOriginal(EcoGD):
    """The climber as EcoEdgeInfer describes it: every strategy off.

    No opening scan, no inherited neighbours, no batch-size probes, one memory for winners
    and losers alike, no change-point test, no capacity guard. It is the reference the
    strategies are judged by. (The record of batch neighbours' losses is still kept, unread,
    because saved states carry it.)
    """

    name = "ecogd-original"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        memory_limit: int = 20,
        max_loops: int = 10,
        rate_change_threshold: float | None = None,
        adaptive_step: bool = False,
        max_step: int = 4,
        step_growth: float = 0.1,
    ) -> None:
        super().__init__(
            space,
            seed,
            memory_limit=memory_limit,
            max_loops=max_loops,
            rate_change_threshold=rate_change_threshold,
            adaptive_step=adaptive_step,
            max_step=max_step,
            step_growth=step_growth,
            probe_every=0,
            loser_memory=1.0,
            opening_scan=False,
            inherit_margin=None,
            follow_load=False,
            guided_scan=False,
            capacity_guard=False,
        )
