"""Overload over a real socket: a tiny queue and a slow model give 503s, never lost work."""

from __future__ import annotations

import asyncio

import httpx
from test_server_fixtures import FAST, daemon


def test_full_queue_gets_503_with_retry_after_and_accepted_requests_complete():
    args = (
        "--model", "test_server_fixtures:slow_model", *FAST,
        "--max-queue", "2", "--min-batch", "1", "--max-batch", "1", "--max-wait-s", "0",
        "--retry-after-s", "2", "--no-baseline-at-start",
    )  # fmt: skip
    with daemon(*args, ready=False, env={"ECOSERVE_TEST_SLOW_S": "0.1"}) as d:

        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            return await client.post("/v1/infer", json={"input": [i, i, i, i]})

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=30)
            async with httpx.AsyncClient(base_url=d.url, limits=limits, timeout=30) as client:
                return await asyncio.gather(*(one(client, i) for i in range(30)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) > 0 and codes.count(200) >= 2
        for i, r in enumerate(responses):
            if r.status_code == 200:
                assert r.json()["output"] == [float(i)] * 4
            else:
                assert r.headers["Retry-After"] == "2"
                assert "queue is full" in r.json()["detail"]
        status = httpx.get(d.url + "/v1/status").json()
        counters = status["counters"]
        assert counters["accepted"] == counters["completed"] == codes.count(200)
        assert counters["rejected"]["queue_full"] == codes.count(503)
        assert counters["failed"] == 0
        metrics = httpx.get(d.url + "/metrics").text
        assert f'ecoserve_requests_total{{outcome="rejected"}} {codes.count(503)}.0' in metrics
        # the daemon still serves normally afterwards
        assert httpx.post(d.url + "/v1/infer", json={"input": [1, 1, 1, 1]}).status_code == 200
