"""The Open Inference Protocol with the real Triton clients (HTTP, HTTP asyncio, gRPC).

One daemon in a subprocess serves the built-in CNN on HTTP and gRPC. Every datatype is
sent as JSON and as binary tensor data; each answer must equal ``/v1/infer``'s for the
same values. Versioned calls, the model configuration, statistics, repository index and
every kind of wrong name are checked through the clients as a Triton user would make them.
"""

from __future__ import annotations

import asyncio
import zlib

import grpc
import httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from test_server_fixtures import FAST, daemon
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "cnn"
ITEM = (3, 32, 32)
INTEGER_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
NUMPY_TYPES = ["BOOL", *INTEGER_TYPES, "FP16", "FP32", "FP64"]


@pytest.fixture(scope="module")
def served():
    with daemon("--model", "builtin:cnn", "--grpc-port", "0", *FAST) as d:
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


def values_of(datatype: str, n: int = 2, seed: int = 0) -> np.ndarray:
    """n items of the model's shape holding values every datatype can carry exactly."""
    rng = np.random.default_rng(seed)
    shape = (n, *ITEM)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if datatype in INTEGER_TYPES:
        return rng.integers(0, 100, shape).astype(datatype.lower())
    if datatype == "BF16":
        return rng.random(shape).astype(ml_dtypes.bfloat16)
    return rng.random(shape).astype(
        {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
    )


def v1_answer(url: str, x: np.ndarray) -> np.ndarray:
    """What /v1/infer answers for the same values, converted to the model's float32."""
    body = {"inputs": x.astype(np.float32).tolist()}
    r = httpx.post(url + "/v1/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"], dtype=np.float32)


def http_input(datatype: str, x: np.ndarray, binary: bool) -> thttp.InferInput:
    tensor = thttp.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", NUMPY_TYPES)
def test_every_datatype_over_http_equals_v1(served, http_client, datatype, binary) -> None:
    x = values_of(datatype)
    result = http_client.infer(
        MODEL,
        [http_input(datatype, x, binary)],
        outputs=[thttp.InferRequestedOutput("output", binary_data=binary)],
    )
    out = result.as_numpy("output")
    assert out.shape == (2, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, v1_answer(served.url, x), rtol=1e-5, atol=1e-6)
    described = result.get_response()["outputs"][0]
    assert ("binary_data_size" in (described.get("parameters") or {})) == binary


def test_bf16_over_http_binary_and_json(served, http_client) -> None:
    x = values_of("BF16")
    expected = v1_answer(served.url, x)
    out = http_client.infer(MODEL, [http_input("BF16", x, True)]).as_numpy("output")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # The Triton client sends BF16 only as bytes; JSON values are the protocol's other form.
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "BF16",
                "data": x.astype(np.float32).reshape(-1).tolist(),
            }
        ]
    }
    r = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 10), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("datatype", [*NUMPY_TYPES, "BF16"])
def test_every_datatype_over_grpc_equals_v1(served, grpc_client, datatype) -> None:
    x = values_of(datatype, seed=1)
    tensor = tgrpc.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    out = grpc_client.infer(MODEL, [tensor]).as_numpy("output")
    np.testing.assert_allclose(out, v1_answer(served.url, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("datatype", [t for t in NUMPY_TYPES if t != "FP16"])
def test_grpc_typed_contents_equal_v1(served, datatype) -> None:
    """Inputs in the message's typed contents (not raw bytes), as other gRPC clients send."""
    from ecoserve.server.grpc_oip import CONTENTS_FIELDS

    x = values_of(datatype, seed=2)
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(served.grpc_address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert reply.id == "typed" and reply.outputs[0].datatype == "FP32"
    out = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(out, v1_answer(served.url, x), rtol=1e-5, atol=1e-6)


def test_asyncio_client_concurrent_requests(served) -> None:
    async def run() -> list[np.ndarray]:
        client = thttp_aio.InferenceServerClient(served.url.removeprefix("http://"))
        try:
            calls = []
            for seed in range(16):
                x = values_of("FP32", n=1, seed=seed)
                calls.append(client.infer(MODEL, [http_input("FP32", x, True)]))
            return [r.as_numpy("output") for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    outs = asyncio.run(run())
    for seed, out in enumerate(outs):
        expected = v1_answer(served.url, values_of("FP32", n=1, seed=seed))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_versioned_calls_and_metadata_shapes(http_client, grpc_client) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready(MODEL, "1") and http_client.is_model_ready(MODEL)
    assert not http_client.is_model_ready(MODEL, "2")
    assert grpc_client.is_model_ready(MODEL, "1") and not grpc_client.is_model_ready(MODEL, "2")
    meta = http_client.get_model_metadata(MODEL, "1")
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *ITEM]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    grpc_meta = grpc_client.get_model_metadata(MODEL, "1", as_json=True)
    assert [int(d) for d in grpc_meta["outputs"][0]["shape"]] == [-1, 10]
    x = values_of("FP32", n=1)
    out = http_client.infer(MODEL, [http_input("FP32", x, True)], model_version="1")
    assert out.get_response()["model_version"] == "1"
    server = http_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"] and "statistics" in server["extensions"]


def test_model_config_statistics_and_repository_index(http_client, grpc_client) -> None:
    config = http_client.get_model_config(MODEL)
    assert config["max_batch_size"] >= 1
    assert config["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": list(ITEM)}
    assert config["output"][0]["dims"] == [10]
    grpc_config = grpc_client.get_model_config(MODEL, as_json=True)["config"]
    assert grpc_config["input"][0]["data_type"] == "TYPE_FP32"
    before = http_client.get_inference_statistics(MODEL)["model_stats"][0]
    for seed in range(3):
        http_client.infer(MODEL, [http_input("FP32", values_of("FP32", n=1, seed=seed), True)])
    after = http_client.get_inference_statistics(MODEL, "1")["model_stats"][0]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] == old["success"]["count"] + 3
    assert stats["success"]["ns"] > old["success"]["ns"]
    assert after["inference_count"] >= before["inference_count"] + 3
    assert stats["queue"]["count"] >= old["queue"]["count"] + 3
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert (
        sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    )
    grpc_stats = grpc_client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert int(grpc_stats["inference_count"]) >= after["inference_count"]
    assert http_client.get_model_repository_index() == [
        {"name": MODEL, "version": "1", "state": "READY"}
    ]
    with pytest.raises(InferenceServerException, match="serves the one model"):
        http_client.load_model("other")


def test_wrong_names_are_named_in_the_error(http_client, grpc_client) -> None:
    x = values_of("FP32", n=1)
    cases = [
        (lambda: http_client.infer("nope", [http_input("FP32", x, True)]), "404", "'nope' is not found"),
        (lambda: http_client.infer(MODEL, [http_input("FP32", x, True)], model_version="7"), "404", "'cnn' version 7 is not found"),
        (lambda: http_client.get_model_config(MODEL, "7"), "404", "'cnn' version 7 is not found"),
        (lambda: http_client.infer(MODEL, [thttp.InferInput("pixels", list(x.shape), "FP32").set_data_from_numpy(x)]),
         "400", "unknown input 'pixels'"),
        (lambda: http_client.infer(MODEL, [http_input("FP32", x, True)], outputs=[thttp.InferRequestedOutput("logits")]),
         "400", "unknown output(s) ['logits']"),
        (lambda: http_client.infer(MODEL, [http_input("FP32", x[:, :2], True)]), "400", "shape"),
    ]  # fmt: skip
    for call, status, text in cases:
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == status and text in err.value.message(), err.value
    tensor = tgrpc.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer(MODEL, [tensor])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unknown input 'pixels'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_protocol_errors_are_json_with_an_error_key(served) -> None:
    base = f"{served.url}/v2"
    assert httpx.get(base + "/no/such/path").json() == {"error": "Not Found"}
    error = httpx.get(base + "/models/nope/ready").json()["error"]
    assert error.startswith("Request for unknown model: 'nope'")
    r = httpx.post(
        base + f"/models/{MODEL}/infer",
        json={"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["cat"]}]},
    )
    assert r.status_code == 400 and "BYTES" in r.json()["error"]
    r = httpx.post(
        base + f"/models/{MODEL}/infer",
        content=b'{"inputs": []}xxxx',
        headers={"Inference-Header-Content-Length": "14"},
    )
    assert r.status_code == 400 and "non-empty" in r.json()["error"]
    header = b'{"inputs":[{"name":"input","shape":[1,3,32,32],"datatype":"FP32","parameters":{"binary_data_size":99}}]}'
    r = httpx.post(
        base + f"/models/{MODEL}/infer",
        content=header + b"\0" * 99,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "needs 12288" in r.json()["error"]
    bomb = zlib.compress(b"0" * (9 * 1024 * 1024))  # inflates past --max-body-bytes (8 MiB)
    r = httpx.post(
        base + f"/models/{MODEL}/infer", content=bomb, headers={"Content-Encoding": "deflate"}
    )
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    r = httpx.post(
        base + f"/models/{MODEL}/infer", content=b"xx", headers={"Content-Encoding": "br"}
    )
    assert r.status_code == 400 and "gzip or deflate" in r.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(served, http_client, algorithm) -> None:
    x = values_of("FP32", n=3, seed=5)
    result = http_client.infer(
        MODEL, [http_input("FP32", x, True)], request_compression_algorithm=algorithm
    )
    np.testing.assert_allclose(
        result.as_numpy("output"), v1_answer(served.url, x), rtol=1e-5, atol=1e-6
    )


def test_parameters_pass_through_and_timeout(served, http_client) -> None:
    x = values_of("FP32", n=1)
    result = http_client.infer(
        MODEL, [http_input("FP32", x, False)], parameters={"trace_tag": "abc", "n": 3}
    )
    assert result.get_response()["parameters"] == {"trace_tag": "abc", "n": 3}
    body = {
        "parameters": {"timeout": -5},
        "inputs": [
            {
                "name": "input",
                "shape": [1, *ITEM],
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
    }
    r = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 400 and "timeout" in r.json()["error"]


def test_v2_requests_are_in_the_request_metrics(served, http_client, grpc_client) -> None:
    def count() -> float:
        text = httpx.get(served.url + "/metrics").text
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("ecoserve_request_duration_seconds_count")
        )
        return float(line.split()[-1])

    before = count()
    x = values_of("FP32", n=1)
    http_client.infer(MODEL, [http_input("FP32", x, True)])
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    grpc_client.infer(MODEL, [tensor])
    assert count() == before + 2
