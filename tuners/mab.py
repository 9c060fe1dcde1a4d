"""Multi-armed bandits: epsilon-greedy over each knob's values, or over whole configurations.

Costs are kept as an exponential average with weight ``recency`` (0.9) on the newest window,
so an arm's estimate is mostly its latest cost and follows a changing load. An arm never
pulled has no estimate: exploitation picks among the pulled arms only, and when there are
none the bandit explores.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost


def _update(old: float | None, new: float, recency: float) -> float:
    return new if old is None else recency * new + (1.0 - recency) * old


def _check(epsilon: float, recency: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be within [0, 1], got {epsilon}")
    if not 0.0 < recency <= 1.0:
        raise ValueError(f"recency must be within (0, 1], got {recency}")


class _EpsilonGreedy(Tuner):
    """Shared settings of the bandits: exploration probability and recency weight."""

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        epsilon: float = 0.1,
        recency: float = 0.9,
    ) -> None:
        super().__init__(space, seed)
        _check(epsilon, recency)
        self.epsilon = float(epsilon)
        self.recency = float(recency)
        self.reset()


class MAB(_EpsilonGreedy):
    """One bandit per knob; each ask lets the next knob, round-robin, choose its value.

    The other knobs keep their current values. A window's cost is credited only to the knob
    that chose on that ask: crediting every knob's current arm as well would let one knob's
    exploration of a bad value spoil the estimate of another knob's good value. (A tell with
    no ask pending credits the knobs whose values differ from the current configuration.)
    """

    name = "mab"

    def reset(self) -> None:
        super().reset()
        self._current: Config = self.space.maximum()
        self._turn = 0
        self._estimates: list[dict[int, float]] = [{} for _ in self.space.knobs]
        self._pending: Config | None = None
        self._pending_axis: int | None = None

    def ask(self) -> Config:
        if self._pending is None:
            axis = self._turn
            knob, arms = self.space.knobs[axis], self._estimates[axis]
            if self.rng.random() >= self.epsilon and arms:
                value = min(arms, key=lambda v: (arms[v], v))
            else:
                value = self.rng.randint(knob.floor, knob.top)
            c = self._current
            self._pending, self._pending_axis = c[:axis] + (value,) + c[axis + 1 :], axis
            self._turn = (axis + 1) % self.space.dims
        return self._pending

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        cost = finite_cost(cost)
        if self._pending_axis is not None:
            axes = [self._pending_axis]
        else:
            axes = [a for a, (c, k) in enumerate(zip(config, self._current, strict=True)) if c != k]
        for a in axes:
            arms = self._estimates[a]
            arms[config[a]] = _update(arms.get(config[a]), cost, self.recency)
        self._current = config
        self._pending = self._pending_axis = None

    def best(self) -> Config:
        """Each knob at its cheapest estimated value (its current value when it has none)."""
        return tuple(
            min(arms, key=lambda v: (arms[v], v)) if arms else i
            for arms, i in zip(self._estimates, self._current, strict=True)
        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            current=list(self._current),
            turn=self._turn,
            estimates=[[[v, c] for v, c in arms.items()] for arms in self._estimates],
            pending=None if self._pending is None else list(self._pending),
            pending_axis=self._pending_axis,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            current = self.space.validate(state["current"])
            turn = int(state["turn"]) % self.space.dims
            estimates = [{int(v): finite_cost(c) for v, c in arms} for arms in state["estimates"]]
            pending = None if state["pending"] is None else self.space.validate(state["pending"])
            axis = state["pending_axis"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        if len(estimates) != self.space.dims:
            raise ValueError(
                f"{self.name} state has {len(estimates)} knobs, the space {self.space.dims}"
            )
        self._current, self._turn, self._estimates = current, turn, estimates
        self._pending = pending
        self._pending_axis = None if pending is None or axis is None else int(axis)

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "current": list(self._current),
            "best": list(self.best()),
            "arms_seen": [len(arms) for arms in self._estimates],
        }


class MABJoint(_EpsilonGreedy):
    """One bandit whose arms are whole configurations, stored only once pulled.

    Exploration draws a uniformly random configuration of the whole space. The cheapest arm
    is found through a lazily cleaned heap, so exploiting stays O(log arms) however many
    configurations have been tried.
    """

    name = "mab-joint"

    def reset(self) -> None:
        super().reset()
        self._arms: dict[Config, float] = {}
        # (estimate, config) entries; an entry whose estimate is no longer the arm's is stale.
        self._heap: list[tuple[float, Config]] = []
        self._pending: Config | None = None

    def ask(self) -> Config:
        if self._pending is None:
            # best() is None exactly while no arm has been pulled
            if self.rng.random() >= self.epsilon and (best := self.best()) is not None:
                self._pending = best
            else:
                self._pending = self.space.random_config(self.rng)
        return self._pending

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        estimate = _update(self._arms.get(config), finite_cost(cost), self.recency)
        self._arms[config] = estimate
        heapq.heappush(self._heap, (estimate, config))
        if len(self._heap) > 2 * len(self._arms) + 16:
            self._rebuild()
        self._pending = None

    def best(self) -> Config | None:
        """The pulled configuration with the lowest estimate (ties: smallest indices)."""
        heap, arms = self._heap, self._arms
        while heap and arms.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def _rebuild(self) -> None:
        self._heap = [(e, c) for c, e in self._arms.items()]
        heapq.heapify(self._heap)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            arms=[[list(c), e] for c, e in self._arms.items()],
            pending=None if self._pending is None else list(self._pending),
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            arms = {self.space.validate(c): finite_cost(e) for c, e in state["arms"]}
            pending = None if state["pending"] is None else self.space.validate(state["pending"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        self._arms, self._pending = arms, pending
        self._rebuild()

    def describe(self) -> dict[str, Any]:
        best = self.best()
        return {
            "tuner": self.name,
            "arms_seen": len(self._arms),
            "best": None if best is None else list(best),
            "best_cost": None if best is None else self._arms[best],
        }
