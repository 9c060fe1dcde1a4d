"""Idle connections cannot starve the daemon: N+100 of them against a limit of N."""

from __future__ import annotations

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
            time.sleep(0.3)
            for _ in range(5):
                t0 = time.monotonic()
                resp = httpx.get(d.url + "/healthz", timeout=5)
                assert resp.status_code == 200
                assert time.monotonic() - t0 < 1.0
            body = {"inputs": [[[[0.0] * 32] * 32] * 3]}
            assert httpx.post(d.url + "/v1/infer", json=body, timeout=10).status_code == 200
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
