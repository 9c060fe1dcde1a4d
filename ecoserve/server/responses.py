"""Reading request bodies under a size limit, and fast JSON responses.

The limit is checked twice: against ``Content-Length`` before reading anything, and on the
bytes actually streamed, since a chunked body has no length and a client may lie.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ecoserve.server.service import ServiceError

#: Compact, strict JSON, made once (``json.dumps`` with options builds an encoder per call).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str)


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ServiceError(400, "Content-Length is not a number", "invalid") from None
        if size > limit:
            raise ServiceError(
                413, f"body of {size} bytes exceeds the limit of {limit} bytes", "too_large"
            )
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise ServiceError(413, f"body exceeds the limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def accepts(request: Request, *media: str) -> bool:
    accept = request.headers.get("accept", "").lower()
    return any(m in accept for m in media)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Serialise with the standard library directly: cheaper than a validating encoder."""
    body = _COMPACT_JSON.encode(data).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(err: ServiceError) -> Response:
    return json_response({"detail": err.detail}, err.status, err.headers)
