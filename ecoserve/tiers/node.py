"""This tier's side of splitting and cascading: choose the knob, run here, send the rest.

Sans-IO parts, shared with the simulator (``ecoserve.tiers.sim``) so a replay decides
exactly as the daemon does:

- :class:`SplitChoice` holds the split point and re-asks the :class:`SplitPlanner` when the
  link estimate has moved by more than a tolerance (or when a tuner pins the knob).
- :class:`ThresholdChoice` holds the cascade threshold and re-asks the
  :class:`ThresholdChooser` every few observations or when the link moved.
- :class:`ArrivalRate` counts requests in a sliding window (the chooser prices uplink load).

:class:`TierNode` is the I/O shell: it owns the local stages or small model, one of the two
choices and the client of the next tier (anything with ``send``/``forward``/``ping``/
``probe`` and an ``estimator``: :class:`~ecoserve.tiers.http.NextTierClient` in the
daemon). ``infer(x)`` runs one batch. If the next tier fails, the batch is finished here
(the split tail runs locally, the cascade keeps the small model's answer) and the link
counts as down until a probe gets through: a tier that cannot be reached must not take the
device's answers with it. While nothing is being sent (split point ``N``, or threshold 0),
a background probe every ``probe_interval_s`` keeps the estimate fresh, so the node notices
when the link comes back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ecoserve.tiers.cascade import CascadePolicy, CascadeRunner, ThresholdChooser
from ecoserve.tiers.codec import decode_tensor, encode_tensor
from ecoserve.tiers.link import Link, LinkEstimator
from ecoserve.tiers.split import SplitPlanner, SplitRunner, run_from

Mode = Literal["split", "cascade"]
#: Round trips below this are treated as equal when deciding whether the link moved.
_RTT_FLOOR_S = 1e-4


def link_moved(a: Link | None, b: Link, tolerance: float) -> bool:
    """Whether ``b`` differs from ``a`` by more than ``tolerance`` (relative) in either figure."""
    if a is None:
        return True
    if (a.bandwidth_bps == 0) != (b.bandwidth_bps == 0):
        return True
    if a.bandwidth_bps > 0:
        ratio = b.bandwidth_bps / a.bandwidth_bps
        if not 1 / (1 + tolerance) <= ratio <= 1 + tolerance:
            return True
    rtt_a, rtt_b = max(a.rtt_s, _RTT_FLOOR_S), max(b.rtt_s, _RTT_FLOOR_S)
    return not 1 / (1 + tolerance) <= rtt_b / rtt_a <= 1 + tolerance


class SplitChoice:
    """The split point as a knob: re-planned when the link moves, or pinned (sans-IO).

    Re-planning only on a move of more than ``tolerance`` keeps estimate noise near a
    crossover from flipping the split on every request. ``history`` keeps the last changes
    as ``(when, split, bandwidth_bps)``; ``when`` is whatever time the caller passes.
    """

    def __init__(
        self, planner: SplitPlanner, *, tolerance: float = 0.1, pinned: int | None = None
    ) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.planner = planner
        self.tolerance = tolerance
        self.split: int = planner.n_stages
        self.planned_for: Link | None = None
        self.changes = 0
        self.history: deque[tuple[float | None, int, float]] = deque(maxlen=32)
        self.pinned: int | None = None
        self.pin(pinned)

    @property
    def n_stages(self) -> int:
        return self.planner.n_stages

    def pin(self, split: int | None) -> None:
        """Hold the split at ``split`` (a tuner moving the knob); None re-enables planning."""
        if split is not None and not 0 <= split <= self.n_stages:
            raise ValueError(f"split point {split} outside 0..{self.n_stages}")
        self.pinned = split
        self.planned_for = None

    def update(self, link: Link, now: float | None = None) -> int:
        """The split to use on ``link`` (re-planned only if it moved or nothing is planned)."""
        if self.pinned is not None:
            new = self.pinned
        elif link_moved(self.planned_for, link, self.tolerance):
            new = self.planner.best_split(link)
            self.planned_for = link
        else:
            return self.split
        if new != self.split or not self.history:
            if self.history:
                self.changes += 1
            self.history.append((now, new, link.bandwidth_bps))
        self.split = new
        return new


class ThresholdChoice:
    """The cascade threshold as a knob: a fixed value, pinned, or chosen online (sans-IO).

    With a chooser, :meth:`update` re-asks it once ``every`` new observations have reached
    it or the link moved by more than ``tolerance``; the chooser answers 1.0 (forward all)
    until it has seen enough, so asking often early costs nothing. Without one, the fixed
    ``threshold`` holds.
    """

    def __init__(
        self,
        chooser: ThresholdChooser | None = None,
        threshold: float | None = None,
        *,
        every: int = 10,
        tolerance: float = 0.1,
    ) -> None:
        if chooser is None and threshold is None:
            raise ValueError("give a ThresholdChooser or a fixed threshold")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.chooser = chooser
        start = threshold if threshold is not None else 1.0
        self.policy = chooser.policy(start) if chooser is not None else CascadePolicy(start)
        self.every = every
        self.tolerance = tolerance
        self.pinned: float | None = None
        self.chosen_for: Link | None = None
        self.chosen_at = -math.inf
        self.changes = 0
        self.history: deque[tuple[float | None, float, float]] = deque(maxlen=32)

    @property
    def threshold(self) -> float:
        return self.policy.threshold

    def pin(self, threshold: float | None) -> None:
        """Hold the threshold (a tuner moving the knob); None returns to choosing."""
        if threshold is not None:
            self.policy.threshold = threshold
        self.pinned = threshold
        self.chosen_for = None
        self.chosen_at = -math.inf

    def update(self, link: Link, rate: float = 0.0, now: float | None = None) -> float:
        """The threshold to use now on ``link`` at ``rate`` requests/s."""
        if self.pinned is not None or self.chooser is None:
            return self.policy.threshold
        seen = self.chooser.observations
        if seen - self.chosen_at < self.every and not link_moved(
            self.chosen_for, link, self.tolerance
        ):
            return self.policy.threshold
        new = self.chooser.choose(link, rate)
        self.chosen_for, self.chosen_at = link, seen
        if new != self.policy.threshold or not self.history:
            if self.history:
                self.changes += 1
            self.history.append((now, new, link.bandwidth_bps))
        self.policy.threshold = new
        return new


class ArrivalRate:
    """Requests per second over the last ``window_s`` seconds (sans-IO: times are given)."""

    def __init__(self, window_s: float = 10.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first: float | None = None

    def observe(self, now: float, count: int = 1) -> None:
        if self._first is None:
            self._first = now
        self._times.extend([now] * count)
        self.rate(now)

    def rate(self, now: float) -> float:
        """Arrivals in ``(now - window, now]`` over the window (or the time seen, if shorter)."""
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if self._first is None:
            return 0.0
        span = min(self.window_s, max(now - self._first, 1e-3))
        return len(self._times) / span


class NextTier(Protocol):
    """What a node needs of the next tier (``NextTierClient`` in the daemon)."""

    estimator: LinkEstimator

    def link(self) -> Link | None: ...

    async def connect(self) -> None: ...

    async def send(self, k: int, payload: bytes) -> bytes: ...

    async def forward(self, payload: bytes) -> bytes: ...

    async def ping(self) -> float: ...

    async def probe(self, nbytes: int | None = None) -> float: ...


@dataclass(frozen=True)
class TierAnswer:
    """One batch's answer and how it was reached.

    ``forwarded[i]``: row ``i`` was (at least partly) computed on the next tier.
    ``fallback``: the next tier failed and this tier finished the batch itself.
    """

    output: torch.Tensor
    mode: Mode
    split: int | None
    threshold: float | None
    forwarded: tuple[bool, ...]
    fallback: bool
    latency_s: float


class TierNode:
    """Runs requests across this tier and the next, in split or cascade mode.

    Build it with :meth:`for_split` or :meth:`for_cascade`. Not thread-safe: one event
    loop drives it (the daemon's).
    """

    def __init__(
        self,
        next_tier: NextTier,
        *,
        mode: Mode,
        stages: nn.Sequential | None = None,
        split: SplitChoice | None = None,
        small: nn.Module | None = None,
        cascade: ThresholdChoice | None = None,
        probe_interval_s: float = 2.0,
        rate_window_s: float = 10.0,
        fp16: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode == "split" and (stages is None or split is None):
            raise ValueError("split mode needs the stages and a SplitChoice")
        if mode == "cascade" and (small is None or cascade is None):
            raise ValueError("cascade mode needs the small model and a ThresholdChoice")
        if mode not in ("split", "cascade"):
            raise ValueError(f"mode must be split or cascade, got {mode!r}")
        if stages is not None and split is not None and len(stages) != split.n_stages:
            raise ValueError(
                f"{len(stages)} stages but the planner's profiles have {split.n_stages}"
            )
        self.next_tier = next_tier
        self.mode: Mode = mode
        self.stages = stages
        self.split_choice = split
        self.cascade_choice = cascade
        self.probe_interval_s = probe_interval_s
        self.clock = clock
        self.rate = ArrivalRate(rate_window_s)
        self.requests = 0
        self.rows_forwarded = 0
        self.rows_local = 0
        self.fallbacks = 0
        self.probes = 0
        self.last_error: str | None = None
        self.last_latency_s: float | None = None
        self._down_until = -math.inf
        self._last_sent = -math.inf
        self._probe_task: asyncio.Task[None] | None = None
        self._started = False
        self._split_runner: SplitRunner | None = None
        self._cascade_runner: CascadeRunner | None = None
        if mode == "split":
            assert stages is not None
            self._split_runner = SplitRunner(stages, self._send, fp16=fp16)
        else:
            assert small is not None and cascade is not None
            self.small = small.eval()
            self._cascade_runner = CascadeRunner(
                small, cascade.policy, self._forward, chooser=cascade.chooser, fp16=fp16
            )

    @classmethod
    def for_split(
        cls,
        stages: nn.Sequential,
        planner: SplitPlanner,
        next_tier: NextTier,
        *,
        pinned: int | None = None,
        tolerance: float = 0.1,
        **kwargs: Any,
    ) -> TierNode:
        """A node that runs ``stages[:k]`` here, ``k`` planned from the link estimate."""
        choice = SplitChoice(planner, tolerance=tolerance, pinned=pinned)
        return cls(next_tier, mode="split", stages=stages, split=choice, **kwargs)

    @classmethod
    def for_cascade(
        cls,
        small: nn.Module,
        next_tier: NextTier,
        *,
        chooser: ThresholdChooser | None = None,
        threshold: float | None = None,
        every: int = 10,
        **kwargs: Any,
    ) -> TierNode:
        """A node that answers with ``small`` when confident, else forwards the input."""
        choice = ThresholdChoice(chooser, threshold, every=every)
        return cls(next_tier, mode="cascade", small=small, cascade=choice, **kwargs)

    # -- link -----------------------------------------------------------------------------

    def link(self) -> Link:
        """The link as the node prices it: the estimate, or a dead link (stay local)."""
        known = self.next_tier.link()
        if self.clock() < self._down_until or known is None:
            return Link(bandwidth_bps=0.0, rtt_s=self.next_tier.estimator.rtt_s)
        return known

    def _failed(self, exc: Exception) -> None:
        self.fallbacks += 1
        self.last_error = str(exc)
        self._down_until = self.clock() + self.probe_interval_s

    async def start(self) -> None:
        """Connect, ping and probe so the first choice has a link to price (failures kept)."""
        self._started = True
        await self._probe(connect=True)

    async def _probe(self, connect: bool = False) -> None:
        self.probes += 1
        try:
            if connect:
                await self.next_tier.connect()
            await self.next_tier.ping()
            await self.next_tier.probe()
        except Exception as exc:  # noqa: BLE001 - any failure means: not reachable now
            self.last_error = str(exc)
            self._down_until = self.clock() + self.probe_interval_s
        else:
            self._down_until = -math.inf
            self._last_sent = self.clock()

    def _maybe_probe(self) -> None:
        idle = self.clock() - self._last_sent
        if idle < self.probe_interval_s or self.clock() < self._down_until:
            return
        if self._probe_task is not None and not self._probe_task.done():
            return
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def aclose(self) -> None:
        """Stop a background probe (the client is the caller's to close)."""
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
            try:
                await self._probe_task
            except asyncio.CancelledError:
                pass

    # -- the two modes --------------------------------------------------------------------

    async def _send(self, k: int, payload: bytes) -> bytes:
        """``send`` for the split runner: the next tier, else the tail here."""
        try:
            reply = await self.next_tier.send(k, payload)
        except Exception as exc:  # noqa: BLE001 - finish the batch here whatever went wrong
            self._failed(exc)
            assert self.stages is not None
            stages = self.stages
            tensor = decode_tensor(payload)
            out = await asyncio.to_thread(run_from, stages, k, tensor)
            raise _LocalTail(encode_tensor(out)) from exc
        self._last_sent = self.clock()
        return reply

    async def _forward(self, payload: bytes) -> bytes:
        reply = await self.next_tier.forward(payload)
        self._last_sent = self.clock()
        return reply

    def set_split(self, split: int | None) -> None:
        """Pin the split point (a tuner's move) or, with None, return it to the planner."""
        if self.split_choice is None:
            raise ValueError("not a split node")
        self.split_choice.pin(split)

    def set_threshold(self, threshold: float | None) -> None:
        """Pin the cascade threshold or, with None, return it to the chooser."""
        if self.cascade_choice is None:
            raise ValueError("not a cascade node")
        self.cascade_choice.pin(threshold)

    async def infer(self, x: torch.Tensor) -> TierAnswer:
        """The model's answer for the batch ``x``, split or cascaded per the current knob."""
        if not self._started:
            await self.start()
        t0 = self.clock()
        rows = int(x.shape[0]) if x.dim() > 0 else 1
        self.requests += 1
        self.rate.observe(t0, rows)
        link = self.link()
        if self._split_runner is not None:
            answer = await self._infer_split(x, link, rows, t0)
        else:
            answer = await self._infer_cascade(x, link, rows, t0)
        self.rows_forwarded += sum(answer.forwarded)
        self.rows_local += rows - sum(answer.forwarded)
        self.last_latency_s = answer.latency_s
        self._maybe_probe()
        return answer

    async def _infer_split(self, x: torch.Tensor, link: Link, rows: int, t0: float) -> TierAnswer:
        assert self._split_runner is not None and self.split_choice is not None
        k = self.split_choice.update(link, t0)
        fallback = False
        try:
            out = await self._split_runner.run(x, k)
        except _LocalTail as tail:
            out, fallback = decode_tensor(tail.payload), True
        sent = k < self.split_choice.n_stages and not fallback
        return TierAnswer(out, "split", k, None, (sent,) * rows, fallback, self.clock() - t0)

    async def _infer_cascade(self, x: torch.Tensor, link: Link, rows: int, t0: float) -> TierAnswer:
        assert self._cascade_runner is not None and self.cascade_choice is not None
        threshold = self.cascade_choice.update(link, self.rate.rate(t0), t0)
        try:
            result = await self._cascade_runner.run(x)
        except Exception as exc:  # noqa: BLE001 - answer with the small model alone
            self._failed(exc)
            with torch.inference_mode():
                out = await asyncio.to_thread(self.small, x)
            return TierAnswer(
                out.float(), "cascade", None, threshold, (False,) * rows, True, self.clock() - t0
            )
        return TierAnswer(
            result.logits, "cascade", None, threshold, result.forwarded, False, self.clock() - t0
        )

    def status(self) -> dict[str, Any]:
        """What the node is doing, JSON-serialisable (for ``/v1/tier/status`` and logs)."""
        link = self.link()
        est = self.next_tier.estimator
        out: dict[str, Any] = {
            "mode": self.mode,
            "link": {
                "bandwidth_bps": link.bandwidth_bps,
                "rtt_s": link.rtt_s,
                "measured_transfers": est.transfers,
                "rtt_samples": est.rtt_samples,
                "down": self.clock() < self._down_until,
            },
            "requests": self.requests,
            "rows_local": self.rows_local,
            "rows_forwarded": self.rows_forwarded,
            "fallbacks": self.fallbacks,
            "probes": self.probes,
            "last_error": self.last_error,
            "last_latency_s": self.last_latency_s,
            "rate_rps": self.rate.rate(self.clock()),
        }
        if self.split_choice is not None:
            c = self.split_choice
            out.update(
                split=c.split,
                n_stages=c.n_stages,
                pinned=c.pinned,
                changes=c.changes,
                history=[list(h) for h in c.history],
            )
        if self.cascade_choice is not None:
            t = self.cascade_choice
            out.update(
                threshold=t.threshold,
                pinned=t.pinned,
                changes=t.changes,
                history=[list(h) for h in t.history],
                chooser_observations=None if t.chooser is None else t.chooser.observations,
            )
        if hasattr(self.next_tier, "stats"):
            out["next_tier"] = self.next_tier.stats()
        return out


class _LocalTail(Exception):
    """Carries the locally computed tail out of the split runner after a failed send."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("next tier failed; tail computed here")
        self.payload = payload
