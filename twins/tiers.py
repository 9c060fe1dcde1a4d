"""Twins of a device that splits or cascades a model to the next tier over a link.

They make a tier choice one more knob of the ordinary simulator: a batch of ``b`` requests
at split point ``k`` (or cascade threshold ``t``) takes what the daemon's batch function would
take, computed with the same formulas the planner and the chooser price with
(``ecoserve.core.tiers``), on a bandwidth schedule (:class:`~twins.link.EmulatedLink`):

- :class:`SplitTwin`: stages ``[:k]`` here, the cut tensor up, stages ``[k:]`` on the next
  tier (which has capacity to spare: no queue there), the answer back.
- :class:`CascadeTwin`: the small model on every row here, the rows it is unsure of (recorded
  scores of a real model on real inputs) up to the big one. The rows' answers are counted
  against their labels for the report; the engine is told the errors the daemon would
  estimate (the threshold chooser's per-bucket disagreement), since a daemon has no labels.

Energy is the device's: compute at ``P_busy``, radio time at ``P_tx``, the round trip and the
next tier's compute at ``P_idle``. What the daemon knows of the link is an estimate, told each
exchange's duration once it has finished plus a probe when nothing was sent for a while;
:meth:`context` hands that estimate to the engine (``oracle=True``: the true link). An
exchange that cannot finish within ``timeout_s`` (a dead link) falls back, as the daemon
does, to finishing the batch here.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ecoserve.core.knobs import DEFAULT_THRESHOLDS, SPLIT, THRESHOLD, Knob, split_knob
from ecoserve.core.knobs import threshold_knob as make_threshold_knob
from ecoserve.core.link import Link, LinkEstimator, link_context
from ecoserve.core.tiers import (
    CascadeCosts,
    CascadePolicy,
    DevicePower,
    SplitCosts,
    cascade_batch,
)
from tuners.cascade_threshold import ThresholdChooser
from twins.base import BatchSample, DeviceTwin
from twins.link import EmulatedLink


@dataclass(frozen=True)
class TierBatch:
    """One simulated batch, for reports: when, how many rows, the knob, what was sent."""

    start: float
    rows: int
    knob: float
    forwarded: int
    sent_bytes: int
    correct: int | None
    fallback: bool


class _LinkUse:
    """The uplink on the schedule, and what the daemon's estimator has been told by ``now``."""

    def __init__(
        self,
        link: EmulatedLink,
        estimator: LinkEstimator,
        *,
        oracle: bool,
        probe_interval_s: float,
        probe_bytes: int,
    ) -> None:
        self.link = link
        self.estimator = estimator
        self.oracle = oracle
        self.probe_interval_s = probe_interval_s
        self.probe_bytes = probe_bytes
        self.free_at = 0.0
        self.last_sent = -math.inf
        self.probes = 0
        self._pending: list[tuple[float, int, float, float]] = []  # (done, seq, bytes, s)
        self._seq = 0

    def known(self, now: float) -> Link:
        """The link as priced at ``now``: the truth (oracle) or what has been measured."""
        if self.oracle:
            return self.link.link_at(now)
        while self._pending and self._pending[0][0] <= now:
            _, _, nbytes, seconds = heapq.heappop(self._pending)
            self.estimator.observe_rtt(self.link.rtt_s)
            self.estimator.observe_transfer(nbytes, seconds, includes_rtt=True)
        if self.estimator.bandwidth_bps is None:
            return Link(0.0, self.estimator.rtt_s)
        return self.estimator.link()

    def maybe_probe(self, now: float) -> None:
        """A ping and ``probe_bytes`` when nothing has been sent for ``probe_interval_s``."""
        if self.oracle or now - self.last_sent < self.probe_interval_s:
            return
        self.probes += 1
        self.exchange(now, self.probe_bytes, 0, 0.0)

    def exchange(
        self, ready: float, up_bytes: float, down_bytes: float, server_s: float
    ) -> tuple[float, float]:
        """Send ``up_bytes`` once ready, get ``down_bytes`` back: (done time, radio seconds)."""
        start = max(ready, self.free_at)
        up_end = self.link.transfer_end(up_bytes, start)
        self.free_at = up_end
        down_start = up_end + self.link.rtt_s + server_s
        done = self.link.transfer_end(down_bytes, down_start)
        radio = (up_end - start) + (done - down_start)
        self.last_sent = ready
        if math.isfinite(done):
            self._seq += 1
            record = (done, self._seq, up_bytes + down_bytes, radio + self.link.rtt_s)
            heapq.heappush(self._pending, record)
        return done, radio


class _TierTwin(DeviceTwin):
    """What the split and cascade twins share: the link, its estimate, the batch log."""

    observes_environment = True

    def __init__(
        self,
        power: DevicePower,
        link: EmulatedLink,
        *,
        estimator: LinkEstimator | None,
        oracle: bool,
        probe_interval_s: float,
        probe_bytes: int,
        timeout_s: float,
        noise: float,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.tier_power = power
        self.link = link
        self.use = _LinkUse(
            link,
            estimator if estimator is not None else LinkEstimator(alpha=0.5),
            oracle=oracle,
            probe_interval_s=probe_interval_s,
            probe_bytes=probe_bytes,
        )
        self.timeout_s = timeout_s
        self.noise = noise
        self.log: list[TierBatch] = []
        self._now = 0.0

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        """Idle: ``P_idle``. Busy: the batch's priced energy over its priced time."""
        if busy <= 0:
            return self.tier_power.idle_w
        seconds, joules = self._priced(batch or 1, freqs, self.link.link_at(self._now))
        return joules / seconds if seconds > 0 else self.tier_power.busy_w

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        return self._priced(batch, freqs, self.link.link_at(self._now))[0]

    def _priced(self, rows: int, freqs: Mapping[str, float], link: Link) -> tuple[float, float]:
        raise NotImplementedError

    def context(self, now: float) -> dict[str, float]:
        """The daemon's link estimate at ``now`` (probing first if nothing was sent lately)."""
        self._now = now
        self.use.maybe_probe(now)
        return link_context(self.use.known(now))

    @property
    def probes(self) -> int:
        return self.use.probes

    def _jitter(self, seconds: float, rng: random.Random) -> float:
        if not self.noise:
            return seconds
        return seconds * max(0.05, 1.0 + self.noise * rng.gauss(0.0, 1.0))

    def _send(self, ready: float, up: float, down: float, server_s: float) -> tuple[float, float]:
        """(done, radio seconds) of an exchange, or (inf, 0) if it cannot end in time."""
        done, radio = self.use.exchange(ready, up, down, server_s)
        if not math.isfinite(done) or done - ready > self.timeout_s:
            return math.inf, 0.0
        return done, radio


class SplitTwin(_TierTwin):
    """Stages ``[:k]`` here and ``[k:]`` on the next tier; ``k`` is the ``split_point`` knob.

    Stage times and bytes scale with the batch's rows (the profiles are per row; no batching
    gain is assumed). A split computes the same function, so it makes no errors.
    """

    def __init__(
        self,
        costs: SplitCosts,
        link: EmulatedLink,
        *,
        estimator: LinkEstimator | None = None,
        oracle: bool = False,
        probe_interval_s: float = 1.0,
        probe_bytes: int = 2048,
        timeout_s: float = 30.0,
        noise: float = 0.0,
    ) -> None:
        super().__init__(
            costs.power,
            link,
            estimator=estimator,
            oracle=oracle,
            probe_interval_s=probe_interval_s,
            probe_bytes=probe_bytes,
            timeout_s=timeout_s,
            noise=noise,
        )
        self.costs = costs
        self.name = "split"
        n = costs.n_stages
        self._dev = np.cumsum((0.0, *costs.device.times_s)).tolist()
        self._srv = np.cumsum((0.0, *costs.server.times_s)).tolist()
        self._wire = [costs.wire_bytes(j) for j in range(n + 1)]

    def knobs(self) -> list[Knob]:
        return [split_knob(self.costs.n_stages)]

    def _split(self, freqs: Mapping[str, float]) -> int:
        return int(round(freqs.get(SPLIT, self.costs.n_stages)))

    def _priced(self, rows: int, freqs: Mapping[str, float], link: Link) -> tuple[float, float]:
        f = self.costs.figures(self._split(freqs), link, rows)
        return f.latency_s, f.energy_j

    def sample_batch(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random, now: float
    ) -> BatchSample:
        self._now = now
        n, k, p = self.costs.n_stages, self._split(freqs), self.tier_power
        dev_s = self._jitter(batch * self._dev[k], rng)
        energy = dev_s * p.busy_w
        done, sent, fallback = now + dev_s, 0, False
        if k < n:
            srv_s = batch * (self._srv[n] - self._srv[k])
            up, down = batch * self._wire[k], batch * self._wire[n]
            end, radio = self._send(now + dev_s, up, down, srv_s)
            if math.isfinite(end):
                done, sent = end, up
                energy += p.exchange_j(radio, self.link.rtt_s + srv_s)
            else:  # the daemon gives up on the next tier and runs the tail here
                tail_s = self._jitter(batch * (self._dev[n] - self._dev[k]), rng)
                done = now + dev_s + self.timeout_s + tail_s
                energy += self.timeout_s * p.idle_w + tail_s * p.busy_w
                fallback = True
        self.log.append(TierBatch(now, batch, float(k), batch if sent else 0, sent, None, fallback))
        return BatchSample(done - now, energy)


@dataclass(frozen=True)
class CascadeSamples:
    """Per input: the small model's confidence and class, the big model's class, the label.

    Recorded from the real models on real inputs (``ecoserve.replay.tiers``); a replay draws
    inputs from these in a seeded order, so forwarding rates and accuracies are measured ones.
    """

    scores: np.ndarray
    small_preds: np.ndarray
    big_preds: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.scores)
        if m == 0:
            raise ValueError("cascade samples need at least one input")
        if not len(self.small_preds) == len(self.big_preds) == len(self.labels) == m:
            raise ValueError("scores, small_preds, big_preds and labels must have one row each")

    def __len__(self) -> int:
        return len(self.scores)


class CascadeTwin(_TierTwin):
    """The small model here, unsure rows to the big one; ``t`` is the ``cascade_threshold`` knob.

    With a ``chooser``, every row is reported to it as the daemon's runner reports it, and the
    batch's errors are the chooser's estimate for the rows answered here; without one the
    engine is told no errors (a tuner then sees only energy and latency). ``explore`` is the
    share of confident rows forwarded anyway to keep the estimate unbiased (default: the
    chooser's, as in the daemon; 0 for a threshold that must hold exactly).
    """

    def __init__(
        self,
        costs: CascadeCosts,
        power: DevicePower,
        samples: CascadeSamples,
        link: EmulatedLink,
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        chooser: ThresholdChooser | None = None,
        estimator: LinkEstimator | None = None,
        oracle: bool = False,
        probe_interval_s: float = 1.0,
        probe_bytes: int = 2048,
        timeout_s: float = 30.0,
        noise: float = 0.0,
        seed: int = 0,
        explore: float | None = None,
    ) -> None:
        super().__init__(
            power,
            link,
            estimator=estimator,
            oracle=oracle,
            probe_interval_s=probe_interval_s,
            probe_bytes=probe_bytes,
            timeout_s=timeout_s,
            noise=noise,
        )
        self.costs = costs
        self.samples = samples
        self.chooser = chooser
        self.name = "cascade"
        self._knob = make_threshold_knob(chooser.thresholds if chooser else thresholds)
        if explore is None:
            explore = chooser.explore if chooser is not None else 0.0
        self.policy = CascadePolicy(self._knob.values[-1], explore=explore, seed=seed)
        self._order = np.random.default_rng(seed).permutation(len(samples)).tolist()
        self._next = 0

    def knobs(self) -> list[Knob]:
        return [self._knob]

    def _threshold(self, freqs: Mapping[str, float]) -> float:
        return float(freqs.get(THRESHOLD, self._knob.values[-1]))

    def _priced(self, rows: int, freqs: Mapping[str, float], link: Link) -> tuple[float, float]:
        t = self._threshold(freqs)
        kept = float(np.mean(self.samples.scores >= t)) if t < 1.0 else 0.0
        forwarded = int(round(rows * (1.0 - kept)))
        return cascade_batch(self.costs, self.tier_power, link, rows, forwarded)

    def _draw(self, rows: int) -> list[int]:
        order, out = self._order, []
        for _ in range(rows):
            out.append(order[self._next % len(order)])
            self._next += 1
        return out

    def sample_batch(
        self, batch: int, freqs: Mapping[str, float], rng: random.Random, now: float
    ) -> BatchSample:
        self._now = now
        s, p, c = self.samples, self.tier_power, self.costs
        self.policy.threshold = self._threshold(freqs)
        rows = self._draw(batch)
        decision = self.policy.decide(
            [float(s.scores[j]) for j in rows], [int(s.small_preds[j]) for j in rows]
        )
        forward = decision.forward_rows
        small_s = self._jitter(batch * c.small_s, rng)
        energy = small_s * p.busy_w
        done, fallback = now + small_s, False
        answered_big = set()
        if forward:
            n = len(forward)
            big_s = n * c.big_s
            end, radio = self._send(now + small_s, n * c.input_bytes, n * c.output_bytes, big_s)
            if math.isfinite(end):
                done = end
                energy += p.exchange_j(radio, self.link.rtt_s + big_s)
                answered_big = set(forward)
            else:  # the daemon keeps the small model's answers when the next tier is gone
                done = now + small_s + self.timeout_s
                energy += self.timeout_s * p.idle_w
                fallback = True
        bigs = [int(s.big_preds[j]) if i in answered_big else None for i, j in enumerate(rows)]
        answers = [s.small_preds[j] if b is None else b for b, j in zip(bigs, rows, strict=True)]
        correct = sum(int(a == s.labels[j]) for a, j in zip(answers, rows, strict=True))
        errors = 0.0
        if self.chooser is not None:
            errors = self.chooser.observe_batch(decision.scores, decision.preds, bigs)
        sent = len(answered_big) * c.input_bytes
        self.log.append(
            TierBatch(now, batch, self.policy.threshold, len(answered_big), sent, correct, fallback)
        )
        return BatchSample(done - now, energy, errors)
