"""Idle connections cannot starve the daemon, and a flood past the limit is answered 503."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
from test_server_fixtures import FAST, daemon

LIMIT = 20


def test_idle_connections_past_the_limit_leave_the_daemon_answering() -> None:
    with daemon(*FAST, "--max-connections", str(LIMIT), "--idle-timeout-s", "30") as d:
        host, port = d.url.removeprefix("http://").split(":")
        idle = []
        try:
            for _ in range(LIMIT + 100):
                s = socket.create_connection((host, int(port)), timeout=5)
                idle.append(s)  # connected, never sends a byte
            time.sleep(1.3)  # past the grace a new connection has to send its request
            for _ in range(5):
                t0 = time.monotonic()
                resp = httpx.get(d.url + "/healthz", timeout=5)
                assert resp.status_code == 200
                assert time.monotonic() - t0 < 1.0
            body = {"inputs": [[[[0.0] * 32] * 32] * 3]}
            assert httpx.post(d.url + "/v1/infer", json=body, timeout=10).status_code == 200
            # those turned away while the first LIMIT were still new were answered, not dropped
            idle[-1].settimeout(5)
            assert idle[-1].recv(64).startswith(b"HTTP/1.1 503 ")
        finally:
            for s in idle:
                s.close()
        assert "connection limit (20) reached" in d.output
        # logged at most once a second, not once per connection
        assert d.output.count("connection limit (20) reached") <= 5


def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    with daemon(*FAST, "--idle-timeout-s", "0.5") as d:
        host, port = d.url.removeprefix("http://").split(":")
        s = socket.create_connection((host, int(port)), timeout=5)
        try:
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(1) == b""  # the daemon closed it
            assert 0.3 < time.monotonic() - t0 < 3.0
        finally:
            s.close()


async def _raw_request(host: str, port: int, body: bytes) -> bytes:
    """One connection, one request; everything the daemon sent back until it closed."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)
    except ConnectionError as exc:
        return f"reset: {exc}".encode()
    finally:
        writer.close()


def test_a_flood_past_the_limit_gets_an_http_answer_on_every_connection() -> None:
    limit, flood = 16, 300
    args = (
        "--model", "test_server_fixtures:slow_model", *FAST, "--max-connections", str(limit),
        "--max-queue", "1000", "--retry-after-s", "3", "--no-warmup-at-start",
    )  # fmt: skip
    with daemon(*args, ready=False, env={"ECOSERVE_TEST_SLOW_S": "0.2"}) as d:
        host, port = d.url.removeprefix("http://").split(":")

        async def burst() -> list[bytes]:
            body = b'{"input": [1, 2, 3, 4]}'
            return await asyncio.gather(
                *(_raw_request(host, int(port), body) for _ in range(flood))
            )

        answers = asyncio.run(burst())
        heads = [a.split(b"\r\n", 1)[0] for a in answers]
        ok = heads.count(b"HTTP/1.1 200 OK")
        full = heads.count(b"HTTP/1.1 503 Service Unavailable")
        assert ok + full == flood, [h for h in heads if b" 200 " not in h and b" 503 " not in h]
        assert ok >= limit and full > 0
        refused = next(a for a in answers if a.startswith(b"HTTP/1.1 503"))
        assert b"Retry-After: 3\r\n" in refused and b"connection limit" in refused
        status = httpx.get(d.url + "/v1/status", timeout=10).json()
        assert status["connections_refused"]["full"] == full
        assert status["counters"]["completed"] == ok
        metrics = httpx.get(d.url + "/metrics", timeout=10).text
        assert f'ecoserve_connections_refused_total{{reason="full"}} {full}.0' in metrics
        assert d.output.count("connection limit (16) reached") <= 5


def test_a_port_in_use_says_how_to_get_past_it() -> None:
    import subprocess
    import sys

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        args = ["--port", str(port), "--model", "builtin:noop", "--no-warmup-at-start"]
        proc = subprocess.run(
            [sys.executable, "-m", "ecoserve", "serve", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert proc.returncode == 1
    assert f"could not start on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
