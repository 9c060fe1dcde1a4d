"""The routes this daemon serves as the *next* tier of another: split tails, cascade, link probes.

:func:`tier_router` is an ``APIRouter`` any daemon includes next to its own routes, so one
``ecoserve serve`` process can be a device, an edge or a cloud tier:

- ``POST /v1/tier/split/{k}``: body is the ``.npy`` tensor at cut ``k``; runs ``stages[k:]``
  and answers the ``.npy`` output.
- ``POST /v1/tier/cascade``: body is a ``.npy`` input batch; runs the big model and answers
  its ``.npy`` logits.
- ``GET /v1/tier/ping`` (round-trip samples), ``POST /v1/tier/probe`` (a body that is read and
  dropped: a bandwidth sample when nothing else is being sent), ``GET /v1/tier/profile`` (this
  tier's ``StageProfile``, so the sender plans with measured times) and, when a node is
  given, ``GET /v1/tier/status``.

Every compute answer carries ``X-Ecoserve-Compute-S``, the seconds the answer took on this
tier (queue wait included, when a daemon's runtime runs it), so the sender can take them
off the exchange time and feed only the network's share to its link estimator. In a daemon
the computations go through its runtime (``run``): queue bound, deadline, energy. Bad bodies, cut points and shapes are 422 with a message saying which. The sending
side is ``ecoserve.server.tier_client``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import torch
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from torch import nn

from ecoserve.core.tiers import StageProfile
from ecoserve.models.stages import run_from
from ecoserve.models.tensor_codec import CONTENT_TYPE, decode_tensor, encode_tensor
from ecoserve.server.schemas import ErrorResponse

if TYPE_CHECKING:
    from ecoserve.server.tier_node import TierNode

#: Response header with the seconds the next tier spent computing (not on the network).
COMPUTE_HEADER = "X-Ecoserve-Compute-S"
#: Route prefix shared by the router and the client.
PREFIX = "/v1/tier"

#: What every tier route may answer besides 200, each with ``{"detail": "..."}``.
_TIER_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "this tier needs its bearer token",
        404: "no such resource on this tier (no profile, no cascade model)",
        413: "body larger than the tier's limit",
        422: "tensor or split point this tier cannot take (the message says why)",
        503: "too many tier computations in progress (see Retry-After)",
    }.items()
}
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Default size of a bandwidth probe: large enough that the transfer, not the round trip,
#: dominates on slow links, small enough to be negligible on a 1 Mbit/s one every few seconds.
DEFAULT_PROBE_BYTES = 2048


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


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes before it is all buffered."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> torch.Tensor:
    if not raw:
        raise _unprocessable("empty body: expected a .npy tensor (application/octet-stream)")
    try:
        tensor = decode_tensor(raw)
    except ValueError as exc:
        raise _unprocessable(str(exc)) from None
    if not tensor.is_floating_point():
        raise _unprocessable(f"tensor dtype must be floating point, got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise _unprocessable("tensor contains NaN or infinity")
    return tensor


def _check_shape(
    tensor: torch.Tensor, expected: tuple[int, ...] | None, where: str, max_batch: int
) -> None:
    shape = tuple(tensor.shape)
    if expected is not None and (len(shape) != len(expected) + 1 or shape[1:] != expected):
        want = "(N, " + ", ".join(str(d) for d in expected) + ")"
        raise _unprocessable(f"{where} expects shape {want}, got {shape}")
    if not shape or not 1 <= shape[0] <= max_batch:
        raise _unprocessable(f"{where}: batch size must be 1..{max_batch}, got shape {shape}")


@torch.inference_mode()
def _cut_shapes(stages: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-row shape of the tensor entering each stage (cut ``0..N``), from one zero row."""
    h = torch.zeros((1, *input_shape))
    shapes = [tuple(h.shape[1:])]
    for stage in stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    return shapes


async def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = await asyncio.to_thread(fn)
    return out, time.perf_counter() - t0


def _answer(out: torch.Tensor, seconds: float) -> Response:
    return Response(
        content=encode_tensor(out),
        media_type=CONTENT_TYPE,
        headers={COMPUTE_HEADER: f"{seconds:.9f}"},
    )


def tier_router(
    stages: nn.Sequential,
    big_model: nn.Module | None,
    *,
    input_shape: tuple[int, ...] | None = None,
    profile: StageProfile | None = None,
    node: TierNode | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = 1024,
    max_pending: int | None = None,
    token: str | None = None,
    run: Callable[[Callable[[], torch.Tensor]], Awaitable[torch.Tensor]] | None = None,
) -> APIRouter:
    """Routes of this tier as the *next* tier of another: split tails, cascade, ping, probe.

    ``stages`` is the whole model as stages (the sender runs ``[:k]``, this tier ``[k:]``);
    ``big_model`` answers cascaded inputs (None: ``/cascade`` answers 404). ``input_shape``
    (per row, e.g. ``(1, 8, 8)``) lets every cut's shape be checked before the model runs;
    without it a tensor the model rejects is still a 422, with the model's message.
    ``profile`` is served at ``/profile``; ``node`` (this tier's own ``TierNode``, when
    it also sends onward) at ``/status``. ``run`` (a daemon's runtime) runs each
    computation as one of its requests, admitted, timed and metered by it; without it,
    computations run in a thread, at most ``max_pending`` at once.
    """
    stages.eval()
    if big_model is not None:
        big_model.eval()
    n = len(stages)
    names = [name for name, _ in stages.named_children()]
    shapes = _cut_shapes(stages, input_shape) if input_shape is not None else None
    pending = 0

    async def authorised(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise HTTPException(401, "this tier needs Authorization: Bearer <tier token>")

    async def compute(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
        nonlocal pending
        if run is not None:
            t0 = time.perf_counter()
            out = await run(fn)
            return out, time.perf_counter() - t0
        if max_pending is not None and pending >= max_pending:
            raise HTTPException(
                503, f"{pending} tier computations in progress; retry", {"Retry-After": "1"}
            )
        pending += 1
        try:
            return await _timed(fn)
        finally:
            pending -= 1

    router = APIRouter(
        prefix=PREFIX, tags=["tiers"], dependencies=[Depends(authorised)], responses=_TIER_ERRORS
    )

    def run_checked(fn: Callable[[], torch.Tensor], where: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            try:
                return fn()
            except RuntimeError as exc:
                if shapes is not None:  # shapes were checked: a failure here is ours
                    raise
                raise _unprocessable(f"{where} cannot take this tensor: {exc}") from None

        return call

    @router.get("/ping")
    async def ping() -> dict[str, Any]:
        return {"ok": True, "stages": n, "cascade": big_model is not None}

    @router.post("/probe")
    async def probe(request: Request) -> dict[str, int]:
        return {"bytes": len(await _read_body(request, max_body_bytes))}

    @router.get("/profile")
    async def get_profile() -> dict[str, Any]:
        if profile is None:
            raise HTTPException(404, "this tier was started without a stage profile")
        return profile.to_dict()

    if node is not None:

        @router.get("/status")
        async def status() -> dict[str, Any]:
            return node.status()

    @router.post("/split/{k}")
    async def split(k: int, request: Request) -> Response:
        if not 0 <= k < n:
            raise _unprocessable(
                f"split point {k} outside 0..{n - 1}: this tier runs stages [k:] of {n} "
                f"({', '.join(names)}); k = {n} would leave it nothing to run"
            )
        tensor = _decode(await _read_body(request, max_body_bytes))
        where = f"cut {k} (input of stage {names[k]!r})"
        _check_shape(tensor, shapes[k] if shapes is not None else None, where, max_batch)
        out, seconds = await compute(run_checked(lambda: run_from(stages, k, tensor), where))
        return _answer(out, seconds)

    @router.post("/cascade")
    async def cascade(request: Request) -> Response:
        if big_model is None:
            raise HTTPException(404, "this tier has no cascade model")
        model = big_model
        tensor = _decode(await _read_body(request, max_body_bytes))
        where = "the cascade model's input"
        _check_shape(tensor, shapes[0] if shapes is not None else None, where, max_batch)

        @torch.inference_mode()
        def run() -> torch.Tensor:
            return model(tensor)

        out, seconds = await compute(run_checked(run, where))
        return _answer(out, seconds)

    return router
