"""Cascade: a small model answers here when it is confident, else the next tier's big one.

Three parts, the first two sans-IO:

- :class:`CascadePolicy` — the rule. The small model's confidence in an input is its top
  softmax probability; the input is answered here iff that score ``>= threshold``.
  Threshold ``1.0`` forwards everything (special-cased: a float32 softmax saturates to
  exactly 1.0, which would otherwise pass), ``0.0`` forwards nothing.
- :class:`ThresholdChooser` — picks the threshold online. It is told every request's score
  and, for forwarded ones, whether the big model agreed with the small one. From that it
  estimates, per confidence bucket, how often the small model is wrong (taking the big model
  as the reference), and picks the threshold with the lowest expected cost that keeps the
  estimated accuracy above a floor and the uplink below its capacity. A small seeded random
  share of confident inputs is forwarded anyway, so buckets above the threshold keep getting
  labelled and their error estimate stays unbiased (without it, raising the threshold would
  be the only way to learn it was safe to lower it).
- :class:`CascadeRunner` — runs the small model, forwards the unconfident rows through an
  injected async ``forward(payload) -> reply``, and reports back to the chooser.

Expected figures per request for threshold ``t`` with forwarded fraction ``f(t)`` (Liang et
al.'s model compression set-up; ``notes/hardware-and-tiers.md`` section 5)::

    latency  = T_small + f (RTT + T_up(S_in) / (1 - rho) + T_big + T_down(S_out))
    energy   = T_small P_busy + f ((T_up + T_down) P_tx + (RTT + T_big) P_idle)
    rho      = rate f 8 S_in / BW                      (uplink utilisation)
    accuracy = acc_big - sum over kept buckets of P(bucket) err(bucket)
    cost     = a E/E0 + (1-a) L/L0 + error_weight (1 - accuracy)

``E0``, ``L0`` are fixed baselines, as the engine's are: the threshold-1.0 figures (the
knob's maximum: forward everything) on a reference link, without queueing. They must not
follow the link: normalising by the current link's forwarding cost would make forwarding
look equally expensive on every link, and the choice would stop reacting to it. Give them,
or a ``baseline_link``, or the first :meth:`ThresholdChooser.choose` call's link is used.
``error_weight`` is then "cost units per unit of error rate": with the default 1.0 a bucket
is worth forwarding when its error rate exceeds what forwarding it costs relative to
forwarding everything on the reference link.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ecoserve.core.knobs import Knob
from ecoserve.tiers.codec import decode_tensor, encode_tensor
from ecoserve.tiers.link import Link
from ecoserve.tiers.split import DevicePower

#: Knob name the tuners and the runtime agree on.
CASCADE_KNOB = "cascade_threshold"
#: 0.0 (never forward), twelve steps from 0.5 to 0.99 (denser where the small model is
#: usually confident), and 1.0 (always forward).
DEFAULT_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)

#: Prior error of a bucket of saturated (score 1.0) answers: never quite zero.
_MIN_PRIOR_ERROR = 1e-3

ForwardFn = Callable[[bytes], Awaitable[bytes]]


def threshold_knob(values: Sequence[float] = DEFAULT_THRESHOLDS) -> Knob:
    """The threshold as a knob; its maximum (1.0) forwards everything."""
    vals = tuple(float(v) for v in values)
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"thresholds must lie in [0, 1]: {vals}")
    return Knob(CASCADE_KNOB, vals)


def confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top softmax probability and arg-max class of each row of ``logits`` (N, C)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.detach().to(torch.float32), dim=1)
    score, pred = probs.max(dim=1)
    return score, pred


@dataclass(frozen=True)
class CascadeDecision:
    """What the policy decided for each row of a batch."""

    scores: tuple[float, ...]
    preds: tuple[int, ...]
    local: tuple[bool, ...]
    explored: tuple[bool, ...]

    @property
    def forward_rows(self) -> list[int]:
        """Indices of the rows that go to the next tier."""
        return [i for i, keep in enumerate(self.local) if not keep]


class CascadePolicy:
    """Answer here iff the top softmax probability reaches ``threshold``.

    ``explore`` forwards that share of the inputs that would have stayed, chosen by a
    seeded generator (reproducible runs); it exists for the chooser's unbiased error
    estimate and is 0 by default, so a plain policy follows the rule exactly.
    """

    def __init__(self, threshold: float, *, explore: float = 0.0, seed: int | None = 0) -> None:
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        self.threshold = threshold
        self.explore = explore
        self.rng = random.Random(seed)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {value}")
        self._threshold = float(value)

    def keeps(self, score: float) -> bool:
        """The rule alone (no exploration): is a ``score`` answered here?"""
        return self._threshold < 1.0 and score >= self._threshold

    def decide(self, logits: torch.Tensor) -> CascadeDecision:
        """Per-row decision for the small model's ``logits`` (N, C)."""
        score_t, pred_t = confidence(logits)
        scores = tuple(float(s) for s in score_t)
        local, explored = [], []
        for s in scores:
            keep = self.keeps(s)
            probe = keep and self.explore > 0 and self.rng.random() < self.explore
            local.append(keep and not probe)
            explored.append(probe)
        return CascadeDecision(scores, tuple(int(p) for p in pred_t), tuple(local), tuple(explored))


@dataclass(frozen=True)
class CascadeCosts:
    """Per-request figures of the two paths: the small model here, the big one there.

    Times are per request at the batch size served; bytes are what one forwarded
    request sends up (its input, encoded) and gets back (the big model's answer).
    """

    small_s: float
    big_s: float
    input_bytes: int
    output_bytes: int

    def __post_init__(self) -> None:
        if min(self.small_s, self.big_s) < 0 or min(self.input_bytes, self.output_bytes) < 0:
            raise ValueError(f"cascade costs must be >= 0: {self}")


@dataclass(frozen=True)
class ThresholdEstimate:
    """Expected per-request figures of one threshold under the current estimates."""

    threshold: float
    forward_fraction: float
    accuracy: float
    accuracy_bound: float
    latency_s: float
    energy_j: float
    uplink_bps: float
    cost: float
    meets_floor: bool
    fits_link: bool


class ThresholdChooser:
    """Online choice of the cascade threshold (sans-IO).

    Feed it every request: :meth:`observe_local` for answers given here,
    :meth:`observe_forwarded` for the others (with both models' predictions). Then
    :meth:`choose` returns the threshold to use on the given link at the given request rate.

    Confidence buckets are the intervals between consecutive thresholds, so "scores at or
    above ``t``" is always a union of buckets. A bucket's error rate is the big model's
    disagreement rate there, shrunk toward a calibration prior: ``(d + k e0) / (m + k)``
    with ``e0 = 1 - `` the bucket's mid score (a calibrated model with confidence ``p`` is
    wrong ``1 - p`` of the time) and ``k = prior_weight`` pseudo-observations. A flat prior
    (0.5) would hold a bucket of 0.99-confident answers at a high error rate for hundreds
    of labels, and the floor would keep everything forwarded far longer than the data
    warrants. The cost uses that estimate; the floor uses it plus ``confidence_z``
    standard errors, so a bucket seen rarely is trusted less. Counts decay with
    ``halflife`` (in requests) so the estimate follows a drifting input mix; None keeps
    everything.

    Until ``min_observations`` requests are seen it answers the maximum (1.0): forwarding
    everything is the accurate choice and labels every bucket fastest.

    Choice: among thresholds that meet ``accuracy_floor`` (estimated with the upper error
    bound) and keep the uplink utilisation under ``max_utilisation``, the lowest cost.
    If none meets the floor, the most accurate that fits the link; if none fits the link,
    the one that forwards least.
    """

    def __init__(
        self,
        costs: CascadeCosts,
        power: DevicePower,
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        accuracy_floor: float = 0.0,
        big_accuracy: float = 1.0,
        alpha: float = 0.5,
        e0_j: float | None = None,
        l0_s: float | None = None,
        baseline_link: Link | None = None,
        error_weight: float = 1.0,
        explore: float = 0.05,
        max_utilisation: float = 0.8,
        confidence_z: float = 1.0,
        prior_weight: float = 2.0,
        halflife: float | None = None,
        min_observations: int = 50,
        seed: int | None = 0,
    ) -> None:
        self._knob = threshold_knob(thresholds)
        # bucket edges: the thresholds, plus 0 so scores below the lowest have a bucket
        self._edges = tuple(sorted({0.0, *self.thresholds}))
        if not 0.0 <= accuracy_floor <= 1.0 or not 0.0 <= big_accuracy <= 1.0:
            raise ValueError("accuracy_floor and big_accuracy must be in [0, 1]")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= explore < 1.0:
            raise ValueError(f"explore must be in [0, 1), got {explore}")
        if not 0.0 < max_utilisation <= 1.0:
            raise ValueError(f"max_utilisation must be in (0, 1], got {max_utilisation}")
        if halflife is not None and not halflife > 0:
            raise ValueError(f"halflife must be > 0 requests, got {halflife}")
        if error_weight < 0 or confidence_z < 0 or not prior_weight > 0:
            raise ValueError("error_weight, confidence_z must be >= 0 and prior_weight > 0")
        self.costs = costs
        self.power = power
        self.accuracy_floor = accuracy_floor
        self.big_accuracy = big_accuracy
        self.alpha = alpha
        if (e0_j is None) != (l0_s is None):
            raise ValueError("give both baselines e0_j and l0_s, or neither")
        if e0_j is not None and l0_s is not None and not (e0_j > 0 and l0_s > 0):
            raise ValueError(f"baselines must be > 0, got E0={e0_j} J, L0={l0_s} s")
        self.baseline: tuple[float, float] | None = (
            (float(e0_j), float(l0_s)) if e0_j is not None and l0_s is not None else None
        )
        self.error_weight = error_weight
        self.explore = explore
        self.max_utilisation = max_utilisation
        self.confidence_z = confidence_z
        self.prior_weight = prior_weight
        self.halflife = halflife
        self.min_observations = min_observations
        self.seed = seed
        self.reset()
        if baseline_link is not None and self.baseline is None:
            self.set_baseline(baseline_link)

    # -- observations ---------------------------------------------------------------------

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._knob.values)

    def knob(self) -> Knob:
        return self._knob

    def reset(self) -> None:
        """Forget every observation (a fixed baseline stays)."""
        n = len(self._edges)
        self.seen = [0.0] * n  # requests per bucket (all of them)
        self.labelled = [0.0] * n  # forwarded requests per bucket
        self.disagreed = [0.0] * n  # ... of which the big model disagreed
        self.observations = 0

    def bucket(self, score: float) -> int:
        """Index of the bucket ``[t_i, t_{i+1})`` holding ``score`` (the last is ``[t_max, 1]``)."""
        idx = 0
        for i, edge in enumerate(self._edges):
            if score >= edge:
                idx = i
        return idx

    def _tick(self) -> None:
        self.observations += 1
        if self.halflife is None:
            return
        g = 0.5 ** (1.0 / self.halflife)
        for counts in (self.seen, self.labelled, self.disagreed):
            for i in range(len(counts)):
                counts[i] *= g

    def observe_local(self, score: float) -> None:
        """A request answered here with confidence ``score``."""
        self._tick()
        self.seen[self.bucket(score)] += 1.0

    def observe_forwarded(self, score: float, small_pred: int, big_pred: int) -> None:
        """A forwarded request: its score and both models' answers."""
        self._tick()
        b = self.bucket(score)
        self.seen[b] += 1.0
        self.labelled[b] += 1.0
        if int(small_pred) != int(big_pred):
            self.disagreed[b] += 1.0

    # -- estimates ------------------------------------------------------------------------

    def error_rates(self) -> list[tuple[float, float]]:
        """Per bucket: (estimated small-model error, its upper bound for the floor)."""
        edges = (*self._edges, 1.0)
        k = self.prior_weight
        out = []
        for i, (m, d) in enumerate(zip(self.labelled, self.disagreed, strict=True)):
            prior = max(1.0 - 0.5 * (edges[i] + edges[i + 1]), _MIN_PRIOR_ERROR)
            p = (d + k * prior) / (m + k)
            bound = p + self.confidence_z * math.sqrt(p * (1.0 - p) / (m + k))
            out.append((p, min(1.0, bound)))
        return out

    def _kept_buckets(self, threshold: float) -> list[int]:
        if threshold >= 1.0:
            return []
        return [i for i, edge in enumerate(self._edges) if edge >= threshold]

    def policy(self, threshold: float | None = None) -> CascadePolicy:
        """A policy with this chooser's exploration share and seed."""
        t = self.thresholds[-1] if threshold is None else threshold
        return CascadePolicy(t, explore=self.explore, seed=self.seed)

    def _forward_all(self, link: Link) -> tuple[float, float]:
        latency, energy, _, _ = self._path(link, 1.0, 0.0)
        return energy, latency

    def set_baseline(self, link: Link) -> tuple[float, float]:
        """Fix ``(E0, L0)`` to the forward-everything figures on ``link``; returns them."""
        e0, l0 = self._forward_all(link)
        if not (e0 > 0 and l0 > 0 and math.isfinite(e0) and math.isfinite(l0)):
            raise ValueError(
                f"baseline link {link} gives E0={e0} J, L0={l0} s; pick a working link "
                "or give e0_j and l0_s"
            )
        self.baseline = (e0, l0)
        return self.baseline

    def _path(self, link: Link, f: float, rate: float) -> tuple[float, float, float, bool]:
        c, pw = self.costs, self.power
        up = link.transfer_time(c.input_bytes)
        down = link.transfer_time(c.output_bytes, downlink=True)
        uplink_bps = rate * f * 8.0 * c.input_bytes
        rho = 0.0
        if f > 0 and c.input_bytes > 0:
            rho = math.inf if link.bandwidth_bps == 0 else uplink_bps / link.bandwidth_bps
        fits = rho < self.max_utilisation or f == 0
        queued_up = up / (1.0 - rho) if rho < 1.0 else math.inf
        latency = c.small_s + f * (link.rtt_s + queued_up + c.big_s + down)
        energy = c.small_s * pw.busy_w + f * (
            (up + down) * pw.tx_w + (link.rtt_s + c.big_s) * pw.idle_w
        )
        return latency, energy, uplink_bps, fits

    def table(self, link: Link, rate: float = 0.0) -> list[ThresholdEstimate]:
        """Every threshold's expected figures on ``link`` at ``rate`` requests/s.

        Before a baseline is fixed, costs are normalised by ``link`` itself (nothing is
        stored: only :meth:`choose` fixes the baseline), or left in joules and seconds if
        that link cannot forward at all.
        """
        if rate < 0:
            raise ValueError(f"rate must be >= 0 requests/s, got {rate}")
        total = sum(self.seen)
        share = [s / total for s in self.seen] if total > 0 else [0.0] * len(self.seen)
        errs = self.error_rates()
        e0, l0 = self.baseline if self.baseline is not None else self._forward_all(link)
        if not (0 < e0 < math.inf and 0 < l0 < math.inf):
            e0 = l0 = 1.0
        rows = []
        for t in self.thresholds:
            kept = self._kept_buckets(t)
            kept_share = math.fsum(share[i] for i in kept) if total > 0 else 0.0
            f = 1.0 if t >= 1.0 else 1.0 - kept_share * (1.0 - self.explore)
            stay = 1.0 - self.explore
            acc = self.big_accuracy - stay * math.fsum(share[i] * errs[i][0] for i in kept)
            acc_lo = self.big_accuracy - stay * math.fsum(share[i] * errs[i][1] for i in kept)
            latency, energy, uplink, fits = self._path(link, f, rate)
            cost = (
                self.alpha * energy / e0
                + (1.0 - self.alpha) * latency / l0
                + self.error_weight * (1.0 - acc)
            )
            rows.append(
                ThresholdEstimate(
                    threshold=t,
                    forward_fraction=f,
                    accuracy=acc,
                    accuracy_bound=acc_lo,
                    latency_s=latency,
                    energy_j=energy,
                    uplink_bps=uplink,
                    cost=cost,
                    meets_floor=acc_lo >= self.accuracy_floor,
                    fits_link=fits,
                )
            )
        return rows

    def choose(self, link: Link, rate: float = 0.0) -> float:
        """The threshold to use now on ``link`` at ``rate`` requests/s (see the class doc).

        A link that is down (0 bit/s) gets the lowest threshold: nothing can be forwarded.
        """
        if link.bandwidth_bps == 0:
            return self.thresholds[0]
        if self.baseline is None:
            self.set_baseline(link)
        if self.observations < self.min_observations:
            return self.thresholds[-1]
        rows = self.table(link, rate)
        ok = [r for r in rows if r.meets_floor and r.fits_link]
        if ok:
            return min(ok, key=lambda r: (r.cost, -r.threshold)).threshold
        fitting = [r for r in rows if r.fits_link]
        if fitting:
            return max(fitting, key=lambda r: (r.accuracy_bound, -r.cost)).threshold
        return min(rows, key=lambda r: (r.forward_fraction, r.cost)).threshold

    # -- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable estimate, so a restarted daemon does not relearn it."""
        return {
            "thresholds": list(self.thresholds),
            "seen": list(self.seen),
            "labelled": list(self.labelled),
            "disagreed": list(self.disagreed),
            "observations": self.observations,
            "baseline": list(self.baseline) if self.baseline is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state.get("thresholds", [])) != list(self.thresholds):
            raise ValueError("saved chooser state has different thresholds; delete it")
        self.seen = [float(v) for v in state["seen"]]
        self.labelled = [float(v) for v in state["labelled"]]
        self.disagreed = [float(v) for v in state["disagreed"]]
        self.observations = int(state["observations"])
        base = state.get("baseline")
        self.baseline = (float(base[0]), float(base[1])) if base is not None else None


@dataclass(frozen=True)
class CascadeResult:
    """A batch's answers and where each came from."""

    logits: torch.Tensor
    preds: tuple[int, ...]
    scores: tuple[float, ...]
    forwarded: tuple[bool, ...]


class CascadeRunner:
    """The small model here, the big one through ``forward(payload) -> reply``.

    ``forward`` is injected (an HTTP client in the daemon, a direct call in tests): it gets
    the encoded rows to forward and returns the encoded logits of the big model for them.
    A forwarded row's answer is the big model's. With a ``chooser``, every row is reported
    to it; the caller decides when to call ``chooser.choose`` and sets ``policy.threshold``.
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
        decision = self.policy.decide(logits)
        rows = decision.forward_rows
        out = logits.detach().to(torch.float32).clone()
        preds = list(decision.preds)
        if rows:
            reply = await self.forward(encode_tensor(x[rows], fp16=self.fp16))
            big = decode_tensor(reply, dtype=torch.float32)
            if big.dim() != 2 or big.shape[0] != len(rows) or big.shape[1] != out.shape[1]:
                raise ValueError(
                    f"next tier answered shape {tuple(big.shape)} for {len(rows)} rows of "
                    f"{out.shape[1]} classes"
                )
            out[rows] = big
            big_preds = big.argmax(dim=1).tolist()
            for i, bp in zip(rows, big_preds, strict=True):
                if self.chooser is not None:
                    self.chooser.observe_forwarded(decision.scores[i], decision.preds[i], bp)
                preds[i] = int(bp)
        if self.chooser is not None:
            for i, keep in enumerate(decision.local):
                if keep:
                    self.chooser.observe_local(decision.scores[i])
        forwarded = tuple(not keep for keep in decision.local)
        return CascadeResult(out, tuple(preds), decision.scores, forwarded)
