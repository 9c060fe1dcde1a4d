"""The daemon over a real socket: results, inputs, errors, metrics, status, v2, control."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import torch
from test_server_fixtures import FAST, daemon

from ecoserve.models.loader import load_model

TOKEN = "test-token"


@pytest.fixture(scope="module")
def noop():
    with daemon(
        "--model", "builtin:noop", *FAST, "--max-wait-s", "0.005", "--max-body-bytes", "4096",
        env={"ECOSERVE_ADMIN_TOKEN": TOKEN},
    ) as d:  # fmt: skip
        yield d


def test_start_prints_curl_line_that_works(noop):
    line = next(x for x in noop.lines if x.startswith("try: curl"))
    assert noop.url + "/v1/infer" in line
    body = line.split("-d '", 1)[1].rstrip().rstrip("'")
    r = httpx.post(noop.url + "/v1/infer", content=body)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == [0.0, 0.0, 0.0, 0.0]


def test_health_and_readiness(noop):
    assert httpx.get(noop.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(noop.url + "/readyz").status_code == 200
    assert httpx.get(noop.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(noop.url + "/v2/health/ready").json() == {"ready": True}


def test_fifty_concurrent_clients_get_their_own_results(noop):
    model = load_model("builtin:noop")
    inputs = [[float(i), i + 0.5, -float(i), i * 3.0] for i in range(50)]
    expected = [model.batch_fn(torch.tensor([x])).tolist()[0] for x in inputs]

    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        r = await client.post("/v1/infer", json={"input": inputs[i]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "noop"
        return r.json()["output"]

    async def all_of_them() -> list[list[float]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=noop.url, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    assert asyncio.run(all_of_them()) == expected


def test_several_items_in_one_request(noop):
    r = httpx.post(noop.url + "/v1/infer", json={"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]], "id": "a"})
    assert r.status_code == 200
    assert r.json()["outputs"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert r.json()["id"] == "a"


def test_npy_body_and_npy_response(noop):
    buf = io.BytesIO()
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(buf, arr)
    r = httpx.post(
        noop.url + "/v1/infer",
        content=buf.getvalue(),
        headers={"Content-Type": "application/octet-stream", "Accept": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    out = np.load(io.BytesIO(r.content), allow_pickle=False)
    np.testing.assert_array_equal(out, arr)
    # one item, answered as JSON
    buf = io.BytesIO()
    np.save(buf, np.ones(4, dtype=np.float64))
    r = httpx.post(
        noop.url + "/v1/infer",
        content=buf.getvalue(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.json()["output"] == [1.0, 1.0, 1.0, 1.0]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


BAD_JSON = [
    (b"{", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2, 3, 4]", "must be an object"),
    (b'{"input": [1, 2, 3]}', "shape [3]"),
    (b'{"input": [[1, 2], [3]]}', "ragged"),
    (b'{"input": ["a", "b", "c", "d"]}', "numbers"),
    (b'{"input": [1, 2, null, 4]}', "numbers"),
    (b'{"input": [1, 2, NaN, 4]}', "NaN"),
    (b'{"inputs": []}', "non-empty"),
    (b'{"input": [1, 2, 3, 4], "inputs": [[1, 2, 3, 4]]}', "exactly one"),
    (b'{"inptu": [1, 2, 3, 4]}', "unknown field"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JSON)
def test_malformed_json_gets_422_naming_the_problem(noop, body, message):
    r = httpx.post(
        noop.url + "/v1/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


BAD_NPY = [
    (b"not an npy file", "not a valid .npy"),
    (_npy(np.zeros(5, dtype=np.float32)), "shape [5]"),
    (_npy(np.zeros(4, dtype=np.complex64)), "dtype complex64"),
    (_npy(np.array(["a", "b", "c", "d"])), "numbers"),
    (_npy(np.array([1, None, 2, 3], dtype=object)), "not a valid .npy"),  # pickles refused
    (_npy(np.zeros((0, 4), dtype=np.float32)), "zero items"),
]


@pytest.mark.parametrize(("body", "message"), BAD_NPY)
def test_malformed_npy_gets_422(noop, body, message):
    r = httpx.post(
        noop.url + "/v1/infer", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_body_over_the_limit_gets_413(noop):
    big = b'{"input": [' + b"1," * 3000 + b"1]}"
    r = httpx.post(noop.url + "/v1/infer", content=big)
    assert r.status_code == 413
    assert "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed size is checked
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(noop.url + "/v1/infer", content=chunks())
    assert r.status_code == 413


def test_metrics_are_prometheus_text(noop):
    httpx.post(noop.url + "/v1/infer", json={"input": [1, 2, 3, 4]})
    text = httpx.get(noop.url + "/metrics").text
    for name in (
        'ecoserve_requests_total{outcome="ok"}',
        'ecoserve_requests_total{outcome="invalid"}',
        "ecoserve_request_duration_seconds_bucket",
        "ecoserve_queue_wait_seconds_bucket",
        "ecoserve_batch_size_bucket",
        "ecoserve_batch_fill_ratio_bucket",
        "ecoserve_batch_execution_seconds_bucket",
        "ecoserve_queue_length",
        "ecoserve_config_batch_size_items",
        'ecoserve_config_clock_hertz{knob="cpu_freq_hz"}',
        "ecoserve_tuner_info{",
        "ecoserve_device_warnings",
        "ecoserve_window_cost",
        "ecoserve_window_energy_per_request_joules",
        "ecoserve_window_latency_mean_seconds",
        "ecoserve_energy_joules_total",
        'ecoserve_rejections_total{reason="queue_full"}',
        "ecoserve_ready 1.0",
    ):
        assert name in text, name
    # the tuner's phase and the controller's are labelled apart (phase: deprecated copy)
    assert 'tuner_phase="' in text and 'controller_phase="' in text


def test_status_reports_configuration_windows_and_tuner(noop):
    s = httpx.get(noop.url + "/v1/status").json()
    assert s["ready"] and s["model"] == "noop"
    assert set(s["config"]) == {"cpu_freq_hz", "gpu_freq_hz", "batch_size"}
    assert s["windows"] and s["windows"][0]["phase"] == "baseline"
    assert s["tuner"]["name"] == "ecogd" and "centre" in s["tuner"]["state"]
    assert s["settings"]["admin_token"] == "***"


def test_open_inference_protocol(noop):
    meta = httpx.get(noop.url + "/v2/models/noop").json()
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    body = {
        "id": "x1",
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}],
    }
    r = httpx.post(noop.url + "/v2/models/noop/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "x1" and out["model_name"] == "noop"
    assert out["outputs"][0]["shape"] == [2, 4]
    assert out["outputs"][0]["data"] == [float(x) for x in range(8)]
    assert httpx.get(noop.url + "/v2/models/other").status_code == 404
    body["inputs"][0]["shape"] = [3, 4]
    r = httpx.post(noop.url + "/v2/models/noop/infer", json=body)
    assert r.status_code == 400 and "needs 12" in r.json()["error"]


def test_openapi_docs(noop):
    assert httpx.get(noop.url + "/docs").status_code == 200
    paths = httpx.get(noop.url + "/openapi.json").json()["paths"]
    assert {"/v1/infer", "/v1/status", "/v1/config", "/readyz", "/metrics"} <= set(paths)


def test_admin_control_needs_the_token(noop):
    url = noop.url + "/v1/config"
    assert httpx.post(url, json={"unpin": True}).status_code == 401
    wrong = httpx.post(url, json={"unpin": True}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(url, json={"pin": {"batch_size": 4}}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["values"]["batch_size"] == 4 and r.json()["pinned"] == {"batch_size": 4}
    assert httpx.get(noop.url + "/v1/status").json()["config"]["batch_size"] == 4
    r = httpx.post(url, json={"tuner": "grid", "unpin": True}, headers=auth)
    assert r.status_code == 200 and r.json()["tuner"] == "grid" and r.json()["pinned"] == {}
    assert httpx.post(url, json={"tuner": "nope"}, headers=auth).status_code == 422
    assert httpx.post(url, json={"pin": {"volts": 1}}, headers=auth).status_code == 422
    assert httpx.post(url, json={"bogus": 1}, headers=auth).status_code == 422
    # serving goes on after control changes
    assert httpx.post(noop.url + "/v1/infer", json={"input": [1, 2, 3, 4]}).status_code == 200
