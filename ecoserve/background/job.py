"""The background-job contract, and the decorator that makes a job of a function.

A background job is a step function with state. The daemon runs one step at a time in a
serving trough and may stop between any two steps, so everything a job needs to go on must be
in ``state_dict()``; a job given back that state with ``load_state_dict()`` must continue
exactly as if it had never stopped. The engine sizes a step by its ``micro_batch`` argument (a
knob the background slot tunes), so a job must honour it: that is how one step is kept under
the time bound the engine gives.

This module and the runner import no model code, so the drivers can hold a job without
depending on ``ecoserve.models`` (``specs`` resolves a ``--background`` spec into a job).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, overload, runtime_checkable


@dataclass(frozen=True)
class StepResult:
    """What one step did.

    ``items``: items processed (training examples, inferred inputs), for throughput and the
    joules-per-item figure. ``loss``: the step's training loss, or None for a job without one;
    a non-finite loss pauses the job. ``metric``: figures measured this step (e.g.
    ``{"accuracy": 0.93}`` on an evaluation step), empty otherwise. ``done``: the job has no
    work left (a finished pass over a data set); the runner stops offering it steps.
    """

    items: int
    loss: float | None = None
    metric: Mapping[str, float] = field(default_factory=dict)
    done: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.items, bool) or not isinstance(self.items, int) or self.items < 0:
            raise ValueError(f"StepResult.items must be a count >= 0, got {self.items!r}")


@runtime_checkable
class BackgroundJob(Protocol):
    """A step function with state: what the background slot runs between serving batches."""

    @property
    def name(self) -> str:
        """A stable name; a checkpoint written under another name is refused."""
        ...

    def step(self, micro_batch: int) -> StepResult:
        """Do one step over at most ``micro_batch`` items."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: tensors, numbers, strings, lists and dicts only
        (checkpoints are loaded with ``weights_only=True``, so they can never run code)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; raise ValueError, changing nothing, if it does not fit."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for status pages (options, progress, knob ranges)."""
        ...


StepFunction = Callable[[int, dict[str, Any]], "StepResult | float | None"]


class FunctionJob:
    """A job made of a function ``step(micro_batch, state)`` that updates ``state`` in place.

    The function returns a :class:`StepResult`, or a number (the loss of ``micro_batch``
    items), or None (``micro_batch`` items, no loss). Its state is a plain dict, so the job's
    ``state_dict`` is a deep copy of it and resuming hands it back.
    """

    def __init__(self, fn: StepFunction, name: str, state: Mapping[str, Any] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a background job needs a callable step function, got {fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a background job needs a non-empty name, got {name!r}")
        self._fn = fn
        self._name = name
        self._initial = copy.deepcopy(dict(state or {}))
        self.state: dict[str, Any] = copy.deepcopy(self._initial)

    @property
    def name(self) -> str:
        return self._name

    def step(self, micro_batch: int) -> StepResult:
        out = self._fn(micro_batch, self.state)
        if isinstance(out, StepResult):
            return out
        if out is None:
            return StepResult(items=micro_batch)
        if isinstance(out, int | float) and not isinstance(out, bool):
            return StepResult(items=micro_batch, loss=float(out))
        raise TypeError(
            f"step function of job {self._name!r} returned {type(out).__name__}; "
            "return a StepResult, a loss (a number) or None"
        )

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = copy.deepcopy(dict(state))

    def describe(self) -> dict[str, Any]:
        return {"job": self._name, "function": getattr(self._fn, "__qualname__", repr(self._fn))}

    def fresh(self) -> FunctionJob:
        """A new job over the same function from the initial state (a spec's every load)."""
        return FunctionJob(self._fn, self._name, self._initial)


@overload
def background_job(fn: StepFunction) -> FunctionJob: ...


@overload
def background_job(
    *, name: str | None = None, state: Mapping[str, Any] | None = None
) -> Callable[[StepFunction], FunctionJob]: ...


def background_job(
    fn: StepFunction | None = None,
    *,
    name: str | None = None,
    state: Mapping[str, Any] | None = None,
) -> FunctionJob | Callable[[StepFunction], FunctionJob]:
    """Decorator: make a background job of ``step(micro_batch, state)``.

    ``@background_job`` names the job after the function; ``@background_job(name="x",
    state={"epoch": 0})`` sets its name and initial state. The result is a
    :class:`FunctionJob`, which ``--background package.module:attribute`` accepts (each
    load starts from the initial state).
    """

    def wrap(f: StepFunction) -> FunctionJob:
        return FunctionJob(f, name or str(getattr(f, "__name__", "job")), state)

    return wrap(fn) if fn is not None else wrap
