"""The tier routes follow the daemon's rules: a token beyond loopback, the queue, deadlines,
and the energy of the batches they run in."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from ecoserve.models.loader import LoadedModel
from ecoserve.server import ServeSettings, create_app

FAST = dict(window_requests=16, warmup_requests=4, baseline_at_start=False)
LOCAL = "http://127.0.0.1"


class SlowOnLargeValues(nn.Module):
    """Identity that sleeps ``seconds`` when the input holds a value above 1 (the profile's
    random example items do not, so start-up stays fast)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1).any()):
            time.sleep(self.seconds)
        return x


def _slow_model(seconds: float) -> LoadedModel:
    module = nn.Sequential(SlowOnLargeValues(seconds), nn.Identity())

    def batch_fn(batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return module(torch.stack(batch) if isinstance(batch, list) else batch)

    return LoadedModel(name="slow", module=module, batch_fn=batch_fn, input_shape=(4,))


def _npy(value: float, rows: int = 1) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((rows, 4), value, np.float32))
    return buf.getvalue()


def test_serving_tiers_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ValueError, match="ECOSERVE_TIER_TOKEN"):
        ServeSettings(serve_tier=True, host="0.0.0.0")
    ServeSettings(serve_tier=True, host="0.0.0.0", tier_token="s3cret")
    ServeSettings(serve_tier=True, host="127.0.0.1")
    ServeSettings(host="0.0.0.0")  # no tier routes, nothing to protect
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--serve-tier", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--serve-tier on --host 0.0.0.0" in proc.stderr and "--tier-token" in proc.stderr


def test_tier_computations_are_requests_of_the_runtime() -> None:
    s = ServeSettings(model="slow", serve_tier=True, **FAST)
    with TestClient(create_app(s, model=_slow_model(0.05)), base_url=LOCAL) as c:
        for path in ("/v1/tier/split/0", "/v1/tier/cascade"):
            resp = c.post(path, content=_npy(5.0, rows=3))
            assert resp.status_code == 200, resp.text
            assert np.load(io.BytesIO(resp.content)).shape == (3, 4)
            assert float(resp.headers["X-Ecoserve-Compute-S"]) >= 0
        assert c.post("/v1/infer", json={"input": [0.5] * 4}).status_code == 200
        status = c.get("/v1/status").json()
        assert status["counters"]["accepted"] == status["counters"]["completed"] == 3
        metrics = c.get("/metrics").text
        assert 'ecoserve_batches_total{outcome="ok"} 3.0' in metrics
        energy = metrics.split("\necoserve_batch_energy_joules_total ")[1].split("\n")[0]
        assert float(energy) > 0  # the tier batches' energy is measured and counted


def test_tier_computations_meet_the_queue_bound_and_the_deadline() -> None:
    s = ServeSettings(
        model="slow", serve_tier=True, max_queue=1, min_batch=1, max_batch=1,
        request_timeout_s=0.3, retry_after_s=4, **FAST,
    )  # fmt: skip
    with TestClient(create_app(s, model=_slow_model(0.5)), base_url=LOCAL) as c:
        late = c.post("/v1/tier/split/0", content=_npy(5.0))
        assert late.status_code == 504, late.text
        assert "request timeout of 0.3 s" in late.json()["detail"]
        time.sleep(0.4)  # the late one has finished running
        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(lambda _: c.post("/v1/tier/split/0", content=_npy(5.0)), range(6)))
        full = [r for r in rs if r.status_code == 503]
        assert full and all(r.headers["Retry-After"] == "4" for r in full)
        assert all("queue is full" in r.json()["detail"] for r in full)
        status = c.get("/v1/status").json()
        assert status["counters"]["rejected"]["queue_full"] == len(full)


def test_a_failing_tier_computation_fails_only_its_own_request() -> None:
    s = ServeSettings(model="slow", serve_tier=True, **FAST)
    with TestClient(create_app(s, model=_slow_model(0.0)), base_url=LOCAL) as c:
        bad = c.post("/v1/tier/split/1", content=_npy(0.5)[:-4])
        assert bad.status_code == 422
        assert c.post("/v1/tier/split/1", content=_npy(0.5)).status_code == 200
