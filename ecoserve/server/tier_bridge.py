"""A daemon as one tier of a chain: serve ``/v1/tier/*``, and split or cascade to the next.

Two halves, both built from the settings and the loaded model:

- :func:`tier_routes` mounts ``tier_router`` (``ecoserve.server.tier_routes``) when the model
  is an ``nn.Sequential``, so any daemon can be the *next* tier of another (its own model
  serves both split tails and cascaded inputs).
- :class:`TierBridge` is this daemon's link to ``--next-tier``: a ``NextTierClient`` and a
  ``TierNode``. Its :meth:`~TierBridge.run_batch` is the runtime's batch function, so requests
  keep the engine's queue, batching, deadlines, metrics and drain; only the model call
  changes. The split point or the threshold joins the engine's search space through
  :attr:`~TierBridge.actuator`, the link estimate reaches the engine through
  :meth:`~TierBridge.context`, and the tuner is whichever ``--tuner`` names: ``neurosurgeon``
  (the split planned from the stage profiles) or ``cascade`` (the threshold chosen from the
  two models' disagreement) get their planner or chooser from here (:meth:`tuner_params`);
  any other tuner moves the tier knob from measured costs.

Planning figures that cannot be measured on the device are assumptions (see
:data:`ASSUMED_POWER` and the 4x speed-up below) and say so in the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import torch
from fastapi import APIRouter
from torch import nn

from ecoserve.core.tiers import CascadeCosts, DevicePower, StageProfile
from ecoserve.models.loader import LoadedModel
from ecoserve.models.stages import median_call_s, profile_stages
from ecoserve.models.tensor_codec import encode_tensor
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tier_client import NextTierClient, TierError
from ecoserve.server.tier_node import TierActuator, TierNode
from ecoserve.server.tier_routes import tier_router
from tuners.cascade_threshold import ThresholdChooser
from tuners.neurosurgeon import Objective, SplitPlanner
from twins.link import EmulatedLink

log = logging.getLogger("ecoserve.server.tier_bridge")

#: Device power while computing, using the radio and waiting (watts). Assumed, not measured:
#: a small board's figures, the same the tier replays use. They only weigh energy against
#: latency in the planner's cost; the split still follows the link as it changes.
ASSUMED_POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
#: When the next tier serves no profile, it is taken to run every stage this many times faster.
ASSUMED_SPEEDUP = 4.0
_PROFILE_REPEATS = 20


def sequential_of(model: LoadedModel) -> nn.Sequential | None:
    """The model as stages, or None when it is not an ``nn.Sequential``."""
    return model.module if isinstance(model.module, nn.Sequential) else None


def _example(model: LoadedModel) -> torch.Tensor:
    return model.example_item().unsqueeze(0)


def check_tier_settings(settings: ServeSettings, model: LoadedModel) -> None:
    """Refuse, before serving, a next tier this model cannot use (ValueError names the fix)."""
    if settings.next_tier is None:
        return
    if model.input_shape is None:
        raise ValueError(
            f"--next-tier needs the model's input shape; give --input-shape for {model.name}"
        )
    if settings.tier_mode == "split" and sequential_of(model) is None:
        raise ValueError(
            f"--tier-mode split needs an nn.Sequential model to cut into stages; {model.name} "
            "is not one: serve a sequential model (e.g. builtin:digits-large or builtin:cnn), "
            "or use --tier-mode cascade"
        )
    if settings.tier_mode == "cascade" and model.module is None:
        raise ValueError(
            f"--tier-mode cascade needs an nn.Module as the small model; {model.name} is a "
            "plain function"
        )


def tier_routes(
    settings: ServeSettings,
    model: LoadedModel,
    run: Callable[[Callable[[], torch.Tensor]], Awaitable[torch.Tensor]] | None = None,
) -> APIRouter | None:
    """``/v1/tier/*`` for this daemon's model, or None (not wanted, or not sequential).

    ``run`` is the daemon's way to run a computation as one of its requests (its queue,
    deadline and energy accounting); without it, at most ``max_queue`` run at once.
    """
    stages = sequential_of(model)
    if not settings.serve_tier or stages is None or model.input_shape is None:
        return None
    profile = profile_stages(stages, _example(model), repeats=_PROFILE_REPEATS, tier="next")
    return tier_router(
        stages,
        stages,
        input_shape=model.input_shape,
        profile=profile,
        max_body_bytes=settings.max_body_bytes,
        max_pending=None if run is not None else settings.max_queue,
        token=settings.tier_token,
        run=run,
    )


class _Slowed(nn.Module):
    """Runs ``inner``, then sleeps ``extra_s`` per row: a device slower than this CPU.

    The extra time is fixed from a warmed-up profile, not scaled from each call, so a
    one-off slow first call is not multiplied too.
    """

    def __init__(self, inner: nn.Module, extra_s: float) -> None:
        super().__init__()
        self.inner = inner
        self.extra_s = extra_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        time.sleep(self.extra_s * (int(x.shape[0]) if x.dim() > 0 else 1))
        return out


def _slowed_stages(stages: nn.Sequential, profile: StageProfile, factor: float) -> nn.Sequential:
    if factor == 1.0:
        return stages
    return nn.Sequential(
        OrderedDict(
            (name, _Slowed(stage, (factor - 1.0) * t))
            for (name, stage), t in zip(stages.named_children(), profile.times_s, strict=True)
        )
    )


class TierBridge:
    """This daemon's client and node for ``--next-tier``; build it with :meth:`start`.

    It must be started on the serving event loop: the HTTP client belongs to the loop
    that first uses it, and the node is driven by one loop.
    """

    def __init__(
        self,
        client: NextTierClient,
        node: TierNode,
        plan: dict[str, Any],
        helper: SplitPlanner | ThresholdChooser | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.plan = plan
        self.helper = helper
        self.actuator = TierActuator(node)

    def tuner_params(self, tuner: str) -> dict[str, Any]:
        """The planner for ``--tuner neurosurgeon``, the chooser for ``--tuner cascade``."""
        key = tuner.strip().lower()
        if key == "neurosurgeon":
            if not isinstance(self.helper, SplitPlanner):
                raise ValueError("--tuner neurosurgeon plans a split: use --tier-mode split")
            return {"planner": self.helper}
        if key == "cascade":
            if not isinstance(self.helper, ThresholdChooser):
                raise ValueError("--tuner cascade chooses a threshold: use --tier-mode cascade")
            return {"chooser": self.helper}
        return {}

    def context(self) -> dict[str, float]:
        """The link estimate the runtime hands the engine after each batch."""
        return self.node.context()

    def take_errors(self) -> float:
        return self.node.take_errors()

    @classmethod
    async def start(cls, settings: ServeSettings, model: LoadedModel) -> TierBridge:
        """Connect to the next tier, plan with what it reports (or assumptions), probe."""
        assert settings.next_tier is not None
        emulation = None
        if settings.link_emulation is not None:
            emulation = EmulatedLink.parse(settings.link_emulation, rtt_s=settings.link_rtt_s)
        elif settings.link_rtt_s > 0:
            emulation = EmulatedLink(((0.0, math.inf),), rtt_s=settings.link_rtt_s)
        client = NextTierClient(settings.next_tier, emulation=emulation, token=settings.tier_token)
        helper: SplitPlanner | ThresholdChooser
        try:
            remote = await cls._remote_profile(client)
            if settings.tier_mode == "split":
                node, plan, helper = cls._split_node(settings, model, client, remote)
            else:
                node, plan, helper = cls._cascade_node(settings, model, client, remote)
            await node.start()
        except BaseException:
            await client.aclose()
            raise
        bridge = cls(client, node, plan, helper)
        status = node.status()
        log.info(
            "next tier %s (%s mode): link %s, %s",
            client.url,
            settings.tier_mode,
            "down" if status["link"]["down"] else f"{status['link']['bandwidth_bps']:.3g} bit/s",
            plan,
        )
        return bridge

    @staticmethod
    async def _remote_profile(client: NextTierClient) -> StageProfile | None:
        try:
            return await client.profile()
        except TierError as exc:
            log.warning(
                "next tier not reachable at start (%s); answering here until a probe gets through",
                exc,
            )
            return None

    @staticmethod
    def _split_node(
        settings: ServeSettings,
        model: LoadedModel,
        client: NextTierClient,
        remote: StageProfile | None,
    ) -> tuple[TierNode, dict[str, Any], SplitPlanner]:
        stages = sequential_of(model)
        assert stages is not None  # check_tier_settings ran first
        example = _example(model)
        measured = profile_stages(stages, example, repeats=_PROFILE_REPEATS, tier="here")
        here = measured.scaled(1.0 / settings.tier_slowdown)
        local_stages = _slowed_stages(stages, measured, settings.tier_slowdown)
        if remote is None:
            remote = here.scaled(ASSUMED_SPEEDUP, tier="next (assumed)")
            log.warning(
                "no stage profile from the next tier: assuming it runs %gx faster than here",
                ASSUMED_SPEEDUP,
            )
        header = len(encode_tensor(example)) - example.numel() * example.element_size()
        try:
            planner = SplitPlanner(
                here,
                remote,
                ASSUMED_POWER,
                Objective("cost", alpha=settings.alpha),
                overhead_bytes=header,
            )
        except ValueError as exc:
            raise RuntimeError(
                f"the next tier {client.url} serves a different model ({exc}); run the same "
                "model on both tiers to split it"
            ) from None
        log.info(
            "split planning: %d stages, %.3g ms here, %.3g ms on the next tier; power busy "
            "%.3g W, radio %.3g W, waiting %.3g W (assumed)",
            here.n_stages,
            1e3 * here.total_s,
            1e3 * remote.total_s,
            ASSUMED_POWER.busy_w,
            ASSUMED_POWER.tx_w,
            ASSUMED_POWER.idle_w,
        )
        node = TierNode.for_split(local_stages, client)
        plan = {"stages": here.n_stages, "here_s": here.total_s, "next_s": remote.total_s}
        return node, plan, planner

    @staticmethod
    def _cascade_node(
        settings: ServeSettings,
        model: LoadedModel,
        client: NextTierClient,
        remote: StageProfile | None,
    ) -> tuple[TierNode, dict[str, Any], ThresholdChooser]:
        assert model.module is not None  # check_tier_settings ran first
        small: nn.Module = model.module.eval()
        example = _example(model)
        small_s = (
            median_call_s(lambda: small(example), _PROFILE_REPEATS, warmup=3)
            * settings.tier_slowdown
        )
        if settings.tier_slowdown != 1.0:
            small = _Slowed(small, small_s - small_s / settings.tier_slowdown)
        plan: dict[str, Any] = {"threshold": settings.cascade_threshold, "small_s": small_s}
        if remote is not None:
            big_s = remote.total_s
        else:
            big_s = small_s / ASSUMED_SPEEDUP
            log.warning(
                "no profile from the next tier: assuming its model takes %gx less than the "
                "small one here",
                ASSUMED_SPEEDUP,
            )
        with torch.inference_mode():
            out = small(example)
        costs = CascadeCosts(
            small_s=small_s,
            big_s=big_s,
            input_bytes=len(encode_tensor(example)),
            output_bytes=len(encode_tensor(out)),
        )
        # The chooser estimates the small model's errors for whichever tuner moves the
        # threshold (its error estimate is the cost's accuracy term), and is the cascade
        # tuner's helper when that is the tuner.
        chooser = ThresholdChooser(costs, ASSUMED_POWER, alpha=settings.alpha)
        plan["big_s"] = big_s
        return TierNode.for_cascade(small, client, chooser=chooser), plan, chooser

    async def run_batch(self, batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The runtime's batch function: the model's answer through the node."""
        x = torch.stack(batch) if isinstance(batch, list) else batch
        answer = await self.node.infer(x)
        return answer.output

    def status(self) -> dict[str, Any]:
        return {**self.node.status(), "plan": self.plan}

    async def aclose(self) -> None:
        """Stop the node's probes and close the HTTP client (after the drain)."""
        try:
            await self.node.aclose()
        finally:
            await self.client.aclose()
