"""Bayesian optimisation: a Gaussian process with expected improvement (scikit-optimize).

The paper's model-based baseline: it finds near-optimal configurations in few windows but
every step refits the GP, which is what makes it the costliest tuner to run on the device.

Only the ``max_observations`` most recent observations are kept. A GP fit is cubic in the
number of observations, so an unbounded history would make each step slower for as long as
the daemon runs; dropping old observations also lets the model follow a load that changes.
When the window slides, a fresh optimizer is fitted on what is kept.

Proposing a configuration already measured is allowed (scikit-optimize would swap it for a
random one): a window spent on the incumbent is exploitation, which an online tuner needs.

Each random draw of the optimizer is seeded from ``(seed, observations told so far)``, so the
next point is a pure function of the kept observations and that count. That is what lets a
tuner restored from ``state_dict`` (which stores the observations) continue exactly where the
saved one would have.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import ThreadpoolController

from ecoserve.core.knobs import Config, SearchSpace
from ecoserve.core.tuner import Tuner, finite_cost

if TYPE_CHECKING:
    from skopt import Optimizer


class Bayesian(Tuner):
    """GP + EI over the knob indices; knobs with a single allowed index are held fixed.

    ``acq_optimizer`` and ``n_points`` (random candidates the acquisition is evaluated on) are
    passed to scikit-optimize; lowering ``n_points`` trades proposal quality for speed.
    ``threads`` caps the BLAS/OpenMP threads of a step (``None``: the libraries' default). One
    thread is the default because the matrices are small, so more threads mostly contend with
    the model being served for the board's few cores.
    """

    name = "bayes"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        n_initial_points: int = 10,
        acq_func: str = "EI",
        max_observations: int = 200,
        acq_optimizer: str = "auto",
        n_points: int = 10000,
        threads: int | None = 1,
    ) -> None:
        super().__init__(space, seed)
        if max_observations < 1:
            raise ValueError(f"max_observations must be at least 1, got {max_observations}")
        if n_initial_points < 1:
            raise ValueError(f"n_initial_points must be at least 1, got {n_initial_points}")
        if acq_func not in ("EI", "PI", "LCB"):
            # gp_hedge carries state a replay of the observations cannot rebuild.
            raise ValueError(f"acq_func must be 'EI', 'PI' or 'LCB', got {acq_func!r}")
        self.n_initial_points = int(n_initial_points)
        self.acq_func = acq_func
        self.max_observations = int(max_observations)
        self.acq_optimizer = acq_optimizer
        self.n_points = int(n_points)
        self.threads = threads
        self._threadpools = ThreadpoolController() if threads is not None else None
        # A seed of None still needs one fixed number to derive every draw from.
        self._root_seed = seed if seed is not None else self.rng.randrange(2**31)
        self._free = [a for a, k in enumerate(space.knobs) if k.top > k.floor]
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._observations: list[tuple[Config, float]] = []
        self._told = 0
        self._optimizer = self._new_optimizer()

    def _new_optimizer(self) -> Optimizer | None:
        if not self._free:
            return None  # a single configuration: nothing to model
        # Imported here: scikit-optimize takes over a second to import, a cost every user of
        # the ``tuners`` package would otherwise pay whichever tuner it runs.
        from skopt import Optimizer
        from skopt.space import Integer

        dims = [Integer(self.space.knobs[a].floor, self.space.knobs[a].top) for a in self._free]
        return Optimizer(
            dims,
            base_estimator="GP",
            acq_func=self.acq_func,
            acq_optimizer=self.acq_optimizer,
            acq_optimizer_kwargs={"n_points": self.n_points},
            n_initial_points=self.n_initial_points,
            random_state=self._root_seed,
            model_queue_size=1,  # skopt keeps every fitted model otherwise
            avoid_duplicates=False,
        )

    def _reseed(self, purpose: int) -> None:
        assert self._optimizer is not None
        entropy = np.random.SeedSequence([self._root_seed, self._told, purpose])
        self._optimizer.rng = np.random.RandomState(entropy.generate_state(1)[0])

    def ask(self) -> Config:
        if self._optimizer is None:
            return self.space.maximum()
        self._reseed(0)
        with self._quiet():
            point = self._optimizer.ask()
        return self._config(point)

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        config = self.space.validate(config)
        self._observations.append((config, finite_cost(cost)))
        self._told += 1
        if self._optimizer is None:
            return
        if len(self._observations) > self.max_observations:
            del self._observations[: len(self._observations) - self.max_observations]
            self._optimizer = self._new_optimizer()
            self._fit(self._observations)
        else:
            self._fit(self._observations[-1:])

    def _fit(self, observations: list[tuple[Config, float]]) -> None:
        assert self._optimizer is not None
        self._reseed(1)
        xs = [[c[a] for a in self._free] for c, _ in observations]
        ys = [y for _, y in observations]
        with self._quiet():
            self._optimizer.tell(xs, ys)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Thread cap, and no warnings: a converged GP re-proposing a measured point is fine."""
        with contextlib.ExitStack() as stack:
            if self._threadpools is not None:
                stack.enter_context(self._threadpools.limit(limits=self.threads))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            yield

    def _config(self, point: list[int]) -> Config:
        config = list(self.space.maximum())
        for a, i in zip(self._free, point, strict=True):
            config[a] = int(i)
        return tuple(config)

    def best(self) -> Config | None:
        """The cheapest configuration among the kept observations."""
        if not self._observations:
            return None
        return min(self._observations, key=lambda o: o[1])[0]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            root_seed=self._root_seed,
            told=self._told,
            observations=[[list(c), y] for c, y in self._observations],
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            root_seed = int(state["root_seed"])
            told = int(state["told"])
            observations = [
                (self.space.validate(c), finite_cost(y)) for c, y in state["observations"]
            ]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"malformed {self.name} state ({exc!r}); delete the state file"
            ) from exc
        self._root_seed = root_seed
        self._observations = observations[-self.max_observations :]
        self._told = told
        self._optimizer = self._new_optimizer()
        if self._optimizer is not None and self._observations:
            self._fit(self._observations)

    def describe(self) -> dict[str, Any]:
        best = self.best()
        return {
            "tuner": self.name,
            "observations": len(self._observations),
            "told": self._told,
            "best": None if best is None else list(best),
            "best_cost": None if best is None else min(y for _, y in self._observations),
        }
