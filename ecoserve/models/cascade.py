"""The cascade rule on a model's logits: its confidence, then ``CascadePolicy``'s decision.

The rule itself (answer here iff the top softmax probability reaches the threshold) is plain
logic in ``ecoserve.core.tiers``; this module only turns logits into the scores it reads.
"""

from __future__ import annotations

import torch

from ecoserve.core.tiers import CascadeDecision, CascadePolicy


def confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top softmax probability and arg-max class of each row of ``logits`` (N, C)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.detach().to(torch.float32), dim=1)
    score, pred = probs.max(dim=1)
    return score, pred


def decide(policy: CascadePolicy, logits: torch.Tensor) -> CascadeDecision:
    """``policy``'s per-row decision for the small model's ``logits`` (N, C)."""
    score, pred = confidence(logits)
    return policy.decide(score.tolist(), pred.tolist())
