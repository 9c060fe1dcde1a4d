"""Tiers in virtual time: replay an arrival trace over a changing link, split or cascaded.

The daemon's decisions come from :class:`SplitPlanner` / :class:`ThresholdChooser` through
:class:`~ecoserve.tiers.node.SplitChoice` / :class:`~ecoserve.tiers.node.ThresholdChoice`;
this module drives the very same objects with virtual time instead of sockets, so a replay
compares split points and thresholds under a bandwidth schedule (:class:`EmulatedLink`)
without a second machine. Nothing sleeps.

Model of one request (all FIFO, one at a time, as on a small device with one radio):

- the device computes its share (``sum T_dev[:k]``, or ``T_small``) when it is free;
- a forwarded payload then waits for the uplink, takes the schedule's transfer time
  (integrated across bandwidth changes), one round trip, the next tier's compute (that tier
  has capacity to spare: no queue there) and the reply's transfer time;
- device energy is the planner's: compute at ``P_busy``, radio time at ``P_tx``, the round
  trip and the next tier's compute at ``P_idle``.

The link estimate is what the daemon would have: a :class:`LinkEstimator` told each
exchange's duration only once the exchange has finished, plus a probe (ping and
``probe_bytes``) whenever nothing was sent for ``probe_interval_s``. ``oracle=True`` prices
with the true link instead, to separate estimation lag from the policy itself.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ecoserve.tiers.cascade import CascadeCosts, ThresholdChooser
from ecoserve.tiers.link import EmulatedLink, Link, LinkEstimator
from ecoserve.tiers.node import ArrivalRate, SplitChoice, ThresholdChoice
from ecoserve.tiers.split import DevicePower, SplitPlanner
from traces.trace import Trace


@dataclass(frozen=True)
class CascadeData:
    """Per input: the small model's logits, the big model's prediction and the label.

    A replay draws inputs from these (cycling through a seeded permutation), so forwarding
    rates and accuracies are the models' measured ones.
    """

    small_logits: torch.Tensor
    big_preds: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        m = self.small_logits.shape[0]
        if self.small_logits.dim() != 2 or len(self.big_preds) != m or len(self.labels) != m:
            raise ValueError("small_logits (M, C), big_preds (M,) and labels (M,) must agree")
        if m == 0:
            raise ValueError("cascade data needs at least one input")

    def __len__(self) -> int:
        return int(self.small_logits.shape[0])

    @classmethod
    @torch.inference_mode()
    def from_models(
        cls, small: nn.Module, big: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> CascadeData:
        small.eval()
        big.eval()
        return cls(
            small_logits=small(x).float(),
            big_preds=big(x).argmax(dim=1).numpy(),
            labels=y.numpy(),
        )


@dataclass(frozen=True)
class TierSimResult:
    """Per-request figures of one replay (index = trace order)."""

    mode: str
    arrivals: np.ndarray
    latency_s: np.ndarray
    energy_j: np.ndarray
    sent_bytes: np.ndarray
    forwarded: np.ndarray
    knob: np.ndarray
    bandwidth_bps: np.ndarray
    correct: np.ndarray | None
    accuracy: float | None = None
    knob_changes: int = 0
    probes: int = 0

    def _mask(self, start_s: float | None, end_s: float | None) -> np.ndarray:
        mask = np.ones(len(self.arrivals), dtype=bool)
        if start_s is not None:
            mask &= self.arrivals >= start_s
        if end_s is not None:
            mask &= self.arrivals < end_s
        return mask

    def summary(self, start_s: float | None = None, end_s: float | None = None) -> dict[str, Any]:
        """Means and tails over requests arriving in ``[start_s, end_s)``."""
        m = self._mask(start_s, end_s)
        n = int(m.sum())
        if n == 0:
            return {"requests": 0}
        lat = self.latency_s[m]
        knob = self.knob[m]
        values, counts = np.unique(knob, return_counts=True)
        if self.correct is not None:
            acc: float | None = float(self.correct[m].mean())
        else:
            acc = self.accuracy
        return {
            "requests": n,
            "latency_mean_s": float(lat.mean()),
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "energy_mean_j": float(self.energy_j[m].mean()),
            "sent_bytes": int(self.sent_bytes[m].sum()),
            "forwarded": float(self.forwarded[m].mean()),
            "accuracy": acc,
            "knob_mode": float(values[np.argmax(counts)]),
        }


class _VirtualLink:
    """The uplink's FIFO, the schedule's transfer times, and what the estimator is told."""

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

    def _observe_later(self, done: float, nbytes: float, seconds: float) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (done, self._seq, nbytes, seconds))

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
            self._observe_later(done, up_bytes + down_bytes, radio + self.link.rtt_s)
        return done, radio


def _arrivals(trace: Trace | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(trace, Trace):
        return np.asarray(trace.arrivals, dtype=np.float64)
    arr = np.asarray(trace, dtype=np.float64).reshape(-1)
    if arr.size > 1 and np.any(np.diff(arr) < 0):
        raise ValueError("arrival times must be sorted")
    return arr


def simulate_split(
    planner: SplitPlanner,
    link: EmulatedLink,
    trace: Trace | Sequence[float] | np.ndarray,
    split: int | None = None,
    *,
    accuracy: float | None = None,
    estimator: LinkEstimator | None = None,
    oracle: bool = False,
    tolerance: float = 0.1,
    probe_interval_s: float = 1.0,
    probe_bytes: int = 2048,
) -> TierSimResult:
    """Replay ``trace`` with split point ``split`` fixed, or (None) planned online.

    ``planner`` supplies the stage times, cut sizes (with its ``fp16`` and framing) and
    power figures; online, a :class:`SplitChoice` around it re-plans as the estimate moves.
    ``accuracy`` is the unsplit model's (a split computes the same function).
    """
    arrivals = _arrivals(trace)
    n = planner.n_stages
    if split is not None and not 0 <= split <= n:
        raise ValueError(f"split point {split} outside 0..{n}")
    choice = SplitChoice(planner, tolerance=tolerance, pinned=split)
    vlink = _VirtualLink(
        link,
        estimator if estimator is not None else LinkEstimator(alpha=0.5),
        oracle=oracle,
        probe_interval_s=probe_interval_s,
        probe_bytes=probe_bytes,
    )
    dev_t = np.cumsum((0.0, *planner.device.times_s))
    srv_t = np.cumsum((0.0, *planner.server.times_s))
    wire = [
        planner.device.transfer_bytes(j, fp16=planner.fp16) + planner.overhead_bytes
        for j in range(n + 1)
    ]
    power = planner.power
    count = len(arrivals)
    latency = np.empty(count)
    energy = np.empty(count)
    sent = np.zeros(count, dtype=np.int64)
    knob = np.empty(count)
    bw = np.empty(count)
    device_free = 0.0
    for i, t in enumerate(arrivals):
        k = choice.update(vlink.known(t), t)
        knob[i] = k
        bw[i] = link.bandwidth_at(t)
        start = max(t, device_free)
        dev_s = float(dev_t[k])
        device_free = start + dev_s
        e = dev_s * power.busy_w
        if k < n:
            srv_s = float(srv_t[n] - srv_t[k])
            done, radio = vlink.exchange(device_free, wire[k], wire[n], srv_s)
            e += radio * power.tx_w + (link.rtt_s + srv_s) * power.idle_w
            sent[i] = wire[k]
        else:
            done = device_free
            vlink.maybe_probe(t)
        latency[i] = done - t
        energy[i] = e
    return TierSimResult(
        mode="split",
        arrivals=arrivals,
        latency_s=latency,
        energy_j=energy,
        sent_bytes=sent,
        forwarded=knob < n,
        knob=knob,
        bandwidth_bps=bw,
        correct=None,
        accuracy=accuracy,
        knob_changes=choice.changes,
        probes=vlink.probes,
    )


def simulate_cascade(
    costs: CascadeCosts,
    power: DevicePower,
    data: CascadeData,
    link: EmulatedLink,
    trace: Trace | Sequence[float] | np.ndarray,
    threshold: float | ThresholdChooser,
    *,
    estimator: LinkEstimator | None = None,
    oracle: bool = False,
    every: int = 10,
    rate_window_s: float = 10.0,
    probe_interval_s: float = 1.0,
    probe_bytes: int = 2048,
    seed: int = 0,
) -> TierSimResult:
    """Replay ``trace`` through a cascade with a fixed threshold or an online chooser.

    Each request takes the next input of a seeded permutation of ``data``; the decision is
    the :class:`CascadePolicy`'s on its small-model logits (with the chooser's exploration
    share when a chooser is given), and the chooser is told what the daemon would tell it
    (at the request's arrival rather than when the big model's answer returns: its choice
    rests on counts over many requests, so the lag does not change it).
    """
    arrivals = _arrivals(trace)
    chooser = threshold if isinstance(threshold, ThresholdChooser) else None
    fixed = None if chooser is not None else float(threshold)
    choice = ThresholdChoice(chooser, fixed, every=every)
    vlink = _VirtualLink(
        link,
        estimator if estimator is not None else LinkEstimator(alpha=0.5),
        oracle=oracle,
        probe_interval_s=probe_interval_s,
        probe_bytes=probe_bytes,
    )
    rate = ArrivalRate(rate_window_s)
    order = np.random.default_rng(seed).permutation(len(data))
    count = len(arrivals)
    latency = np.empty(count)
    energy = np.empty(count)
    sent = np.zeros(count, dtype=np.int64)
    forwarded = np.zeros(count, dtype=bool)
    correct = np.zeros(count, dtype=bool)
    knob = np.empty(count)
    bw = np.empty(count)
    device_free = 0.0
    for i, t in enumerate(arrivals):
        rate.observe(t)
        knob[i] = choice.update(vlink.known(t), rate.rate(t), t)
        bw[i] = link.bandwidth_at(t)
        j = int(order[i % len(order)])
        decision = choice.policy.decide(data.small_logits[j : j + 1])
        score, small_pred = decision.scores[0], decision.preds[0]
        start = max(t, device_free)
        device_free = start + costs.small_s
        e = costs.small_s * power.busy_w
        big_pred = int(data.big_preds[j])
        if decision.local[0]:
            done, pred = device_free, small_pred
            if chooser is not None:
                chooser.observe_local(score)
            vlink.maybe_probe(t)
        else:
            done, radio = vlink.exchange(
                device_free, costs.input_bytes, costs.output_bytes, costs.big_s
            )
            e += radio * power.tx_w + (link.rtt_s + costs.big_s) * power.idle_w
            pred = big_pred
            forwarded[i] = True
            sent[i] = costs.input_bytes
            if chooser is not None:
                chooser.observe_forwarded(score, small_pred, big_pred)
        latency[i] = done - t
        energy[i] = e
        correct[i] = pred == int(data.labels[j])
    return TierSimResult(
        mode="cascade",
        arrivals=arrivals,
        latency_s=latency,
        energy_j=energy,
        sent_bytes=sent,
        forwarded=forwarded,
        knob=knob,
        bandwidth_bps=bw,
        correct=correct,
        knob_changes=choice.changes,
        probes=vlink.probes,
    )
