"""HTTP between tiers: the routes the next tier serves, and the client this tier calls them with.

The receiving side is an ``APIRouter`` (:func:`tier_router`) that any daemon includes next to
its own routes, so one ``ecoserve serve`` process can be a device, an edge or a cloud tier:

- ``POST /v1/tier/split/{k}``: body is the ``.npy`` tensor at cut ``k``; runs ``stages[k:]``
  and answers the ``.npy`` output.
- ``POST /v1/tier/cascade``: body is a ``.npy`` input batch; runs the big model and answers
  its ``.npy`` logits.
- ``GET /v1/tier/ping`` (round-trip samples), ``POST /v1/tier/probe`` (a body that is read and
  dropped: a bandwidth sample when nothing else is being sent), ``GET /v1/tier/profile`` (this
  tier's :class:`StageProfile`, so the sender plans with measured times) and, when a node is
  given, ``GET /v1/tier/status``.

Every compute answer carries ``X-Ecoserve-Compute-S``, the seconds the model ran, so the
sender can take them off the exchange time and feed only the network's share to its
:class:`LinkEstimator`. Bad bodies, cut points and shapes are 422 with a message saying which.

:class:`NextTierClient` is the sending side: its ``send(k, payload)`` and ``forward(payload)``
are the callables :class:`SplitRunner` and :class:`CascadeRunner` take. An optional
:class:`EmulatedLink` sleeps each payload's transfer time on the schedule (time 0 = when the
client was made), so tests and replays can slow a loopback link down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import torch
from fastapi import APIRouter, HTTPException, Request, Response
from torch import nn

from ecoserve.tiers.codec import CONTENT_TYPE, decode_tensor, encode_tensor
from ecoserve.tiers.link import EmulatedLink, Link, LinkEstimator
from ecoserve.tiers.split import run_from
from ecoserve.tiers.stages import StageProfile

if TYPE_CHECKING:
    from ecoserve.tiers.node import TierNode

#: Response header with the seconds the next tier spent computing (not on the network).
COMPUTE_HEADER = "X-Ecoserve-Compute-S"
#: Route prefix shared by the router and the client.
PREFIX = "/v1/tier"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Default size of a bandwidth probe: large enough that the transfer, not the round trip,
#: dominates on slow links, small enough to be negligible on a 1 Mbit/s one every few seconds.
DEFAULT_PROBE_BYTES = 2048


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
    return tensor.to(torch.float32)


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
) -> APIRouter:
    """Routes of this tier as the *next* tier of another: split tails, cascade, ping, probe.

    ``stages`` is the whole model as stages (the sender runs ``[:k]``, this tier ``[k:]``);
    ``big_model`` answers cascaded inputs (None: ``/cascade`` answers 404). ``input_shape``
    (per row, e.g. ``(1, 8, 8)``) lets every cut's shape be checked before the model runs;
    without it a tensor the model rejects is still a 422, with the model's message.
    ``profile`` is served at ``/profile``; ``node`` (this tier's own :class:`TierNode`, when
    it also sends onward) at ``/status``.
    """
    stages.eval()
    if big_model is not None:
        big_model.eval()
    n = len(stages)
    names = [name for name, _ in stages.named_children()]
    shapes = _cut_shapes(stages, input_shape) if input_shape is not None else None
    router = APIRouter(prefix=PREFIX, tags=["tiers"])

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
        out, seconds = await _timed(run_checked(lambda: run_from(stages, k, tensor), where))
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

        out, seconds = await _timed(run_checked(run, where))
        return _answer(out, seconds)

    return router


class TierError(RuntimeError):
    """The next tier could not be reached or refused a request (``status`` None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NextTierClient:
    """Async client of the next tier's :func:`tier_router`, measuring the link as it goes.

    Every exchange's duration, less the next tier's compute time (its response header), is
    reported to ``estimator`` as one transfer of the request and reply bytes; :meth:`ping`
    gives it round-trip samples and :meth:`probe` bandwidth samples when nothing is being
    sent. With ``emulation`` each payload waits its transfer time on that schedule plus its
    round trip, the reply its return transfer time, before going on over the real socket;
    uploads share one lock, so concurrent requests queue as on a real uplink.

    ``http`` is borrowed (not closed); without one a client is made on first use and closed
    by :meth:`aclose`. An ``httpx.AsyncClient`` belongs to the event loop that first used it.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient | None = None,
        *,
        estimator: LinkEstimator | None = None,
        emulation: EmulatedLink | None = None,
        timeout_s: float = 30.0,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"next tier URL must start with http:// or https://, got {url!r}")
        if probe_bytes < 1:
            raise ValueError(f"probe_bytes must be >= 1, got {probe_bytes}")
        self.url = url.rstrip("/")
        self._http = http
        self._owned = http is None
        self.estimator = estimator if estimator is not None else LinkEstimator(alpha=0.5)
        self.emulation = emulation
        self.timeout_s = timeout_s
        self.probe_bytes = probe_bytes
        self.clock = clock
        self.sleep = sleep
        self.origin = clock()
        self._uplink = asyncio.Lock()
        self.exchanges = 0
        self.errors = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.last_ok: float | None = None
        #: 8 x bytes / whole exchange time of the latest transfer: a lower bound on the
        #: bandwidth, used while the estimator has none (on a fast link a probe's transfer
        #: time is lost in the round trip's jitter, and "unknown" must not read as "down").
        self.bandwidth_floor: float | None = None

    async def __aenter__(self) -> NextTierClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned and self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
        return self._http

    def link(self) -> Link | None:
        """The link estimate (the floor while no bandwidth is resolved), or None if unknown."""
        bw = self.estimator.bandwidth_bps
        if bw is None:
            bw = self.bandwidth_floor
        return None if bw is None else Link(bandwidth_bps=bw, rtt_s=self.estimator.rtt_s)

    def _observed(self, nbytes: int, elapsed: float, on_wire: float) -> None:
        self.estimator.observe_transfer(nbytes, on_wire, includes_rtt=True)
        if elapsed > 0:
            self.bandwidth_floor = 8.0 * nbytes / elapsed
        self.last_ok = self.clock()

    async def connect(self) -> None:
        """Open the connection with an unmeasured ping, so set-up is not taken for RTT."""
        await self._emulate_up(0)
        await self._request("GET", f"{PREFIX}/ping", None)

    async def _emulate_up(self, nbytes: int) -> None:
        if self.emulation is None:
            return
        async with self._uplink:
            now = self.clock() - self.origin
            await self.sleep(self.emulation.transfer_time(nbytes, now))
        await self.sleep(self.emulation.rtt_s)

    async def _emulate_down(self, nbytes: int) -> None:
        if self.emulation is not None:
            now = self.clock() - self.origin
            await self.sleep(self.emulation.transfer_time(nbytes, now))

    async def _request(self, method: str, path: str, payload: bytes | None) -> httpx.Response:
        try:
            if payload is None:
                resp = await self.http.request(method, self.url + path)
            else:
                resp = await self.http.request(
                    method, self.url + path, content=payload, headers={"content-type": CONTENT_TYPE}
                )
        except httpx.HTTPError as exc:
            self.errors += 1
            raise TierError(f"next tier {self.url} unreachable ({path}): {exc!r}") from exc
        if resp.status_code != 200:
            self.errors += 1
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise TierError(
                f"next tier {self.url} answered {resp.status_code} to {path}: {detail}",
                status=resp.status_code,
            )
        return resp

    async def _exchange(self, path: str, payload: bytes) -> bytes:
        t0 = self.clock()
        await self._emulate_up(len(payload))
        resp = await self._request("POST", path, payload)
        reply = resp.content
        await self._emulate_down(len(reply))
        elapsed = self.clock() - t0
        try:
            server_s = float(resp.headers.get(COMPUTE_HEADER, "0"))
        except ValueError:
            server_s = 0.0
        self._observed(len(payload) + len(reply), elapsed, max(elapsed - server_s, 0.0))
        self.exchanges += 1
        self.bytes_up += len(payload)
        self.bytes_down += len(reply)
        return reply

    async def send(self, k: int, payload: bytes) -> bytes:
        """:class:`SplitRunner`'s ``send``: ``stages[k:]`` on the next tier."""
        return await self._exchange(f"{PREFIX}/split/{int(k)}", payload)

    async def forward(self, payload: bytes) -> bytes:
        """:class:`CascadeRunner`'s ``forward``: the next tier's big model on these rows."""
        return await self._exchange(f"{PREFIX}/cascade", payload)

    async def ping(self) -> float:
        """One round-trip sample (seconds), reported to the estimator."""
        t0 = self.clock()
        await self._emulate_up(0)
        await self._request("GET", f"{PREFIX}/ping", None)
        rtt = self.clock() - t0
        self.estimator.observe_rtt(rtt)
        self.last_ok = self.clock()
        return rtt

    async def probe(self, nbytes: int | None = None) -> float:
        """Send ``nbytes`` (default ``probe_bytes``) to be dropped: a bandwidth sample.

        Returns the measured seconds. The reply is a few bytes of JSON, counted too.
        """
        size = self.probe_bytes if nbytes is None else int(nbytes)
        payload = bytes(size)
        t0 = self.clock()
        await self._emulate_up(size)
        resp = await self._request("POST", f"{PREFIX}/probe", payload)
        await self._emulate_down(len(resp.content))
        elapsed = self.clock() - t0
        self._observed(size + len(resp.content), elapsed, elapsed)
        return elapsed

    async def profile(self) -> StageProfile | None:
        """The next tier's stage profile, or None if it serves none."""
        try:
            resp = await self._request("GET", f"{PREFIX}/profile", None)
        except TierError as exc:
            if exc.status == 404:
                self.errors -= 1
                return None
            raise
        return StageProfile.from_dict(resp.json())

    def stats(self) -> dict[str, Any]:
        link = self.link()
        return {
            "url": self.url,
            "exchanges": self.exchanges,
            "errors": self.errors,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bandwidth_bps": None if link is None else link.bandwidth_bps,
            "bandwidth_measured": self.estimator.bandwidth_bps is not None,
            "rtt_s": self.estimator.rtt_s,
            "emulation": None if self.emulation is None else list(self.emulation.segments),
        }


__all__ = [
    "COMPUTE_HEADER",
    "DEFAULT_PROBE_BYTES",
    "NextTierClient",
    "TierError",
    "tier_router",
]
