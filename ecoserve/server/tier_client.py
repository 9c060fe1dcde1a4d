"""The client of the next tier's routes, measuring the link as it goes.

:class:`NextTierClient` sends a split tensor (``send(k, payload)``) or cascaded rows
(``forward(payload)``) to the next tier's ``/v1/tier/*`` routes (``tier_routes``), and reports
every exchange's network time to a ``LinkEstimator``: the estimate that reaches the engine
and its tuners. Only transfers long enough to mean something count for bandwidth
(:data:`MIN_SAMPLE_S` on the wire): a 256-byte request on a 100 Mbit/s link takes 20 us,
lost in a millisecond of HTTP jitter, and once read such a link as 1.3 Mbit/s. The bandwidth
probe therefore starts by growing 4x at a time while the rate it reads still rises with its
size, then keeps its transfer near :data:`PROBE_TARGET_S` (shrinking on a slow link). An optional ``EmulatedLink`` sleeps each payload's transfer time on the
schedule (time 0 = when the client was made), so tests and demos can slow a loopback link.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx

from ecoserve.core.link import Link, LinkEstimator
from ecoserve.core.tiers import StageProfile
from ecoserve.models.tensor_codec import CONTENT_TYPE
from ecoserve.server.tier_routes import COMPUTE_HEADER, DEFAULT_PROBE_BYTES, PREFIX
from twins.link import EmulatedLink

#: Time on the wire a transfer needs to count as a bandwidth sample (well above the jitter
#: of an HTTP exchange on a busy box).
MIN_SAMPLE_S = 0.005
#: Time on the wire a probe is sized for: it grows 4x while shorter, halves past 8x this.
PROBE_TARGET_S = 0.02
#: A probe 4x larger reading a rate this much higher means the smaller read jitter.
RATE_RISE = 1.3
#: Largest probe (the next tier's body limit is 8 MiB by default).
MAX_PROBE_BYTES = 4 * 1024 * 1024


class TierError(RuntimeError):
    """The next tier could not be reached or refused a request (``status`` None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NextTierClient:
    """Async client of the next tier's ``tier_router``, measuring the link as it goes.

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
        token: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"next tier URL must start with http:// or https://, got {url!r}")
        if probe_bytes < 1:
            raise ValueError(f"probe_bytes must be >= 1, got {probe_bytes}")
        self.url = url.rstrip("/")
        self._auth = {"authorization": f"Bearer {token}"} if token else {}
        self._http = http
        self._owned = http is None
        self.estimator = (
            estimator
            if estimator is not None
            else LinkEstimator(alpha=0.5, min_wire_s=MIN_SAMPLE_S)
        )
        self.emulation = emulation
        self.timeout_s = timeout_s
        #: Size of the next bandwidth probe, adapted to the link (``probe_bytes`` at least).
        self.probe_bytes = probe_bytes
        self.min_probe_bytes = probe_bytes
        self.max_probe_bytes = max(probe_bytes, MAX_PROBE_BYTES)
        self.clock = clock
        self.sleep = sleep
        self.origin = clock()
        self._uplink = asyncio.Lock()
        self.exchanges = 0
        self.errors = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.last_ok: float | None = None
        self._calibrated = False
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
        self.estimator.observe_transfer(nbytes, on_wire, includes_rtt=True)  # if long enough
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
                resp = await self.http.request(method, self.url + path, headers=self._auth)
            else:
                headers = {"content-type": CONTENT_TYPE, **self._auth}
                resp = await self.http.request(
                    method, self.url + path, content=payload, headers=headers
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
        """The split runner's ``send``: ``stages[k:]`` on the next tier."""
        return await self._exchange(f"{PREFIX}/split/{int(k)}", payload)

    async def forward(self, payload: bytes) -> bytes:
        """The cascade runner's ``forward``: the next tier's big model on these rows."""
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
        """Send ``nbytes`` to be dropped: a bandwidth sample; returns the measured seconds.

        Without ``nbytes`` the probe is sized to the link: the first time by
        :meth:`_calibrate`, then adapted after each probe (:attr:`probe_bytes`). The
        reply's bytes count too.
        """
        if nbytes is not None:
            return (await self._probe_once(int(nbytes)))[0]
        if not self._calibrated:
            return await self._calibrate()
        elapsed, size, _ = await self._probe_once(self.probe_bytes)
        self._resize_probe(size, self.estimator.wire_time(elapsed))
        return elapsed

    async def _calibrate(self) -> float:
        """Grow the probe 4x while the rate it measures still rises with its size.

        A rate that rises with the size was the round trip's jitter, not the link; once 4x
        the bytes read about the same rate over at least :data:`PROBE_TARGET_S` (or the
        transfer takes long), that size is the link's, and only its sample goes to the
        estimator.
        """
        size, last_rate = self.probe_bytes, None
        while True:
            elapsed, sent, both = await self._probe_once(size, record=False)
            wire = self.estimator.wire_time(elapsed)
            rate = 8.0 * both / wire if wire > 0 else None
            rising = rate is None or last_rate is None or rate > RATE_RISE * last_rate
            settled = not rising and wire >= PROBE_TARGET_S
            if settled or wire > 8 * PROBE_TARGET_S or sent >= self.max_probe_bytes:
                break
            last_rate, size = rate, min(self.max_probe_bytes, sent * 4)
        self._observed(both, elapsed, elapsed)
        self.probe_bytes = sent
        self._calibrated = True
        return elapsed

    async def _probe_once(self, size: int, record: bool = True) -> tuple[float, int, int]:
        """One probe: (seconds, bytes sent, bytes both ways); recorded unless ``record`` is
        False. Past the next tier's body limit (413), probes are halved from then on."""
        while True:
            payload = bytes(size)
            t0 = self.clock()
            await self._emulate_up(size)
            try:
                resp = await self._request("POST", f"{PREFIX}/probe", payload)
                break
            except TierError as exc:
                if exc.status != 413 or size <= self.min_probe_bytes:
                    raise
                self.errors -= 1
                self.max_probe_bytes = max(self.min_probe_bytes, size // 2)
                self.probe_bytes = min(self.probe_bytes, self.max_probe_bytes)
                size = self.max_probe_bytes
        await self._emulate_down(len(resp.content))
        elapsed = self.clock() - t0
        both = size + len(resp.content)
        if record:
            self._observed(both, elapsed, elapsed)
        else:
            self.last_ok = self.clock()
        return elapsed, size, both

    def _resize_probe(self, size: int, wire_s: float) -> None:
        """Grow the probe while its transfer is too short to mean much; shrink if too long."""
        if wire_s < PROBE_TARGET_S:
            self.probe_bytes = min(self.max_probe_bytes, max(self.probe_bytes, size * 4))
        elif wire_s > 8 * PROBE_TARGET_S:
            self.probe_bytes = max(self.min_probe_bytes, size // 2)

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
