"""Turning a list of request items into one batch, and a batch's output back into items.

Tensors of one shape and dtype are stacked along a new first dimension; anything else is
passed as a plain list. The output must hold one result per item: a tensor (or array)
whose first dimension is the batch size, or a list/tuple of that length. Anything else
fails the whole batch loudly, because silently mis-assigning results is worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class BatchOutputError(ValueError):
    """The batch function returned something that cannot be split into one result per item."""


def collate(items: Sequence[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor) and all(
        isinstance(x, torch.Tensor) and x.shape == first.shape and x.dtype == first.dtype
        for x in items
    ):
        return torch.stack(list(items))
    return list(items)


def split(output: Any, n: int) -> list[Any]:
    if (
        isinstance(output, torch.Tensor)
        or hasattr(output, "shape")
        and hasattr(output, "__getitem__")
    ):
        if len(output.shape) == 0 or output.shape[0] != n:
            raise BatchOutputError(
                f"batch function returned shape {tuple(output.shape)} for a batch of {n}; "
                "the first dimension must equal the batch size"
            )
        return [output[i] for i in range(n)]
    if isinstance(output, (list, tuple)):
        if len(output) != n:
            raise BatchOutputError(
                f"batch function returned {len(output)} results for a batch of {n} items"
            )
        return list(output)
    raise BatchOutputError(
        f"batch function returned {type(output).__name__}; return a tensor with the batch as "
        "first dimension or a list with one result per item"
    )
