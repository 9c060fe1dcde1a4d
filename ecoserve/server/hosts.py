"""Refusing requests whose ``Host`` header names another site (DNS rebinding).

A page on another origin can make a browser POST to a daemon listening on loopback, and a
name that an attacker's DNS points at 127.0.0.1 gets past the same-origin policy. Checking
the ``Host`` header closes that: bound to loopback, the daemon answers only to loopback
names unless ``--allowed-hosts`` says otherwise; bound elsewhere, to any name unless it does.
A refused request gets a JSON 400 naming the header and the setting.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def allowed_hosts(setting: str | None, bind_host: str) -> frozenset[str] | None:
    """The names to answer to (None: any). ``setting`` is a comma list; ``*`` allows any."""
    if setting is not None:
        names = {h.strip().lower() for h in setting.split(",") if h.strip()}
        return None if "*" in names else frozenset(names)
    if is_loopback(bind_host):
        return frozenset({*LOOPBACK_NAMES, bind_host})
    return None


def host_name(header: str) -> str:
    """``example:8000`` -> ``example``; ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware answering 400 to a ``Host`` header outside ``allowed``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host_name(raw)
            if name not in self.allowed:
                body = json.dumps(
                    {
                        "detail": f"Host header {raw!r} is not one this daemon answers to "
                        f"({', '.join(sorted(self.allowed))}); start it with --allowed-hosts "
                        "to add names",
                        "error": "host not allowed",
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
