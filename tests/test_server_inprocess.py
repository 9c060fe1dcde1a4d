"""The app in-process (no socket): failures stay per batch, deadlines, control off, fuzzing."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecoserve.models.loader import LoadedModel
from ecoserve.server import ServeSettings, create_app

FAST = dict(window_requests=16, warmup_requests=4, max_wait_s=0.002)
#: The address the in-process client claims; a loopback daemon answers only loopback names.
LOCAL = "http://127.0.0.1"


def _model(fn, shape=(4,)) -> LoadedModel:
    return LoadedModel(name="test", module=None, batch_fn=fn, input_shape=shape)


def poison(batch: torch.Tensor) -> torch.Tensor:
    if bool((batch[:, 0] < 0).any()):
        raise RuntimeError("negative input poisons the batch")
    return batch * 2


@pytest.fixture(scope="module")
def client():
    s = ServeSettings(model="builtin:noop", **FAST)
    with TestClient(create_app(s), base_url=LOCAL) as c:
        yield c


def test_control_is_off_without_a_token(client):
    r = client.post("/v1/config", json={"tuner": "grid"}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 403
    assert "admin token" in r.json()["detail"]


def test_a_model_exception_fails_only_its_own_batch():
    s = ServeSettings(model="poison", min_batch=1, max_batch=1, **FAST)
    with TestClient(create_app(s, model=_model(poison)), base_url=LOCAL) as c:
        bad = c.post("/v1/infer", json={"input": [-1, 0, 0, 0]})
        assert bad.status_code == 500
        assert "negative input poisons" in bad.json()["detail"]
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda i: c.post("/v1/infer", json={"input": [i] * 4}), range(8)))
        assert [r.json()["output"] for r in rs] == [[2.0 * i] * 4 for i in range(8)]
        status = c.get("/v1/status").json()
        assert status["counters"]["failed"] == 1
        metrics = c.get("/metrics").text
        assert 'ecoserve_requests_total{outcome="error"} 1.0' in metrics
        assert 'ecoserve_batches_total{outcome="error"} 1.0' in metrics


def test_a_request_past_its_deadline_gets_504_and_the_next_one_is_served():
    gate = threading.Event()

    def stuck(batch: torch.Tensor) -> torch.Tensor:
        if bool((batch[:, 0] > 100).any()):
            gate.wait(5)
        return batch

    s = ServeSettings(
        model="stuck",
        request_timeout_s=0.3,
        baseline_at_start=False,
        min_batch=1,
        max_batch=1,
        **FAST,
    )
    with TestClient(create_app(s, model=_model(stuck)), base_url=LOCAL) as c:
        t0 = time.monotonic()
        r = c.post("/v1/infer", json={"input": [500, 0, 0, 0]})
        assert r.status_code == 504 and "timeout" in r.json()["detail"]
        assert time.monotonic() - t0 < 3
        gate.set()
        ok = c.post("/v1/infer", json={"input": [1, 2, 3, 4]})
        assert ok.status_code == 200 and ok.json()["output"] == [1, 2, 3, 4]
        assert 'ecoserve_requests_total{outcome="timeout"} 1.0' in c.get("/metrics").text


def test_readiness_waits_for_the_baseline():
    s = ServeSettings(model="builtin:noop", baseline_at_start=False, **FAST)
    with TestClient(create_app(s), base_url=LOCAL) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/v2/health/ready").status_code == 400  # the protocol's 4xx
        for _ in range(30):
            c.post("/v1/infer", json={"inputs": [[1, 2, 3, 4]] * 8})
            if c.get("/readyz").status_code == 200:
                break
        assert c.get("/readyz").status_code == 200


def test_baseline_file_makes_the_daemon_ready_at_once(tmp_path):
    path = tmp_path / "baseline.json"
    s = ServeSettings(model="builtin:noop", baseline_path=str(path), **FAST)
    with TestClient(create_app(s), base_url=LOCAL) as c:  # measures (warm-up) and writes the file
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert json.loads(path.read_text())["latency_s"] > 0
    s2 = ServeSettings(
        model="builtin:noop", baseline_path=str(path), baseline_at_start=False, **FAST
    )
    with TestClient(create_app(s2), base_url=LOCAL) as c:
        assert c.get("/readyz").status_code == 200


numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.booleans(), st.none(), st.text()
)
json_values = st.recursive(
    numbers,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["input", "inputs", "id", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=6).map(
        lambda v: json.dumps({"input": v}).encode()
    ),
)
content_types = st.sampled_from(
    ["application/json", "application/octet-stream", "text/plain", "application/x-npy", ""]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, content_type=content_types)
def test_fuzzed_bodies_never_get_a_5xx(client, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/infer", content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["detail"]
    r = client.post("/v2/models/noop/infer", content=body, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text)
