"""Where to cut a model between this tier and the next (Neurosurgeon), and running the cut.

:class:`SplitPlanner` is sans-IO: given both tiers' stage profiles, this device's power
figures and a :class:`~ecoserve.tiers.link.Link`, it prices every split ``j`` in ``0..N``
(``j`` stages here, the rest on the next tier; 0 sends the input, ``N`` runs all here)::

    latency(j) = sum_{i<j} T_dev(i) + [j<N] (RTT + S_j/BW_up + S_N/BW_down) + sum_{i>=j} T_srv(i)
    energy(j)  = sum_{i<j} T_dev(i) P_busy + [j<N] ((S_j/BW_up + S_N/BW_down) P_tx
                                                     + (RTT + sum_{i>=j} T_srv(i)) P_idle)

and picks the one that minimises the goal: latency, device energy, or the engine's
normalised cost ``a E/E0 + (1-a) L/L0``. Beyond the Neurosurgeon formulas: the answer
(``S_N`` bytes) has to come back, and the device is not free while it waits (``P_idle``,
0 by default to match the paper's figures).

The split point is also a :class:`~ecoserve.core.knobs.Knob` (``split_point``) so the generic tuners
can move it from measured costs when no profile is trusted.

:class:`SplitRunner` runs ``stages[:k]`` here and hands the encoded tensor to an injected
``send(k, payload)``; the next tier answers with :func:`handle_split` (``stages[k:]``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ecoserve.core.knobs import Knob
from ecoserve.tiers.codec import decode_tensor, encode_tensor
from ecoserve.tiers.link import Link
from ecoserve.tiers.stages import StageProfile

#: Knob name the tuners and the runtime agree on.
SPLIT_KNOB = "split_point"

Goal = Literal["latency", "energy", "cost"]
SendFn = Callable[[int, bytes], Awaitable[bytes]]


def split_knob(n_stages: int) -> Knob:
    """The split point as a knob: values ``0..n_stages`` (its maximum runs everything here)."""
    if n_stages < 1:
        raise ValueError(f"a model needs at least one stage to split, got {n_stages}")
    return Knob(SPLIT_KNOB, tuple(range(n_stages + 1)))


@dataclass(frozen=True)
class DevicePower:
    """Power of this device (watts) while it computes, uses its radio, and waits."""

    busy_w: float
    tx_w: float
    idle_w: float = 0.0

    def __post_init__(self) -> None:
        if min(self.busy_w, self.tx_w, self.idle_w) < 0:
            raise ValueError(f"power figures must be >= 0 W: {self}")


@dataclass(frozen=True)
class Objective:
    """What the planner minimises.

    ``cost`` is the engine's ``alpha * E / E0 + (1 - alpha) * L / L0``; when ``e0_j`` /
    ``l0_s`` are not given, the baselines are the all-local split's figures, which do not
    depend on the link, so costs stay comparable while the link changes.
    """

    goal: Goal = "latency"
    alpha: float = 0.5
    e0_j: float | None = None
    l0_s: float | None = None

    def __post_init__(self) -> None:
        if self.goal not in ("latency", "energy", "cost"):
            raise ValueError(f"goal must be latency, energy or cost, got {self.goal!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for label, v in (("e0_j", self.e0_j), ("l0_s", self.l0_s)):
            if v is not None and not v > 0:
                raise ValueError(f"{label} must be > 0, got {v}")


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


class SplitPlanner:
    """Chooses the split point from profiles, power figures and the link (sans-IO).

    ``device`` and ``server`` profile the same stages (same names, same cut sizes) on each
    tier; the server's may be a measured one or ``device.scaled(k)``. ``fp16`` prices the
    transfer at 2 bytes per floating element; ``overhead_bytes`` adds framing per message
    (an encoded tensor's ``.npy`` header is 128 bytes).
    """

    def __init__(
        self,
        device: StageProfile,
        server: StageProfile,
        power: DevicePower,
        objective: Objective | None = None,
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
        self.objective = objective or Objective()
        self.fp16 = fp16
        self.overhead_bytes = overhead_bytes

    @property
    def n_stages(self) -> int:
        return self.device.n_stages

    def knob(self) -> Knob:
        return split_knob(self.n_stages)

    def _wire(self, cut: int) -> int:
        return self.device.transfer_bytes(cut, fp16=self.fp16) + self.overhead_bytes

    def _raw(self, j: int, link: Link) -> tuple[float, float, int, float, float, float]:
        n = self.n_stages
        dev_s = math.fsum(self.device.times_s[:j])
        energy = dev_s * self.power.busy_w
        if j == n:
            return dev_s, energy, 0, dev_s, 0.0, 0.0
        srv_s = math.fsum(self.server.times_s[j:])
        sent = self._wire(j)
        radio_s = link.transfer_time(sent) + link.transfer_time(self._wire(n), downlink=True)
        network_s = link.rtt_s + radio_s
        energy += radio_s * self.power.tx_w + (link.rtt_s + srv_s) * self.power.idle_w
        return dev_s + network_s + srv_s, energy, sent, dev_s, network_s, srv_s

    def table(self, link: Link) -> list[SplitFigures]:
        """Figures for every split ``0..N`` on ``link`` (index = split point)."""
        raw = [self._raw(j, link) for j in range(self.n_stages + 1)]
        obj = self.objective
        local_latency, local_energy = raw[-1][0], raw[-1][1]
        e0 = obj.e0_j if obj.e0_j is not None else local_energy
        l0 = obj.l0_s if obj.l0_s is not None else local_latency
        if obj.goal == "cost" and (e0 <= 0 or l0 <= 0):
            raise ValueError(
                f"cost needs positive baselines, got E0={e0} J, L0={l0} s; "
                "give Objective(e0_j=..., l0_s=...) or non-zero busy power"
            )
        rows = []
        for j, (lat, energy, sent, dev_s, net_s, srv_s) in enumerate(raw):
            if obj.goal == "latency":
                cost = lat
            elif obj.goal == "energy":
                cost = energy
            else:
                cost = obj.alpha * energy / e0 + (1 - obj.alpha) * lat / l0
            rows.append(SplitFigures(j, lat, energy, cost, sent, dev_s, net_s, srv_s))
        return rows

    def best_split(self, link: Link) -> int:
        """The split with the lowest goal on ``link``; ties go to the larger split.

        Ties break toward running more here: the same cost with less data in flight and
        less reliance on a link that may degrade.
        """
        return min(self.table(link), key=lambda r: (r.cost, -r.split)).split


def _check_cut(stages: Sequence[nn.Module], k: int) -> None:
    if not 0 <= k <= len(stages):
        raise ValueError(f"split point {k} outside 0..{len(stages)}")


@torch.inference_mode()
def run_stages(stages: nn.Sequential, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
    """``stages[start:stop]`` applied to ``x`` (identity when the range is empty)."""
    for stage in list(stages)[start:stop]:
        x = stage(x)
    return x


def run_from(stages: nn.Sequential, k: int, tensor: torch.Tensor) -> torch.Tensor:
    """The next tier's half: ``stages[k:]`` on the tensor that crossed cut ``k``."""
    _check_cut(stages, k)
    return run_stages(stages, k, len(stages), tensor)


def handle_split(
    stages: nn.Sequential,
    k: int,
    payload: bytes,
    *,
    fp16: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> bytes:
    """The next tier's request handler: decode, run ``stages[k:]``, encode the answer.

    Floating payloads are cast to ``compute_dtype`` (a sender using fp16 transfer still
    gets a float32 computation). Malformed payloads raise ValueError.
    """
    tensor = decode_tensor(payload, dtype=compute_dtype)
    return encode_tensor(run_from(stages, k, tensor), fp16=fp16)


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
        _check_cut(self.stages, k)
        if self.in_thread:
            h = await asyncio.to_thread(run_stages, self.stages, 0, k, x)
        else:
            h = run_stages(self.stages, 0, k, x)
        if k == self.n_stages:
            return h
        reply = await self.send(k, encode_tensor(h, fp16=self.fp16))
        return decode_tensor(reply, dtype=self.compute_dtype)
