"""Signals over a real process: drain on SIGTERM/SIGINT, exit 0, state saved and resumed."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
from test_server_fixtures import FAST, Daemon

SLOW = {"ECOSERVE_TEST_SLOW_S": "0.15"}


def _wait_queued(url: str, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counters = httpx.get(url + "/v1/status").json()["counters"]
        if counters["accepted"] >= n:
            return
        time.sleep(0.02)
    raise AssertionError("requests were not accepted in time")


def test_sigterm_drains_every_accepted_request_and_saves_state(tmp_path):
    state = tmp_path / "state.json"
    args = (
        "--model", "test_server_fixtures:slow_model", *FAST,
        "--max-batch", "2", "--max-wait-s", "0.01", "--state-file", str(state),
    )  # fmt: skip
    d = Daemon(*args, env=SLOW).start()
    try:
        baseline_windows = json.loads(state.read_text())["windows_closed"]
        assert baseline_windows >= 1  # saved at each window during the warm-up

        async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=d.url, timeout=30) as client:
                before = (await client.get("/v1/status")).json()["counters"]["accepted"]
                tasks = [
                    asyncio.create_task(client.post("/v1/infer", json={"input": [i] * 4}))
                    for i in range(12)
                ]
                await asyncio.to_thread(_wait_queued, d.url, before + 12)
                d.signal(signal.SIGTERM)
                await asyncio.sleep(0.2)  # the drain runs: 12 items take ~0.9 s
                ready = await client.get("/readyz")
                late = await client.post("/v1/infer", json={"input": [9] * 4})
                return list(await asyncio.gather(*tasks)), ready, late

        responses, ready, late = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 12
        assert [r.json()["output"] for r in responses] == [[float(i)] * 4 for i in range(12)]
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        assert late.status_code == 503 and "Retry-After" in late.headers
        assert d.wait(30) == 0, d.output
    finally:
        d.stop()
    assert "device" in d.output and "restored" in d.output
    saved = json.loads(state.read_text())
    assert saved["tuner"] == "ecogd" and saved["baseline"] is not None

    # a restart resumes: ready at once (no warm-up), same windows count and tuner centre
    d2 = Daemon(*args, "--no-baseline-at-start", env=SLOW).start(ready=False)
    try:
        d2.wait_ready(5)
        status = httpx.get(d2.url + "/v1/status").json()
        assert status["resumed"] == ["baseline", "tuner"]
        assert status["windows_closed"] == saved["windows_closed"]
        assert status["tuner"]["state"]["centre"] == saved["tuner_state"]["centre"]
        assert status["baseline"] == saved["baseline"]
        d2.signal(signal.SIGINT)
        assert d2.wait(30) == 0, d2.output
    finally:
        d2.stop()


def test_state_from_another_model_is_ignored(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": 1, "model": "builtin:cnn", "device": "x"}))
    args = ("--model", "builtin:noop", *FAST, "--state-file", str(state), "--no-baseline-at-start")
    d = Daemon(*args).start(ready=False)
    try:
        assert httpx.get(d.url + "/readyz").status_code == 503  # baseline not known yet
        assert httpx.get(d.url + "/v1/status").json()["resumed"] == []
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.stop()
    assert "starting fresh" in d.output
