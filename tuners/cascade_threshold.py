"""The cascade threshold chosen online from what the two models disagree on, as a tuner.

:class:`ThresholdChooser` is told every request: :meth:`~ThresholdChooser.observe_local` for
answers given here, :meth:`~ThresholdChooser.observe_forwarded` for the others (with both
models' predictions; the driver's cascade runner, or the cascade twin in a replay, tells it).
From that it estimates, per confidence bucket, how often the small model is wrong (taking the
big model as the reference), and prices every threshold for ``f(t)``, the share forwarded::

    latency  = T_small + f (RTT + T_up(S_in) / (1 - rho) + T_big + T_down(S_out))
    energy   = T_small P_busy + f ((T_up + T_down) P_tx + (RTT + T_big) P_idle)
    rho      = rate f 8 S_in / BW                      (uplink utilisation)
    accuracy = acc_big - sum over kept buckets of P(bucket) err(bucket)

normalised by ``CostModel`` with the accuracy term (``error_weight``). ``E0``, ``L0`` are
fixed baselines, as the engine's are: the threshold-1.0 figures (the knob's maximum: forward
everything) on a reference link, without queueing, so costs stay comparable as the link and
the rate move.

:class:`CascadeThreshold` is the chooser behind the ask/tell interface: with each window it
reads the link estimate and the arrival rate from the metrics and answers the threshold the
chooser picks, the other knobs held (default: their maximum). Any other tuner can move the
same ``cascade_threshold`` knob from measured costs, which then need the accuracy term
(``--error-weight``) for a threshold to be worth anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.core.cost import Baseline, CostModel
from ecoserve.core.knobs import (
    DEFAULT_THRESHOLDS,
    THRESHOLD,
    Config,
    Knob,
    SearchSpace,
    threshold_knob,
)
from ecoserve.core.link import Link, link_from_context
from ecoserve.core.tiers import CascadeCosts, DevicePower
from ecoserve.core.tuner import Tuner, finite_cost

#: Prior error of a bucket of saturated (score 1.0) answers: never quite zero.
_MIN_PRIOR_ERROR = 1e-3


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

    def observe_batch(
        self,
        scores: Sequence[float],
        small_preds: Sequence[int],
        big_preds: Sequence[int | None],
    ) -> float:
        """One batch as the cascade answered it; returns its expected wrong answers.

        ``big_preds[i]`` is the big model's answer to a forwarded row, None for a row answered
        here. The forwarded rows are observed first, then the local ones; each local row counts
        as its bucket's estimated error rate from before this batch (the big model is the
        reference, so a forwarded row counts as right). The daemon's cascade runner and the
        cascade twin both report through here.
        """
        rates = self.error_rates()
        rows = list(zip(scores, small_preds, big_preds, strict=True))
        for score, small, big in rows:
            if big is not None:
                self.observe_forwarded(score, small, big)
        errors = 0.0
        for score, _, big in rows:
            if big is None:
                errors += rates[self.bucket(score)][0]
                self.observe_local(score)
        return errors

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
        energy = c.small_s * pw.busy_w + f * pw.exchange_j(up + down, link.rtt_s + c.big_s)
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
        model = CostModel(alpha=self.alpha, error_weight=self.error_weight)
        baseline = Baseline(e0, l0)
        rows = []
        for t in self.thresholds:
            kept = self._kept_buckets(t)
            kept_share = math.fsum(share[i] for i in kept) if total > 0 else 0.0
            f = 1.0 if t >= 1.0 else 1.0 - kept_share * (1.0 - self.explore)
            stay = 1.0 - self.explore
            acc = self.big_accuracy - stay * math.fsum(share[i] * errs[i][0] for i in kept)
            acc_lo = self.big_accuracy - stay * math.fsum(share[i] * errs[i][1] for i in kept)
            latency, energy, uplink, fits = self._path(link, f, rate)
            cost = model.cost(energy, latency, baseline, error_rate=1.0 - acc)
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


class CascadeThreshold(Tuner):
    """The threshold from the chooser; every other knob fixed (default: its maximum)."""

    name = "cascade"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = 0,
        chooser: ThresholdChooser | None = None,
        config: Sequence[int] | None = None,
    ) -> None:
        super().__init__(space, seed)
        if chooser is None:
            raise ValueError(
                "the cascade tuner chooses the threshold from what the two models disagree "
                "on: it is built by the tier setup (ecoserve serve --next-tier URL "
                "--tier-mode cascade --tuner cascade), or give chooser=ThresholdChooser(...)"
            )
        if not space.has(THRESHOLD):
            raise ValueError(f"the cascade tuner needs a {THRESHOLD!r} knob in the space")
        knob = space.knobs[space.axis(THRESHOLD)]
        if tuple(knob.values) != chooser.thresholds:
            raise ValueError(
                f"the space's {THRESHOLD} knob {knob.values} differs from the chooser's "
                f"thresholds {chooser.thresholds}"
            )
        self.chooser = chooser
        self._knob = knob
        self.base: Config = space.maximum() if config is None else space.validate(config)
        self.threshold = chooser.thresholds[-1]  # forward everything until it has seen enough
        self.changes = 0

    def ask(self) -> Config:
        return self.space.with_value(self.base, THRESHOLD, self._knob.index_of(self.threshold))

    def tell(self, config: Config, cost: float, metrics: Mapping[str, float] | None = None) -> None:
        self.space.validate(config)
        finite_cost(cost)
        link = link_from_context(metrics)
        if link is None:
            return
        rate = float((metrics or {}).get("arrival_rate", 0.0))
        new = self.chooser.choose(link, rate if math.isfinite(rate) and rate >= 0 else 0.0)
        if new != self.threshold:
            self.changes += 1
            self.threshold = new

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "threshold": self.threshold,
            "chooser": self.chooser.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.chooser.load_state_dict(state["chooser"])
        self.threshold = float(state.get("threshold", self.chooser.thresholds[-1]))

    def describe(self) -> dict[str, Any]:
        return {
            "tuner": self.name,
            "threshold": self.threshold,
            "observations": self.chooser.observations,
            "changes": self.changes,
        }
