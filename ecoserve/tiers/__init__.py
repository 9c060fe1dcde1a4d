"""Tiers: splitting a model between this device and the next tier, and cascading to it.

- ``link``: the link's figures, an online estimate of them, an emulated schedule.
- ``codec``: the bytes of a tensor crossing tiers (``.npy``).
- ``stages``: per-stage times and per-cut tensor sizes; ``torch.fx`` slicing into stages.
- ``split``: the split-point planner (sans-IO) and the runner of a split model.
- ``cascade``: the confidence rule, the online threshold chooser (sans-IO) and the runner.
"""

from ecoserve.tiers.cascade import (
    CASCADE_KNOB,
    DEFAULT_THRESHOLDS,
    CascadeCosts,
    CascadeDecision,
    CascadePolicy,
    CascadeResult,
    CascadeRunner,
    ThresholdChooser,
    ThresholdEstimate,
    confidence,
    threshold_knob,
)
from ecoserve.tiers.codec import CONTENT_TYPE, decode_tensor, encode_tensor
from ecoserve.tiers.link import EmulatedLink, Link, LinkEstimator, parse_rate
from ecoserve.tiers.split import (
    SPLIT_KNOB,
    DevicePower,
    Objective,
    SplitFigures,
    SplitPlanner,
    SplitRunner,
    handle_split,
    run_from,
    split_knob,
)
from ecoserve.tiers.stages import StageProfile, profile_stages, sequential_from_fx

__all__ = [
    "CASCADE_KNOB",
    "CONTENT_TYPE",
    "DEFAULT_THRESHOLDS",
    "SPLIT_KNOB",
    "CascadeCosts",
    "CascadeDecision",
    "CascadePolicy",
    "CascadeResult",
    "CascadeRunner",
    "DevicePower",
    "EmulatedLink",
    "Link",
    "LinkEstimator",
    "Objective",
    "SplitFigures",
    "SplitPlanner",
    "SplitRunner",
    "StageProfile",
    "ThresholdChooser",
    "ThresholdEstimate",
    "confidence",
    "decode_tensor",
    "encode_tensor",
    "handle_split",
    "parse_rate",
    "profile_stages",
    "run_from",
    "sequential_from_fx",
    "split_knob",
    "threshold_knob",
]
