"""Triton's rules, checked with the real Triton clients over HTTP and gRPC.

A client written against Triton must get the same refusals here as there: the batch
dimension first and at most ``max_batch_size`` items, only the names the repository index
lists, readiness as the protocol's status codes, and repository control refused alike over
both transports. Messages follow Triton's wording so that code matching on them works.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from test_server_fixtures import FAST, daemon
from tritonclient.utils import InferenceServerException

MODEL = "cnn"
SPEC = "builtin:cnn"
ITEM = (3, 32, 32)
MAX_BATCH = 16


@pytest.fixture(scope="module")
def served():
    with daemon("--model", SPEC, "--max-batch", str(MAX_BATCH), "--grpc-port", "0", *FAST) as d:
        yield d


@pytest.fixture(scope="module")
def http_client(served):
    client = thttp.InferenceServerClient(served.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(served):
    client = tgrpc.InferenceServerClient(served.grpc_address)
    yield client
    client.close()


def items(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).random(shape).astype(np.float32)


def http_infer(client: thttp.InferenceServerClient, x: np.ndarray, model: str = MODEL):
    tensor = thttp.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def grpc_infer(client: tgrpc.InferenceServerClient, x: np.ndarray, model: str = MODEL):
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def refusal(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_max_batch_size_is_enforced_as_triton_does(http_client, grpc_client) -> None:
    assert http_client.get_model_config(MODEL)["max_batch_size"] == MAX_BATCH
    assert grpc_client.get_model_config(MODEL).config.max_batch_size == MAX_BATCH
    full = items(MAX_BATCH, *ITEM)
    assert http_infer(http_client, full).as_numpy("output").shape == (MAX_BATCH, 10)
    assert grpc_infer(grpc_client, full).as_numpy("output").shape == (MAX_BATCH, 10)
    over = items(MAX_BATCH + 1, *ITEM)
    expected = f"inference request batch-size must be <= {MAX_BATCH} for '{MODEL}'"
    err = refusal(lambda: http_infer(http_client, over))
    assert err.status() == "400" and expected in err.message(), err
    err = refusal(lambda: grpc_infer(grpc_client, over))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and expected in err.message(), err


def test_an_item_without_its_batch_dimension_is_refused(served, http_client, grpc_client) -> None:
    one = items(*ITEM)  # (3, 32, 32): Triton reads 3 as the batch and [32, 32] as the item
    expected = (
        f"unexpected shape for input 'input' for model '{MODEL}'. "
        "Expected [-1,3,32,32], got [3,32,32]"
    )
    err = refusal(lambda: http_infer(http_client, one))
    assert err.status() == "400" and expected in err.message(), err
    err = refusal(lambda: grpc_infer(grpc_client, one))
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and expected in err.message(), err
    # With its batch dimension the same item is served, one row per item.
    assert http_infer(http_client, one[None]).as_numpy("output").shape == (1, 10)
    assert grpc_infer(grpc_client, one[None]).as_numpy("output").shape == (1, 10)
    body = {"inputs": [{"name": "input", "shape": [], "datatype": "FP32", "data": [1.0]}]}
    r = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 400 and "requires batch dimension" in r.json()["error"]


@pytest.mark.parametrize("action", ["load", "unload"])
def test_repository_control_is_refused_alike_over_http_and_grpc(
    http_client, grpc_client, action
) -> None:
    over_http = refusal(lambda: getattr(http_client, f"{action}_model")(MODEL))
    over_grpc = refusal(lambda: getattr(grpc_client, f"{action}_model")(MODEL))
    assert over_http.status() == "400"
    assert over_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"cannot {action} '{MODEL}'" in over_http.message()
    assert over_grpc.message() == over_http.message()
    assert http_client.is_model_ready(MODEL) and grpc_client.is_model_ready(MODEL)


def test_only_names_the_repository_index_lists_are_answered(
    served, http_client, grpc_client
) -> None:
    assert [m["name"] for m in http_client.get_model_repository_index()] == [MODEL]
    assert [m.name for m in grpc_client.get_model_repository_index().models] == [MODEL]
    x = items(1, *ITEM)
    expected = f"Request for unknown model: '{SPEC}' is not found"
    for call in (
        lambda: http_client.get_model_metadata(SPEC),
        lambda: http_client.get_model_config(SPEC),
        lambda: http_infer(http_client, x, SPEC),
    ):
        err = refusal(call)
        assert err.status() == "404" and expected in err.message(), err
    for call in (
        lambda: grpc_client.get_model_metadata(SPEC),
        lambda: grpc_client.get_model_config(SPEC),
        lambda: grpc_infer(grpc_client, x, SPEC),
    ):
        err = refusal(call)
        assert err.status() == "StatusCode.NOT_FOUND" and expected in err.message(), err
    assert not http_client.is_model_ready(SPEC) and not grpc_client.is_model_ready(SPEC)
    r = httpx.get(f"{served.url}/v2/models/{SPEC}")
    assert r.status_code == 404 and r.json()["error"].startswith(expected)
    err = refusal(lambda: http_client.get_model_metadata(MODEL, "2"))
    assert err.status() == "404"
    assert f"Request for unknown model: '{MODEL}' version 2 is not found" in err.message()


def test_not_ready_is_a_4xx_on_v2_and_503_on_readyz() -> None:
    # Without a warm-up the baseline waits for traffic, so the daemon stays not ready.
    env = {"ECOSERVE_WARMUP_AT_START": "false", "ECOSERVE_WINDOW_SECONDS": "600"}
    with daemon("--model", SPEC, "--grpc-port", "0", *FAST, ready=False, env=env) as d:
        assert httpx.get(d.url + "/readyz").status_code == 503
        r = httpx.get(d.url + "/v2/health/ready")
        assert r.status_code == 400 and r.json() == {"ready": False}
        r = httpx.get(f"{d.url}/v2/models/{MODEL}/ready")
        assert r.status_code == 400 and r.json() == {"name": MODEL, "ready": False}
        http_client = thttp.InferenceServerClient(d.url.removeprefix("http://"))
        grpc_client = tgrpc.InferenceServerClient(d.grpc_address)
        try:
            assert http_client.is_server_live() and not http_client.is_server_ready()
            assert not http_client.is_model_ready(MODEL)
            assert grpc_client.is_server_live() and not grpc_client.is_server_ready()
            assert not grpc_client.is_model_ready(MODEL)
        finally:
            http_client.close()
            grpc_client.close()


def test_grpc_load_is_no_longer_unimplemented(served) -> None:
    """The raw stub too: a refusal with a reason, never UNIMPLEMENTED."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(served.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot load 'x'" in (err.value.details() or "")
