"""The request path made leaner keeps its answers: deadlines, metrics, the JSON codec."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from ecoserve.models.loader import LoadedModel
from ecoserve.server import ServeSettings, create_app
from ecoserve.server.metrics import ServerMetrics
from ecoserve.server.responses import json_response
from ecoserve.server.tensors import InputError, parse_json, to_jsonable

FAST = dict(window_requests=16, warmup_requests=4, max_wait_s=0.002, baseline_at_start=False)
LOCAL = "http://127.0.0.1"


def _model(fn) -> LoadedModel:
    return LoadedModel(name="test", module=None, batch_fn=fn, input_shape=(4,))


def test_a_model_that_raises_timeouterror_is_a_model_failure_not_a_deadline() -> None:
    def times_out(batch: torch.Tensor) -> torch.Tensor:
        raise TimeoutError("the model's own backend timed out")

    s = ServeSettings(model="t", request_timeout_s=30.0, min_batch=1, max_batch=1, **FAST)
    with TestClient(create_app(s, model=_model(times_out)), base_url=LOCAL) as c:
        r = c.post("/v1/infer", json={"input": [1, 2, 3, 4]})
        assert r.status_code == 500, r.text
        assert "TimeoutError" in r.json()["detail"]


def test_several_items_past_the_deadline_get_504_and_the_daemon_serves_on() -> None:
    gate = threading.Event()

    def stuck_on_big(batch: torch.Tensor) -> torch.Tensor:
        if bool((batch[:, 0] > 100).any()):
            gate.wait(5)
        return batch

    s = ServeSettings(model="t", request_timeout_s=0.2, min_batch=1, max_batch=1, **FAST)
    with TestClient(create_app(s, model=_model(stuck_on_big)), base_url=LOCAL) as c:
        t0 = time.monotonic()
        r = c.post("/v1/infer", json={"inputs": [[500, 0, 0, 0]] * 3})
        assert r.status_code == 504 and "0.2 s" in r.json()["detail"]
        assert time.monotonic() - t0 < 3
        gate.set()  # the item running finishes; the two still queued were dropped
        ok = c.post("/v1/infer", json={"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]})
        assert ok.status_code == 200 and ok.json()["outputs"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
        assert c.get("/v1/status").json()["counters"]["completed"] <= 3
        text = c.get("/metrics").text
        assert 'ecoserve_requests_total{outcome="timeout"} 1.0' in text
        assert 'ecoserve_requests_total{outcome="ok"} 1.0' in text


def test_each_request_is_counted_in_every_series_it_belongs_to() -> None:
    m = ServerMetrics()
    for _ in range(3):
        m.request_done("ok", 0.004, model="a", tenant="alice")
    m.request_done("throttled", model="a", tenant="bob")
    m.request_done("ok", 0.2, model="b")
    m.request_done("new_outcome")  # an outcome not declared up front still counts
    text = m.render().decode()
    assert 'ecoserve_requests_total{outcome="ok"} 4.0' in text
    assert 'ecoserve_requests_total{outcome="new_outcome"} 1.0' in text
    assert 'ecoserve_model_requests_total{model="a",outcome="ok"} 3.0' in text
    assert 'ecoserve_model_requests_total{model="a",outcome="throttled"} 1.0' in text
    assert 'ecoserve_model_requests_total{model="b",outcome="ok"} 1.0' in text
    assert 'ecoserve_tenant_requests_total{outcome="ok",tenant="alice"} 3.0' in text
    assert 'ecoserve_tenant_requests_total{outcome="throttled",tenant="bob"} 1.0' in text
    assert 'ecoserve_model_request_duration_seconds_count{model="a"} 3.0' in text
    assert 'ecoserve_model_request_duration_seconds_bucket{le="0.25",model="b"} 1.0' in text
    assert "ecoserve_request_duration_seconds_count 4.0" in text


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_outputs_that_are_not_finite_become_null_in_every_float_dtype(dtype: torch.dtype) -> None:
    value = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]], dtype=dtype)
    assert to_jsonable(value) == [[1.0, None], [None, -2.0]]
    assert to_jsonable(torch.tensor([0.5, 1.5], dtype=dtype)) == [0.5, 1.5]


def test_outputs_that_track_gradients_or_hold_integers_are_plain_lists() -> None:
    assert to_jsonable(torch.tensor([1.0, float("inf")], requires_grad=True)) == [1.0, None]
    assert to_jsonable(torch.tensor([[1, 2]], dtype=torch.int64)) == [[1, 2]]
    assert to_jsonable(torch.tensor([True, False])) == [True, False]


def test_a_json_body_is_read_in_any_encoding_json_allows_and_nan_is_refused() -> None:
    for encoding in ("utf-8", "utf-16", "utf-32"):
        assert parse_json('{"input": [1, 2]}'.encode(encoding)) == {"input": [1, 2]}
    with pytest.raises(InputError, match="NaN"):
        parse_json(b'{"input": [NaN]}')
    with pytest.raises(InputError, match="not valid JSON"):
        parse_json(b'{"input": [1,')
    with pytest.raises(InputError, match="not valid JSON"):
        parse_json(b'{"input": "\xff"}')


def test_json_responses_are_compact_and_strict() -> None:
    r = json_response({"a": [1, 2.5], "b": "é"}, 201, {"X-Test": "1"})
    assert r.body == b'{"a":[1,2.5],"b":"\\u00e9"}'
    assert r.status_code == 201 and r.headers["x-test"] == "1"
    assert json.loads(json_response({"when": object}).body)["when"].startswith("<class")
    with pytest.raises(ValueError):
        json_response({"x": float("nan")})
