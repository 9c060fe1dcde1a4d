"""Bounded connections: idle sockets cannot starve the daemon of file descriptors.

uvicorn keeps every accepted connection until its client closes it, and a connection that
never sends a request has no timeout at all; a few hundred idle sockets past the process's
file limit make ``accept()`` fail with EMFILE, which stops all serving and floods the log.
Here each connection is an ``H11Protocol`` that

- closes itself when it has sent nothing for ``idle_timeout_s`` (a request in progress is
  never cut: only a connection with no request running is idle);
- at ``max_connections``, makes room by closing an idle connection: one whose last response
  is complete, or one that has sent no full request for ``grace_s`` (a new connection whose
  request is still on its way is not idle);
- when nothing is idle, is refused with an HTTP answer, never a silent close: ``503`` with
  ``Retry-After`` once its request arrives (or after ``grace_s``), then the write side is
  shut and the socket lingers briefly so the client reads the answer rather than a reset.

Refusals are counted through ``on_refuse`` and logged at most once a second, as are accept
errors. At start the soft limit on open files is raised to the hard one, so
``max_connections`` fits under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("ecoserve.server")


class RateLimitedLog:
    """Logs a message at most once per ``period_s``, counting what it held back."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.period_s = period_s
        self._last = -float("inf")
        self.suppressed = 0

    def allow(self) -> bool:
        """True at most once per period; the calls in between are counted."""
        now = time.monotonic()
        if now - self._last < self.period_s:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def warning(self, message: str, *args: Any) -> None:
        held = self.suppressed
        if self.allow():
            self.suppressed = 0
            if held:
                message += f" ({held} more since the last message)"
            log.warning(message, *args)


#: How long a refused connection stays open after its answer, so the client reads it.
LINGER_S = 1.0


def refusal_bytes(retry_after_s: int) -> bytes:
    """A complete ``503`` answer that closes the connection (JSON for both APIs' clients)."""
    body = json.dumps(
        {
            "detail": "server overloaded: connection limit reached; retry later",
            "error": "server overloaded: connection limit reached; retry later",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Retry-After: {retry_after_s}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def bounded_protocol(
    max_connections: int,
    idle_timeout_s: float,
    retry_after_s: int = 1,
    on_refuse: Callable[[str], None] | None = None,
    grace_s: float = 1.0,
    lingering: int = 32,
) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass with these limits (uvicorn takes a class for ``http``).

    ``on_refuse`` is called with ``"full"`` for each connection answered 503 because every
    other one was busy, and ``"idle"`` for each silent one closed to make room. At most
    ``lingering`` refused connections wait for their request and linger after the answer;
    past that (a flood of silent sockets) the 503 is written and the socket closed at once,
    so refusals cannot use up the file descriptors the served connections need.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    if not idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
    grace_s = min(grace_s, idle_timeout_s)
    refusals = RateLimitedLog()
    answer = refusal_bytes(retry_after_s)
    count = on_refuse or (lambda reason: None)

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._connected = self._last_active = time.monotonic()
            self._idle_timer: asyncio.TimerHandle | None = None
            self._refused = False
            self._answered = False
            if self._admitted() > max_connections and not self._evict_idlest():
                refusals.warning(
                    "connection limit (%d) reached with every connection busy; "
                    "answering new ones 503",
                    max_connections,
                )
                self._refuse("full")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._last_active = time.monotonic()
            if self._refused:
                if not self._answered:
                    self._answer()
                return  # a refused request is read and dropped, never run
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            super().connection_lost(exc)

        def _admitted(self) -> int:
            return sum(
                1
                for c in self.connections
                if not (isinstance(c, BoundedH11Protocol) and c._refused)
            )

        def _is_idle(self) -> bool:
            return getattr(self, "cycle", None) is None or self.cycle.response_complete

        def _evictable(self, now: float) -> bool:
            if self._refused:
                return False
            cycle = getattr(self, "cycle", None)
            if cycle is not None:  # answered, and no part of another request has come
                return bool(cycle.response_complete) and not self.conn.trailing_data[0]
            return now - self._last_active >= grace_s  # no full request for grace_s

        def _arm(self) -> None:
            self._idle_timer = self.loop.call_later(idle_timeout_s, self._check_idle)

        def _check_idle(self) -> None:
            quiet = time.monotonic() - self._last_active
            if self._is_idle() and quiet >= idle_timeout_s:
                self.transport.close()
                return
            self._idle_timer = self.loop.call_later(
                max(0.05, idle_timeout_s - quiet), self._check_idle
            )

        def _refuse(self, reason: str) -> None:
            """Answer 503 when the request arrives (or after ``grace_s``), then close."""
            self._refused = True
            count(reason)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            waiting = sum(
                1 for c in self.connections if isinstance(c, BoundedH11Protocol) and c._refused
            )
            if waiting > lingering:
                self._answer(linger=False)
            elif reason == "idle" or self.transport.is_closing():
                self._answer()
            else:
                self._idle_timer = self.loop.call_later(grace_s, self._answer)

        def _answer(self, linger: bool = True) -> None:
            if self._answered or self.transport.is_closing():
                return
            self._answered = True
            self.transport.write(answer)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if not linger:
                self.transport.close()  # flushes the answer, then frees the descriptor
                return
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._idle_timer = self.loop.call_later(LINGER_S, self.transport.close)

        def _evict_idlest(self) -> bool:
            now = time.monotonic()
            idle = [
                c
                for c in self.connections
                if c is not self and isinstance(c, BoundedH11Protocol) and c._evictable(now)
            ]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._last_active)
            refusals.warning(
                "connection limit (%d) reached; closing the connection idle the longest",
                max_connections,
            )
            if oldest.cycle is None:
                oldest._refuse("idle")  # it never asked: it still gets an answer
            else:
                oldest.transport.close()
                oldest.connections.discard(oldest)
            return True

    return BoundedH11Protocol


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the loop's errors as before, but each kind at most once a second (EMFILE floods)."""
    limits: dict[str, RateLimitedLog] = {}
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        limiter = limits.setdefault(str(context.get("message", "error")), RateLimitedLog())
        if not limiter.allow():
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
