"""A model as a chain of stages: how long each stage takes here, and what crosses each cut.

The split planner needs, per tier, the time of every stage and, per cut, the bytes of the one
tensor that would cross the network if the model were cut there. This module measures both:

- :func:`profile_stages` runs an ``nn.Sequential`` (or any list of stages) on an example
  input, warms up, then records each stage's median time over repeats. It reads the clock —
  it is a measurement, not decision logic — and returns a ``StageProfile`` (``ecoserve.core.tiers``),
  plain data that :func:`save_profile` writes as JSON on one tier for the planner of another.
- :func:`sequential_from_fx` turns a model that is not a ``Sequential`` into one: it traces it
  with ``torch.fx``, finds the points where exactly one tensor is live (made before the point
  and used after it), and slices the graph there. Inside a residual block two tensors are
  live (the block's input for the skip and the branch's output), so cuts land only at block
  boundaries, which is what makes a split there correct.

- :func:`run_stages` / :func:`run_from` run a slice of the stages (a split's two halves).

Cut ``k`` is the tensor entering stage ``k``: cut 0 is the model input, cut ``N`` the output.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ecoserve.core.tiers import StageProfile


def save_profile(profile: StageProfile, path: str | Path) -> None:
    """Write ``profile`` as JSON (what ``GET /v1/tier/profile`` also serves)."""
    Path(path).write_text(json.dumps(profile.to_dict(), indent=2) + "\n")


def load_profile(path: str | Path) -> StageProfile:
    return StageProfile.from_dict(json.loads(Path(path).read_text()))


def _stage_list(model: nn.Module | Sequence[nn.Module]) -> tuple[list[str], list[nn.Module]]:
    if isinstance(model, nn.Sequential):
        items = list(model.named_children())
        return [n for n, _ in items], [m for _, m in items]
    if isinstance(model, nn.Module):
        raise TypeError(
            f"{type(model).__name__} is not a sequence of stages; "
            "convert it with sequential_from_fx(model, example) first"
        )
    stages = list(model)
    return [str(i) for i in range(len(stages))], stages


def _single_tensor(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} is a {type(value).__name__}, not a single tensor")
    return value


@torch.inference_mode()
def median_call_s(fn: Callable[[], object], repeats: int = 200, warmup: int = 10) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@torch.inference_mode()
def profile_stages(
    model: nn.Module | Sequence[nn.Module],
    example: torch.Tensor,
    *,
    repeats: int = 30,
    warmup: int = 5,
    tier: str = "device",
) -> StageProfile:
    """Median time of every stage over ``repeats`` runs after ``warmup`` runs, and cut sizes.

    Each run times every stage in turn with ``time.perf_counter``, so a stage is measured
    with its caches in the state the previous stage leaves them in, as in serving. The
    median, not the mean, because a shared machine's noise is one-sided (a preempted run is
    slow, never fast). The stages are put in eval mode: inference is what is timed. Raises
    TypeError if a stage passes on anything but one tensor.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names, stages = _stage_list(model)
    if not stages:
        raise ValueError("a model with no stages cannot be profiled")
    for stage in stages:
        stage.eval()
    x = _single_tensor(example, "the example input")

    cuts = [x]
    for i, stage in enumerate(stages):
        cuts.append(_single_tensor(stage(cuts[-1]), f"the output of stage {i} ({names[i]})"))
    for _ in range(warmup):
        h = x
        for stage in stages:
            h = stage(h)
    samples: list[list[float]] = [[] for _ in stages]
    for _ in range(repeats):
        h = x
        for i, stage in enumerate(stages):
            t0 = time.perf_counter()
            h = stage(h)
            samples[i].append(time.perf_counter() - t0)

    return StageProfile(
        names=tuple(names),
        times_s=tuple(statistics.median(s) for s in samples),
        cut_bytes=tuple(c.numel() * c.element_size() for c in cuts),
        cut_shapes=tuple(tuple(c.shape) for c in cuts),
        cut_dtypes=tuple(str(c.dtype) for c in cuts),
        tier=tier,
        batch_size=int(x.shape[0]) if x.dim() > 0 else 1,
        repeats=repeats,
    )


def _compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that compute something; placeholders, outputs and get_attr do not."""
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]


def single_tensor_cuts(gm: fx.GraphModule) -> list[int]:
    """Positions in the graph's compute nodes after which exactly one tensor is live.

    Position ``p`` means "after the ``p``-th compute node" (``-1``: before the first, where
    only the input is live). ``get_attr`` nodes (parameters, buffers, constants) are not
    compute nodes and never count as live: every stage that needs one re-reads it from the
    module, so they neither block a cut nor make a stage of their own. Needs ``ShapeProp`` to
    have run, to tell tensors from other values (a shape, a size).
    """
    nodes = list(gm.graph.nodes)
    body = _compute_nodes(gm)
    pos = {n: i for i, n in enumerate(body)}
    end = len(body)
    defined: dict[fx.Node, int] = {}
    last_use: dict[fx.Node, int] = {}
    for n in nodes:
        if n.op == "get_attr" or n.op == "output":
            continue
        defined[n] = -1 if n.op == "placeholder" else pos[n]
        uses = [end if u.op == "output" else pos[u] for u in n.users]
        last_use[n] = max(uses, default=defined[n])
    cuts = []
    for p in range(-1, end):
        live = [v for v, d in defined.items() if d <= p < last_use[v]]
        if len(live) == 1 and isinstance(live[0].meta.get("tensor_meta"), TensorMetadata):
            cuts.append(p)
    return cuts


def sequential_from_fx(module: nn.Module, example: torch.Tensor) -> nn.Sequential:
    """``module`` as an ``nn.Sequential`` of stages cut wherever a single tensor flows.

    The module must take one tensor and return one tensor, and be traceable by
    ``torch.fx.symbolic_trace`` (no data-dependent control flow). Every stage is a
    ``GraphModule`` sharing the original's parameters; ``result(x)`` equals ``module(x)``.
    Stages are named after the last operation they contain.
    """
    gm = fx.symbolic_trace(module)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(
            f"sequential_from_fx needs a module with one tensor input, got {len(placeholders)}"
        )
    # eval mode for the one shape-propagation run, so batch-norm statistics are not updated
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.inference_mode():
            ShapeProp(gm).propagate(example)
    finally:
        for m, training in modes.items():
            m.training = training
    body = _compute_nodes(gm)
    cuts = single_tensor_cuts(gm)
    if not body or not cuts or cuts[-1] != len(body) - 1:
        raise ValueError("the module's output is not a single tensor; cannot cut it into stages")
    if cuts[0] != -1:
        raise ValueError("the module's input is not a single tensor used by the graph")

    def live_after(p: int) -> fx.Node:
        if p < 0:
            return placeholders[0]
        # the one value defined at or before p and still used after it
        for v in body[: p + 1][::-1] + placeholders:
            if any(u.op == "output" or body.index(u) > p for u in v.users):
                return v
        raise AssertionError("a single-tensor cut has no live value")  # pragma: no cover

    stages: dict[str, nn.Module] = {}
    for k, (start, stop) in enumerate(itertools.pairwise(cuts)):
        incoming, outgoing = live_after(start), live_after(stop)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {incoming: graph.placeholder("x")}

        def lookup(
            a: fx.Node, env: dict[fx.Node, fx.Node] = env, graph: fx.Graph = graph
        ) -> fx.Node:
            if a not in env:
                if a.op != "get_attr":  # pragma: no cover - ruled out by the cut analysis
                    raise AssertionError(f"value {a.name} crosses a single-tensor cut")
                env[a] = graph.node_copy(a)
            return env[a]

        for node in body[start + 1 : stop + 1]:
            env[node] = graph.node_copy(node, lookup)
        graph.output(env[outgoing])
        name = body[stop].name
        stages[name if name not in stages else f"{name}_{k}"] = fx.GraphModule(
            gm, graph, class_name=f"Stage{k}"
        )
    return nn.Sequential(OrderedDict(stages))


def _check_cut(stages: Sized, k: int) -> None:
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
