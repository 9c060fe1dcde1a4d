"""Input guards: integers that do not fit their datatype, foreign Host headers, JSON 500s."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_server_fixtures import FAST, daemon

from ecoserve.server import ServeSettings, create_app


@pytest.fixture(scope="module")
def url():
    with daemon("--model", "test_server_fixtures:failing_model", *FAST) as d:
        yield d.url


def v2(url: str, datatype: str, data: list[int]) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": datatype, "data": data}]}
    return httpx.post(url + "/v2/models/failing_model/infer", json=body, timeout=10)


@pytest.mark.parametrize(
    ("datatype", "data", "shown"),
    [
        ("INT8", [300, 1, 2, 3], "-128..127"),
        ("INT16", [70000, 0, 0, 0], "-32768..32767"),
        ("UINT8", [-1, 0, 0, 0], "0..255"),
    ],
)
def test_integers_outside_the_datatype_are_refused_not_wrapped(url, datatype, data, shown) -> None:
    resp = v2(url, datatype, data)
    assert resp.status_code == 400, resp.text
    assert datatype in resp.json()["error"] and shown in resp.json()["error"]


def test_integers_inside_the_datatype_are_served(url) -> None:
    resp = v2(url, "UINT8", [1, 2, 255, 0])
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == [2, 4, 510, 0]


def test_a_valid_uint64_extreme_is_served(url) -> None:
    resp = v2(url, "UINT64", [2**64 - 1, 0, 1, 2])
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"][1:] == [0.0, 2.0, 4.0]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_a_float64_past_float32_is_refused_on_every_path(url) -> None:
    """1e39 is finite as sent but infinite as the model's float32: 400/422, never nulls."""
    big = [1e39, 0.0, 0.0, 0.0]
    v1 = httpx.post(url + "/v1/infer", json={"input": big}, timeout=10)
    npy = httpx.post(
        url + "/v1/infer",
        content=_npy(np.array(big)),
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    oip_json = v2(url, "FP64", big)
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64",
                     "parameters": {"binary_data_size": 32}}]}
    ).encode()  # fmt: skip
    oip_binary = httpx.post(
        url + "/v2/models/failing_model/infer",
        content=header + np.array(big, "<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=10,
    )
    for resp, status, key in (
        (v1, 422, "detail"), (npy, 422, "detail"), (oip_json, 400, "error"),
        (oip_binary, 400, "error"),
    ):  # fmt: skip
        assert resp.status_code == status, resp.text
        message = resp.json()[key]
        assert "1e+39" in message and "float32" in message, message
    assert "input 'input'" in oip_json.json()["error"]
    assert "input 'input'" in oip_binary.json()["error"]


def test_a_foreign_host_header_is_refused_with_json(url) -> None:
    resp = httpx.get(url + "/healthz", headers={"Host": "attacker.example"}, timeout=5)
    assert resp.status_code == 400
    assert "attacker.example" in resp.json()["detail"]
    port = url.rsplit(":", 1)[1]
    for name in ("localhost", "127.0.0.1"):
        ok = httpx.get(url + "/healthz", headers={"Host": f"{name}:{port}"}, timeout=5)
        assert ok.status_code == 200, name


def test_allowed_hosts_setting_and_internal_errors_are_json() -> None:
    s = ServeSettings(allowed_hosts="edge.local", baseline_at_start=False)
    app = create_app(s)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, base_url="http://edge.local", raise_server_exceptions=False) as c:
        resp = c.get("/boom")
        assert resp.status_code == 500
        assert resp.json()["error"] == "internal error" and "RuntimeError" in resp.json()["detail"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"host": "127.0.0.1"}).status_code == 400
    anywhere = create_app(ServeSettings(host="0.0.0.0", baseline_at_start=False))
    with TestClient(anywhere, base_url="http://any.name") as c:
        assert c.get("/healthz").status_code == 200
