"""Tier computations as requests of this daemon: queued, timed and metered as its own.

A ``/v1/tier/split`` or ``/v1/tier/cascade`` call used to run beside the engine: no queue
bound, no deadline, and energy that no window saw. Here it is submitted to the runtime as a
``TierJob``, an item the runtime's batch function recognises: :func:`with_tier_jobs` wraps
the batch function so that a batch holding jobs runs each one, and the model on the other
items, and answers in order. The runtime then admits it (503 when the queue is full or the
daemon drains), the request deadline bounds it, and the batch's measured energy counts it.
A job that fails answers its own caller only: its exception is its result.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ecoserve.runtime.collate import collate, split

BatchFunction = Callable[[Any], Any]


@dataclass(frozen=True)
class TierJob:
    """One tier computation, queued like an inference item; ``run`` does the work."""

    run: Callable[[], Any]


def _outcome(job: TierJob) -> Any:
    try:
        return job.run()
    except Exception as exc:  # the caller's own failure; the rest of the batch goes on
        return exc


def _places(batch: Any) -> tuple[list[int], list[int]] | None:
    """Indices of jobs and of other items, or None for a batch without jobs."""
    if not isinstance(batch, list) or not any(isinstance(x, TierJob) for x in batch):
        return None
    jobs = [i for i, x in enumerate(batch) if isinstance(x, TierJob)]
    return jobs, [i for i, x in enumerate(batch) if not isinstance(x, TierJob)]


def with_tier_jobs(fn: BatchFunction) -> BatchFunction:
    """``fn`` for batches that may hold ``TierJob`` items (async stays async)."""
    if inspect.iscoroutinefunction(fn):
        run_async: Callable[[Any], Awaitable[Any]] = fn

        async def batch_async(batch: Any) -> Any:
            places = _places(batch)
            if places is None:
                return await run_async(batch)
            jobs, others = places
            results: list[Any] = [None] * len(batch)
            if others:
                out = await run_async(collate([batch[i] for i in others]))
                for i, r in zip(others, split(out, len(others)), strict=True):
                    results[i] = r
            for i in jobs:  # off the loop: the loop serves sockets
                results[i] = await asyncio.to_thread(_outcome, batch[i])
            return results

        return batch_async

    def batch_sync(batch: Any) -> Any:
        places = _places(batch)
        if places is None:
            return fn(batch)
        jobs, others = places
        results: list[Any] = [None] * len(batch)
        if others:
            out = fn(collate([batch[i] for i in others]))
            for i, r in zip(others, split(out, len(others)), strict=True):
                results[i] = r
        for i in jobs:
            results[i] = _outcome(batch[i])
        return results

    return batch_sync
