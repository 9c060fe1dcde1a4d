"""This tier's side of splitting and cascading: run here, send the rest, follow the link.

The split point and the cascade threshold are knobs of the engine's ordinary search space:
the engine's tuner chooses them and the runtime applies them through :class:`TierActuator`,
as it applies clocks through a device's actuator. What is left here is I/O:

- :class:`SplitRunner` runs ``stages[:k]`` here and hands the encoded tensor to an injected
  ``send(k, payload)`` (the next tier runs ``stages[k:]``).
- :class:`CascadeRunner` runs the small model, forwards the rows below the threshold through
  an injected ``forward(payload)``, and reports every row to the threshold chooser, whose
  per-bucket disagreement is also the engine's estimate of the answers it got wrong.
- :class:`TierNode` owns one runner and the client of the next tier (anything with ``send``/
  ``forward``/``ping``/``probe`` and an ``estimator``: ``NextTierClient`` in the daemon).
  ``infer(x)`` runs one batch. If the next tier fails, the batch is finished here (the split
  tail runs locally, the cascade keeps the small model's answer) and the link counts as down
  until a probe gets through: a tier that cannot be reached must not take the device's
  answers with it. While nothing is being sent (split point ``N``, threshold 0), a background
  probe every ``probe_interval_s`` keeps the estimate fresh. :meth:`TierNode.context` is the
  link estimate the runtime hands the engine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from devices.base import Actuator
from ecoserve.core.knobs import (
    DEFAULT_THRESHOLDS,
    SPLIT,
    THRESHOLD,
    Knob,
    split_knob,
    threshold_knob,
)
from ecoserve.core.link import Link, LinkEstimator, link_context
from ecoserve.core.tiers import CascadePolicy
from ecoserve.models.cascade import decide
from ecoserve.models.stages import run_from, run_stages
from ecoserve.models.tensor_codec import decode_tensor, encode_tensor
from tuners.cascade_threshold import ThresholdChooser

Mode = Literal["split", "cascade"]
SendFn = Callable[[int, bytes], Awaitable[bytes]]
ForwardFn = Callable[[bytes], Awaitable[bytes]]


class SplitRunner:
    """Runs ``stages[:k]`` here and the rest through ``send(k, payload) -> reply``.

    ``send`` is injected (an HTTP client in the daemon, a direct call in tests): it gets
    the split point and the encoded tensor at that cut, and returns the encoded output of
    ``stages[k:]``. ``k = N`` runs everything here and sends nothing. Local stages run in a
    worker thread (``in_thread``) so the event loop keeps accepting requests meanwhile.
    """

    def __init__(
        self,
        stages: nn.Sequential,
        send: SendFn,
        *,
        fp16: bool = False,
        in_thread: bool = True,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.stages = stages
        self.send = send
        self.fp16 = fp16
        self.in_thread = in_thread
        self.compute_dtype = compute_dtype

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    async def run(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The model's output for ``x`` with the first ``k`` stages computed here."""
        if not 0 <= k <= self.n_stages:
            raise ValueError(f"split point {k} outside 0..{self.n_stages}")
        if self.in_thread:
            h = await asyncio.to_thread(run_stages, self.stages, 0, k, x)
        else:
            h = run_stages(self.stages, 0, k, x)
        if k == self.n_stages:
            return h
        reply = await self.send(k, encode_tensor(h, fp16=self.fp16))
        return decode_tensor(reply, dtype=self.compute_dtype)


@dataclass(frozen=True)
class CascadeResult:
    """A batch's answers and where each came from; ``errors``: the estimated wrong ones."""

    logits: torch.Tensor
    preds: tuple[int, ...]
    scores: tuple[float, ...]
    forwarded: tuple[bool, ...]
    errors: float = 0.0


class CascadeRunner:
    """The small model here, the big one through ``forward(payload) -> reply``.

    ``forward`` is injected (an HTTP client in the daemon, a direct call in tests): it gets
    the encoded rows to forward and returns the encoded logits of the big model for them.
    A forwarded row's answer is the big model's. With a ``chooser``, every row is reported
    to it, and a row answered here counts as its bucket's estimated error rate.
    """

    def __init__(
        self,
        small: nn.Module,
        policy: CascadePolicy,
        forward: ForwardFn,
        *,
        chooser: ThresholdChooser | None = None,
        fp16: bool = False,
        in_thread: bool = True,
    ) -> None:
        self.small = small.eval()
        self.policy = policy
        self.forward = forward
        self.chooser = chooser
        self.fp16 = fp16
        self.in_thread = in_thread

    def _small(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.small(x)

    async def run(self, x: torch.Tensor) -> CascadeResult:
        """Answers for the batch ``x`` (N, ...)."""
        if self.in_thread:
            logits = await asyncio.to_thread(self._small, x)
        else:
            logits = self._small(x)
        decision = decide(self.policy, logits)
        rows = decision.forward_rows
        out = logits.detach().to(torch.float32).clone()
        preds = list(decision.preds)
        big_of: dict[int, int] = {}
        if rows:
            reply = await self.forward(encode_tensor(x[rows], fp16=self.fp16))
            big = decode_tensor(reply, dtype=torch.float32)
            if big.dim() != 2 or big.shape[0] != len(rows) or big.shape[1] != out.shape[1]:
                raise ValueError(
                    f"next tier answered shape {tuple(big.shape)} for {len(rows)} rows of "
                    f"{out.shape[1]} classes"
                )
            out[rows] = big
            big_of = dict(zip(rows, (int(p) for p in big.argmax(dim=1).tolist()), strict=True))
            for i, bp in big_of.items():
                preds[i] = bp
        errors = 0.0
        if self.chooser is not None:
            bigs = [big_of.get(i) for i in range(len(decision.local))]
            errors = self.chooser.observe_batch(decision.scores, decision.preds, bigs)
        forwarded = tuple(not keep for keep in decision.local)
        return CascadeResult(out, tuple(preds), decision.scores, forwarded, errors)


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

    Build it with :meth:`for_split` or :meth:`for_cascade`; the knob (``split``, or the
    cascade ``policy``'s threshold) starts at its maximum (everything here; forward
    everything) and moves when the engine applies a configuration. Not thread-safe: one
    event loop drives it (the daemon's).
    """

    def __init__(
        self,
        next_tier: NextTier,
        *,
        mode: Mode,
        stages: nn.Sequential | None = None,
        small: nn.Module | None = None,
        chooser: ThresholdChooser | None = None,
        thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
        probe_interval_s: float = 2.0,
        fp16: bool = False,
        seed: int | None = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode == "split" and stages is None:
            raise ValueError("split mode needs the stages")
        if mode == "cascade" and small is None:
            raise ValueError("cascade mode needs the small model")
        if mode not in ("split", "cascade"):
            raise ValueError(f"mode must be split or cascade, got {mode!r}")
        self.next_tier = next_tier
        self.mode: Mode = mode
        self.stages = stages
        self.chooser = chooser
        self.probe_interval_s = probe_interval_s
        self.clock = clock
        self.requests = 0
        self.rows_forwarded = 0
        self.rows_local = 0
        self.fallbacks = 0
        self.probes = 0
        self.changes = 0
        self.last_error: str | None = None
        self.last_latency_s: float | None = None
        self._errors = 0.0
        self._down_until = -math.inf
        self._last_sent = -math.inf
        self._probe_task: asyncio.Task[None] | None = None
        self._started = False
        self._split_runner: SplitRunner | None = None
        self._cascade_runner: CascadeRunner | None = None
        self._knob: Knob
        if mode == "split":
            assert stages is not None
            self._knob = split_knob(len(stages))
            self.split = len(stages)
            self._split_runner = SplitRunner(stages, self._send, fp16=fp16)
        else:
            assert small is not None
            self._knob = threshold_knob(chooser.thresholds if chooser is not None else thresholds)
            explore = chooser.explore if chooser is not None else 0.0
            self.small = small.eval()
            self.policy = CascadePolicy(self._knob.values[-1], explore=explore, seed=seed)
            self._cascade_runner = CascadeRunner(
                small, self.policy, self._forward, chooser=chooser, fp16=fp16
            )

    @classmethod
    def for_split(cls, stages: nn.Sequential, next_tier: NextTier, **kwargs: Any) -> TierNode:
        """A node that runs ``stages[:k]`` here, ``k`` the engine's ``split_point``."""
        return cls(next_tier, mode="split", stages=stages, **kwargs)

    @classmethod
    def for_cascade(
        cls,
        small: nn.Module,
        next_tier: NextTier,
        *,
        chooser: ThresholdChooser | None = None,
        **kwargs: Any,
    ) -> TierNode:
        """A node that answers with ``small`` when confident, else forwards the input."""
        return cls(next_tier, mode="cascade", small=small, chooser=chooser, **kwargs)

    # -- the knob -------------------------------------------------------------------------

    def knob(self) -> Knob:
        """The engine's knob this node carries out: ``split_point`` or ``cascade_threshold``."""
        return self._knob

    @property
    def value(self) -> float:
        return float(self.split) if self.mode == "split" else self.policy.threshold

    def set_value(self, value: float) -> None:
        """Apply the engine's choice (nearest value of the knob)."""
        v = self._knob.values[self._knob.index_of(float(value))]
        if v != self.value:
            self.changes += 1
        if self.mode == "split":
            self.split = int(v)
        else:
            self.policy.threshold = float(v)

    # -- link -----------------------------------------------------------------------------

    def link(self) -> Link:
        """The link as the node prices it: the estimate, or a dead link (stay local)."""
        known = self.next_tier.link()
        if self.clock() < self._down_until or known is None:
            return Link(bandwidth_bps=0.0, rtt_s=self.next_tier.estimator.rtt_s)
        return known

    def context(self) -> dict[str, float]:
        """The link estimate, as the runtime hands it to the engine after each batch."""
        return link_context(self.link())

    def take_errors(self) -> float:
        """Answers estimated wrong since the last call (the cascade's small model)."""
        errors, self._errors = self._errors, 0.0
        return errors

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

    async def infer(self, x: torch.Tensor) -> TierAnswer:
        """The model's answer for the batch ``x``, split or cascaded per the current knob."""
        if not self._started:
            await self.start()
        t0 = self.clock()
        rows = int(x.shape[0]) if x.dim() > 0 else 1
        self.requests += 1
        if self._split_runner is not None:
            answer = await self._infer_split(x, rows, t0)
        else:
            answer = await self._infer_cascade(x, rows, t0)
        self.rows_forwarded += sum(answer.forwarded)
        self.rows_local += rows - sum(answer.forwarded)
        self.last_latency_s = answer.latency_s
        self._maybe_probe()
        return answer

    async def _infer_split(self, x: torch.Tensor, rows: int, t0: float) -> TierAnswer:
        assert self._split_runner is not None
        n = self._split_runner.n_stages
        # a link known to be down: run everything here rather than wait on it
        k = n if self.clock() < self._down_until else self.split
        fallback = False
        try:
            out = await self._split_runner.run(x, k)
        except _LocalTail as tail:
            out, fallback = decode_tensor(tail.payload), True
        sent = k < n and not fallback
        return TierAnswer(out, "split", k, None, (sent,) * rows, fallback, self.clock() - t0)

    async def _infer_cascade(self, x: torch.Tensor, rows: int, t0: float) -> TierAnswer:
        assert self._cascade_runner is not None
        threshold = self.policy.threshold
        try:
            result = await self._cascade_runner.run(x)
        except Exception as exc:  # noqa: BLE001 - answer with the small model alone
            self._failed(exc)
            with torch.inference_mode():
                out = await asyncio.to_thread(self.small, x)
            return TierAnswer(
                out.float(), "cascade", None, threshold, (False,) * rows, True, self.clock() - t0
            )
        self._errors += result.errors
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
            "knob": self._knob.name,
            "value": self.value,
            "changes": self.changes,
            "requests": self.requests,
            "rows_local": self.rows_local,
            "rows_forwarded": self.rows_forwarded,
            "fallbacks": self.fallbacks,
            "probes": self.probes,
            "last_error": self.last_error,
            "last_latency_s": self.last_latency_s,
        }
        if self.mode == "split":
            out.update(split=self.split, n_stages=len(self.stages or ()))
        else:
            out.update(
                threshold=self.policy.threshold,
                chooser_observations=None if self.chooser is None else self.chooser.observations,
            )
        if hasattr(self.next_tier, "stats"):
            out["next_tier"] = self.next_tier.stats()
        return out


class TierActuator(Actuator):
    """The tier knob as an actuator, so the runtime applies it as it applies clocks."""

    def __init__(self, node: TierNode) -> None:
        self.node = node
        self._initial = node.value

    def knobs(self) -> list[Knob]:
        return [self.node.knob()]

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        name = self.node.knob().name
        if name in values:
            self.node.set_value(values[name])

    def current(self) -> dict[str, float]:
        return {self.node.knob().name: self.node.value}

    def restore(self) -> None:
        """Nothing to put back on the device: the knob lives in this process."""


class _LocalTail(Exception):
    """Carries the locally computed tail out of the split runner after a failed send."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("next tier failed; tail computed here")
        self.payload = payload


__all__ = [
    "SPLIT",
    "THRESHOLD",
    "CascadeRunner",
    "SplitRunner",
    "TierActuator",
    "TierAnswer",
    "TierNode",
]
