"""The batching policy: when a batch leaves the queue, and how big it is.

Sans-IO: the policy holds the queue (items with their arrival times) and is asked, with
the current time, what to do. It never sleeps; the asyncio runtime and the simulator each
turn its answer into their own kind of waiting.

The rule: dispatch when ``batch_size`` items wait, or when the oldest has waited
``max_wait`` seconds. The wait is measured from the oldest item's arrival, not from when
the worker became free, so a partial batch is never starved, and items keep joining the
pending batch while the model is busy.

When the batch size changes, the items already queued are released: they leave at once
(in batches of at most the new size) instead of waiting to fill a batch of the new size.
Without this, a remainder left by the old size can sit out a whole burst period under the
new one, and keep doing so for as long as the new size holds (bursts of 10 at batch 10
with 6 left over dispatch 10 and keep 6, burst after burst). A window would then measure the
old configuration's leftovers instead of its own configuration, and a pinned configuration's
cost would depend on what ran before it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from ecoserve.core.knobs import Config

T = TypeVar("T")


@dataclass(frozen=True)
class Dispatch(Generic[T]):
    """Run these items now as one batch (oldest first).

    It names the queue the items come from and the configuration they run under (a driver
    hands that configuration back in the batch's ``BatchOutcome``).
    """

    items: list[T]
    arrivals: list[float]
    queue: str = ""
    config: Config = ()


@dataclass(frozen=True)
class WaitUntil:
    """Nothing to run before ``deadline`` unless more items arrive."""

    deadline: float


def dispatch_start(free: Any, oldest: Any, filled: Any, max_wait: float) -> Any:
    """When a batch leaves, as a formula (works element-wise on numpy arrays).

    ``free``: when the worker is free; ``oldest``: arrival of the batch's first item;
    ``filled``: arrival of the item that fills the batch (infinity if none will). This is
    :meth:`BatchPolicy.poll`'s rule for a queue with no release pending, for estimators that
    replay many configurations at once instead of polling a queue.
    """
    return np.maximum(free, np.minimum(filled, oldest + max_wait))


class QueueFullError(RuntimeError):
    """The bounded queue is full; the caller should retry later."""


class BatchPolicy(Generic[T]):
    """One queue's batching rule; its batches carry ``name`` and the ``config`` in force."""

    def __init__(
        self,
        batch_size: int = 1,
        max_wait: float = 0.05,
        max_queue: int | None = None,
        name: str = "",
    ) -> None:
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_wait = float(max_wait)
        self.max_queue = max_queue
        self.name = name
        #: The configuration the next batch runs under (the engine keeps it current).
        self.config: Config = ()
        self._queue: deque[tuple[float, T]] = deque()
        self._released = 0  # items at the head queued before the last batch-size change
        self.batch_size = 1
        self.set_batch_size(batch_size)

    def set_max_wait(self, max_wait: float) -> None:
        """Change the timer; a batch already waiting leaves by the new deadline."""
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.max_wait = float(max_wait)

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size; the items queued so far leave without waiting to fill it."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(batch_size) != self.batch_size:
            self._released = len(self._queue)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return self.max_queue is not None and len(self._queue) >= self.max_queue

    def add(self, item: T, arrival: float) -> None:
        """Queue an item; raises QueueFullError when the bound is reached."""
        if not self.offer(item, arrival):
            raise QueueFullError(f"queue is full ({self.max_queue} waiting)")

    def offer(self, item: T, arrival: float) -> bool:
        """Queue an item unless the bound is reached; True when it was queued."""
        queue = self._queue
        if self.max_queue is not None and len(queue) >= self.max_queue:
            return False
        queue.append((arrival, item))
        return True

    def oldest_arrival(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def due(self, now: float) -> float:
        """When the next batch leaves: ``now`` if it is due, else the timer's deadline
        (infinity for an empty queue). :meth:`poll`'s rule, without taking the batch."""
        if not self._queue:
            return math.inf
        oldest = self._queue[0][0]
        # compare with the same sum as the deadline handed out, so waking at it always dispatches
        if self._released or len(self._queue) >= self.batch_size or now >= oldest + self.max_wait:
            return now
        return oldest + self.max_wait

    def poll(self, now: float) -> Dispatch[T] | WaitUntil | None:
        """What to do at ``now``: a batch to run, a time to wake up, or None (empty queue)."""
        if not self._queue:
            return None
        at = self.due(now)
        return self._take(self.batch_size) if at <= now else WaitUntil(at)

    def flush(self) -> Dispatch[T] | None:
        """Take the next batch regardless of the wait (used when draining at shutdown)."""
        return self._take(self.batch_size) if self._queue else None

    def discard(self, gone: Callable[[T], bool]) -> list[T]:
        """Drop items whose caller has gone before they are batched; returns them."""
        kept: deque[tuple[float, T]] = deque()
        dropped = []
        released = 0
        for position, (arrival, item) in enumerate(self._queue):
            if gone(item):
                dropped.append(item)
            else:
                kept.append((arrival, item))
                released += position < self._released
        self._queue, self._released = kept, released
        return dropped

    def _take(self, n: int) -> Dispatch[T]:
        count = min(n, len(self._queue))
        taken = [self._queue.popleft() for _ in range(count)]
        self._released = max(0, self._released - count)
        return Dispatch([item for _, item in taken], [a for a, _ in taken], self.name, self.config)
