"""What a tier choice costs: stage profiles, the device's power, and the priced paths.

The split planner and the cascade chooser (``tuners/``) and the tier twins (``twins.tiers``)
all price a split point or a forwarded batch with these formulas, so a replay charges
exactly what a planner expects. Notation as in ``notes/hardware-and-tiers.md`` section 5: a
model of ``N`` stages; split ``j`` runs stages ``[:j]`` here and ``[j:]`` on the next tier::

    latency(j) = sum_{i<j} T_dev(i) + [j<N] (RTT + S_j/BW_up + S_N/BW_down) + sum_{i>=j} T_srv(i)
    energy(j)  = sum_{i<j} T_dev(i) P_busy + [j<N] ((S_j/BW_up + S_N/BW_down) P_tx
                                                     + (RTT + sum_{i>=j} T_srv(i)) P_idle)

Beyond Neurosurgeon's formulas: the answer (``S_N`` bytes) comes back, and the device draws
``P_idle`` while it waits. Normalising these into one cost is ``CostModel``'s job, as for
every other knob.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ecoserve.core.link import Link

#: Floating dtypes whose elements fp16 transfer sends as 2 bytes.
_FP16_SHRINKS = ("torch.float32", "torch.float64", "torch.bfloat16", "torch.float16")


@dataclass(frozen=True)
class StageProfile:
    """Per-stage times on one tier and per-cut tensor sizes; JSON-serialisable.

    ``times_s[i]`` is the median seconds of stage ``i``; ``cut_bytes[k]`` (``k`` in
    ``0..N``) the bytes of the tensor entering stage ``k`` (``numel * element_size``, payload
    only, no framing), with its shape and dtype beside it. ``batch_size`` is the example's
    first dimension, since times and sizes are for that batch.
    """

    names: tuple[str, ...]
    times_s: tuple[float, ...]
    cut_bytes: tuple[int, ...]
    cut_shapes: tuple[tuple[int, ...], ...]
    cut_dtypes: tuple[str, ...]
    tier: str = "device"
    batch_size: int = 1
    repeats: int = 0

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.times_s) != n:
            raise ValueError(f"{n} stage names but {len(self.times_s)} stage times")
        for label, seq in (
            ("cut_bytes", self.cut_bytes),
            ("cut_shapes", self.cut_shapes),
            ("cut_dtypes", self.cut_dtypes),
        ):
            if len(seq) != n + 1:
                raise ValueError(f"{label} needs N + 1 = {n + 1} entries, got {len(seq)}")
        if any(not t >= 0 for t in self.times_s):
            raise ValueError(f"stage times must be >= 0 s: {self.times_s}")
        if any(b < 0 for b in self.cut_bytes):
            raise ValueError(f"cut sizes must be >= 0 bytes: {self.cut_bytes}")

    @property
    def n_stages(self) -> int:
        return len(self.names)

    @property
    def total_s(self) -> float:
        return math.fsum(self.times_s)

    def transfer_bytes(self, cut: int, *, fp16: bool = False) -> int:
        """Payload bytes sent at ``cut``; with ``fp16``, floating tensors at 2 bytes each."""
        if not 0 <= cut <= self.n_stages:
            raise ValueError(f"cut {cut} outside 0..{self.n_stages}")
        if fp16 and self.cut_dtypes[cut] in _FP16_SHRINKS:
            return 2 * math.prod(self.cut_shapes[cut])
        return self.cut_bytes[cut]

    def scaled(self, speedup: float, *, tier: str | None = None) -> StageProfile:
        """This profile with every stage ``speedup`` times faster (to emulate another tier)."""
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        return replace(
            self,
            times_s=tuple(t / speedup for t in self.times_s),
            tier=self.tier if tier is None else tier,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cut_shapes"] = [list(s) for s in self.cut_shapes]
        for key in ("names", "times_s", "cut_bytes", "cut_dtypes"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageProfile:
        try:
            return cls(
                names=tuple(str(n) for n in data["names"]),
                times_s=tuple(float(t) for t in data["times_s"]),
                cut_bytes=tuple(int(b) for b in data["cut_bytes"]),
                cut_shapes=tuple(tuple(int(d) for d in s) for s in data["cut_shapes"]),
                cut_dtypes=tuple(str(d) for d in data["cut_dtypes"]),
                tier=str(data.get("tier", "device")),
                batch_size=int(data.get("batch_size", 1)),
                repeats=int(data.get("repeats", 0)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a stage profile: {exc!r}") from None


@dataclass(frozen=True)
class DevicePower:
    """Power of this device (watts) while it computes, uses its radio, and waits."""

    busy_w: float
    tx_w: float
    idle_w: float = 0.0

    def __post_init__(self) -> None:
        if min(self.busy_w, self.tx_w, self.idle_w) < 0:
            raise ValueError(f"power figures must be >= 0 W: {self}")

    def exchange_j(self, radio_s: float, waiting_s: float) -> float:
        """Joules of one exchange with the next tier: the radio busy, then the device waiting
        (the round trip and the next tier's compute)."""
        return radio_s * self.tx_w + waiting_s * self.idle_w


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
class SplitFigures:
    """The priced figures of one split point."""

    split: int
    latency_s: float
    energy_j: float
    cost: float
    sent_bytes: int
    device_s: float
    network_s: float
    server_s: float


class SplitCosts:
    """Prices every split point of one model between two tiers on a given link.

    ``device`` and ``server`` profile the same stages (same names, same cut sizes) on each
    tier. ``fp16`` prices floating tensors at 2 bytes per element; ``overhead_bytes`` adds
    framing per message (an encoded tensor's ``.npy`` header is 128 bytes).
    """

    def __init__(
        self,
        device: StageProfile,
        server: StageProfile,
        power: DevicePower,
        *,
        fp16: bool = False,
        overhead_bytes: int = 0,
    ) -> None:
        if device.n_stages != server.n_stages:
            raise ValueError(
                f"profiles disagree: {device.n_stages} stages on the device, "
                f"{server.n_stages} on the server"
            )
        if device.cut_bytes != server.cut_bytes:
            raise ValueError(
                "profiles disagree on cut sizes (different model or batch size): "
                f"{device.cut_bytes} vs {server.cut_bytes}"
            )
        if overhead_bytes < 0:
            raise ValueError(f"overhead_bytes must be >= 0, got {overhead_bytes}")
        self.device = device
        self.server = server
        self.power = power
        self.fp16 = fp16
        self.overhead_bytes = overhead_bytes

    @property
    def n_stages(self) -> int:
        return self.device.n_stages

    def wire_bytes(self, cut: int) -> int:
        """Bytes on the wire for the tensor at ``cut``, framing included."""
        return self.device.transfer_bytes(cut, fp16=self.fp16) + self.overhead_bytes

    def figures(self, j: int, link: Link, rows: int = 1) -> SplitFigures:
        """Split ``j`` on ``link`` for ``rows`` profiled batches in one message.

        ``cost`` is left at latency: normalising energy and latency is the caller's
        ``CostModel``. Stage times and bytes scale with ``rows`` (no batching gain assumed).
        """
        n = self.n_stages
        if not 0 <= j <= n:
            raise ValueError(f"split point {j} outside 0..{n}")
        dev_s = rows * math.fsum(self.device.times_s[:j])
        energy = dev_s * self.power.busy_w
        if j == n:
            return SplitFigures(j, dev_s, energy, dev_s, 0, dev_s, 0.0, 0.0)
        srv_s = rows * math.fsum(self.server.times_s[j:])
        sent = rows * self.wire_bytes(j)
        radio_s = link.transfer_time(sent) + link.transfer_time(
            rows * self.wire_bytes(n), downlink=True
        )
        network_s = link.rtt_s + radio_s
        energy += self.power.exchange_j(radio_s, link.rtt_s + srv_s)
        latency = dev_s + network_s + srv_s
        return SplitFigures(j, latency, energy, latency, sent, dev_s, network_s, srv_s)


def cascade_batch(
    costs: CascadeCosts, power: DevicePower, link: Link, rows: int, forwarded: int
) -> tuple[float, float]:
    """Seconds and device joules of a batch of ``rows`` with ``forwarded`` of them sent on.

    The small model runs on every row here; the forwarded rows go up in one message, the big
    model runs them on the next tier, and their answers come back.
    """
    small_s = rows * costs.small_s
    energy = small_s * power.busy_w
    if forwarded <= 0:
        return small_s, energy
    up = link.transfer_time(forwarded * costs.input_bytes)
    down = link.transfer_time(forwarded * costs.output_bytes, downlink=True)
    big_s = forwarded * costs.big_s
    energy += power.exchange_j(up + down, link.rtt_s + big_s)
    return small_s + link.rtt_s + up + big_s + down, energy


@dataclass(frozen=True)
class CascadeDecision:
    """What the cascade rule decided for each row of a batch."""

    scores: tuple[float, ...]
    preds: tuple[int, ...]
    local: tuple[bool, ...]
    explored: tuple[bool, ...]

    @property
    def forward_rows(self) -> list[int]:
        """Indices of the rows that go to the next tier."""
        return [i for i, keep in enumerate(self.local) if not keep]


class CascadePolicy:
    """Answer here iff the small model's confidence (top softmax probability) reaches ``threshold``.

    Threshold 1.0 forwards everything (special-cased: a float32 softmax saturates to exactly
    1.0, which would otherwise pass), 0.0 nothing. ``explore`` forwards that share of the
    inputs that would have stayed, chosen by a seeded generator (reproducible runs); it exists
    for the threshold chooser's unbiased error estimate and is 0 by default, so a plain
    policy follows the rule exactly. The daemon applies it to its small model's scores, the
    cascade twin to recorded ones.
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

    def decide(self, scores: Sequence[float], preds: Sequence[int]) -> CascadeDecision:
        """Per-row decision for a batch's confidence ``scores`` and predicted classes."""
        local, explored = [], []
        for s in scores:
            keep = self.keeps(s)
            probe = keep and self.explore > 0 and self.rng.random() < self.explore
            local.append(keep and not probe)
            explored.append(probe)
        return CascadeDecision(
            tuple(float(s) for s in scores),
            tuple(int(p) for p in preds),
            tuple(local),
            tuple(explored),
        )
