"""A model repository served by one daemon: Triton's own clients list, call, unload and load
its models over HTTP and gRPC; each model has its queue, batch size and figures."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

tgrpc = pytest.importorskip("tritonclient.grpc")
thttp = pytest.importorskip("tritonclient.http")
pytest.importorskip("onnxruntime")
from test_server_fixtures import FAST, daemon  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from ecoserve.models.repository_export import write_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.torch.jit.* is deprecated:DeprecationWarning")

MODELS = {"a_cnn": ((3, 32, 32), 10), "b_digits": ((1, 8, 8), 10)}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "a_cnn", "cnn", "pytorch", max_batch_size=8)
    write_model(root, "b_digits", "digits-small", "onnxruntime", max_batch_size=16)
    return root


@pytest.fixture(scope="module")
def served(repository: Path):
    with daemon("--model-repository", str(repository), "--grpc-port", "0", *FAST) as d:
        yield d


def _infer_http(client, name: str, n: int = 2):
    shape, _ = MODELS[name]
    data = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
    inp = thttp.InferInput("INPUT__0" if name == "a_cnn" else "input", [n, *shape], "FP32")
    inp.set_data_from_numpy(data)
    return client.infer(name, [inp])


def test_tritons_http_client_lists_calls_unloads_and_loads_each_model(served) -> None:
    client = thttp.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        index = client.get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [
            ("a_cnn", "READY"),
            ("b_digits", "READY"),
        ]
        for name, (_, classes) in MODELS.items():
            result = _infer_http(client, name, n=3)
            assert result.get_response()["model_name"] == name
            assert result.as_numpy("OUTPUT__0" if name == "a_cnn" else "output").shape == (
                3,
                classes,
            )
            config = client.get_model_config(name)
            assert config["name"] == name and config["max_batch_size"] in (8, 16)
        client.unload_model("b_digits")
        assert not client.is_model_ready("b_digits")
        with pytest.raises(InferenceServerException, match="not loaded"):
            _infer_http(client, "b_digits")
        assert _infer_http(client, "a_cnn").as_numpy("OUTPUT__0").shape == (2, 10)  # unaffected
        client.load_model("b_digits")
        assert client.is_model_ready("b_digits")
        assert _infer_http(client, "b_digits").as_numpy("output").shape == (2, 10)
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_model_metadata("nope")
        too_many = np.zeros((9, 3, 32, 32), np.float32)
        inp = thttp.InferInput("INPUT__0", list(too_many.shape), "FP32")
        inp.set_data_from_numpy(too_many)
        with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
            client.infer("a_cnn", [inp])
    finally:
        client.close()


def test_tritons_grpc_client_does_the_same(served) -> None:
    client = tgrpc.InferenceServerClient(served.grpc_address)
    try:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert sorted(m["name"] for m in index) == ["a_cnn", "b_digits"]
        data = np.zeros((2, 1, 8, 8), np.float32)
        inp = tgrpc.InferInput("input", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        assert client.infer("b_digits", [inp]).as_numpy("output").shape == (2, 10)
        client.unload_model("b_digits")
        assert not client.is_model_ready("b_digits")
        client.load_model("b_digits")
        assert client.infer("b_digits", [inp]).as_numpy("output").shape == (2, 10)
    finally:
        client.close()


def test_each_model_has_its_queue_batch_size_and_series(served) -> None:
    body = {"input": np.zeros((1, 8, 8)).tolist()}
    r = httpx.post(served.url + "/v1/infer?model=b_digits", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == "b_digits"
    r = httpx.post(served.url + "/v1/infer", json=body, timeout=30)
    assert r.status_code == 422 and "?model=" in r.json()["detail"]
    status = httpx.get(served.url + "/v1/status", timeout=30).json()
    assert set(status["models"]) == {"a_cnn", "b_digits"}
    assert status["models"]["b_digits"]["max_batch"] == 16
    assert {"batch_size:a_cnn", "batch_size:b_digits"} <= set(status["config"])
    assert status["memory"]["budget_bytes"] > 0
    metrics = httpx.get(served.url + "/metrics", timeout=30).text
    assert 'ecoserve_model_requests_total{model="b_digits",outcome="ok"}' in metrics
    assert 'ecoserve_model_loads_total{model="b_digits"}' in metrics


def test_a_repository_the_daemon_cannot_serve_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_model(tmp_path, "two", "digits-small", "onnxruntime", version=1)
    write_model(tmp_path, "two", "digits-small", "onnxruntime", version=2)
    config = tmp_path / "two" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all: {} }\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--model-repository", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "'two'" in proc.stderr and "one version of each model" in proc.stderr
    assert "Traceback" not in proc.stderr


ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


@pytest.fixture(scope="module")
def shared(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    tenants = tmp_path_factory.mktemp("tenants") / "tenants.toml"
    tenants.write_text(
        f'[tenants.alice]\ntoken = "{ALICE}"\nmodels = ["a_cnn"]\n\n'
        f'[tenants.bob]\ntoken = "{BOB}"\nmodels = ["b_digits"]\nshare = 2.0\nrate_limit = 500\n'
    )
    args = ("--model-repository", str(repository), "--tenants", str(tenants))
    with daemon(*args, "--grpc-port", "0", *FAST) as d:
        yield d


def test_a_tenant_sees_calls_loads_and_unloads_only_its_own_models(shared) -> None:
    url = shared.url.removeprefix("http://")
    anonymous = thttp.InferenceServerClient(url)
    with pytest.raises(InferenceServerException, match="token"):
        anonymous.get_model_repository_index()
    anonymous.close()
    wrong = {"Authorization": "Bearer not-a-tenant-token-at-all"}
    r = httpx.post(shared.url + "/v2/repository/index", headers=wrong, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "not-a-tenant" not in shared.output  # tokens are never logged

    alice = {"Authorization": f"Bearer {ALICE}"}
    client = thttp.InferenceServerClient(url)
    try:
        index = client.get_model_repository_index(headers=alice)
        assert [m["name"] for m in index] == ["a_cnn"]
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_model_metadata("b_digits", headers=alice)  # as if absent
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.unload_model("b_digits", headers=alice)
        data = np.zeros((1, 3, 32, 32), np.float32)
        inp = thttp.InferInput("INPUT__0", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        assert client.infer("a_cnn", [inp], headers=alice).as_numpy("OUTPUT__0").shape == (1, 10)
        client.unload_model("a_cnn", headers=alice)
        client.load_model("a_cnn", headers=alice)
        assert client.is_model_ready("a_cnn", headers=alice)
    finally:
        client.close()

    grpc_client = tgrpc.InferenceServerClient(shared.grpc_address)
    bob = {"authorization": f"Bearer {BOB}"}
    try:
        models = grpc_client.get_model_repository_index(headers=bob, as_json=True)["models"]
        assert [m["name"] for m in models] == ["b_digits"]
        data = np.zeros((2, 1, 8, 8), np.float32)
        inp = tgrpc.InferInput("input", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        assert grpc_client.infer("b_digits", [inp], headers=bob).as_numpy("output").shape == (2, 10)
        with pytest.raises(InferenceServerException, match="unknown model"):
            grpc_client.get_model_metadata("a_cnn", headers=bob)
        with pytest.raises(InferenceServerException, match="token"):
            grpc_client.get_model_repository_index()
    finally:
        grpc_client.close()

    body = {"input": np.zeros((1, 8, 8)).tolist()}
    bob_http = {"Authorization": f"Bearer {BOB}"}
    r = httpx.post(shared.url + "/v1/infer", json=body, headers=bob_http, timeout=30)
    assert r.status_code == 422 and "b_digits" in r.json()["detail"] and "a_cnn" not in r.text
    r = httpx.post(shared.url + "/v1/infer?model=b_digits", json=body, headers=bob_http, timeout=30)
    assert r.status_code == 200
    assert httpx.post(shared.url + "/v1/infer?model=b_digits", json=body).status_code == 401
    for name in ("a_cnn", "zzz"):  # another's model answers as one that does not exist
        r = httpx.post(shared.url + f"/v1/infer?model={name}", json=body, headers=bob_http)
        assert r.status_code == 404 and "a_cnn" not in r.text.replace(f"'{name}'", "")
        assert "you may use b_digits" in r.json()["detail"]
    metrics = httpx.get(shared.url + "/metrics", timeout=30).text
    assert 'ecoserve_tenant_requests_total{outcome="ok",tenant="bob"}' in metrics
    status = httpx.get(shared.url + "/v1/status", timeout=30).json()
    assert set(status["tenants"]["refused"]) == {"alice", "bob"}


def test_a_tenants_file_naming_a_model_not_served_is_refused(repository: Path, tmp_path: Path):
    import subprocess
    import sys

    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.carol]\ntoken = "{ALICE}"\nmodels = ["z_missing"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--model-repository", str(repository),
         "--tenants", str(tenants)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "z_missing" in proc.stderr and "carol" in proc.stderr
    assert ALICE not in proc.stderr and "Traceback" not in proc.stderr


def test_a_restart_resumes_each_models_baseline_from_the_state_file(
    repository: Path, tmp_path: Path
) -> None:
    import json
    import signal

    from test_server_fixtures import Daemon

    state = tmp_path / "state.json"
    args = ("--model-repository", str(repository), "--state-file", str(state), *FAST)
    with daemon(*args) as d:  # ready once the baseline at start measured every model
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.output
    saved = json.loads(state.read_text())
    assert saved["model"] == f"repository:{repository.resolve()}"
    d2 = Daemon(*args, "--no-baseline-at-start").start(ready=False)
    try:
        d2.wait_ready(15)  # ready at once: no baseline to measure again
        status = httpx.get(d2.url + "/v1/status", timeout=30).json()
        assert "baseline" in status["resumed"]
        assert status["windows_closed"] == saved["windows_closed"]
    finally:
        d2.stop()


def test_config_pbtxt_sets_each_models_queue(tmp_path: Path) -> None:
    from ecoserve.core.assembly import EngineSettings, build_space
    from ecoserve.models.repository import RepositoryError, scan_repository
    from ecoserve.server.repository_serving import RepositoryModels
    from ecoserve.server.service import queue_spec

    folder = write_model(tmp_path, "d", "digits-small", "onnxruntime", max_batch_size=16)
    config = folder / "config.pbtxt"
    base = config.read_text()
    config.write_text(
        base + "dynamic_batching { preferred_batch_size: [ 4, 8 ] "
        "max_queue_delay_microseconds: 2000 }\n"
        'parameters { key: "ecoserve_slo_latency_ms" value { string_value: "120" } }\n'
    )
    models = RepositoryModels(scan_repository(tmp_path))
    spec = queue_spec(models.served["d"])
    assert (spec.max_batch, spec.batch_sizes, spec.max_wait_s) == (16, (4, 8), 0.002)
    assert spec.slo_latency_s == pytest.approx(0.12)
    knob = build_space([], EngineSettings(), [spec]).knobs[0]
    assert (knob.name, knob.values) == ("batch_size:d", (4, 8, 16))
    config.write_text(
        base + 'parameters { key: "ecoserve_slo_latency_ms" value { string_value: "soon" } }\n'
    )
    with pytest.raises(RepositoryError, match="ecoserve_slo_latency_ms.*milliseconds"):
        scan_repository(tmp_path)


def test_a_model_larger_than_the_memory_budget_is_refused_at_start(repository: Path) -> None:
    import subprocess
    import sys

    args = ["--model-repository", str(repository), "--memory-budget", "4KiB"]
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'a_cnn'" in proc.stderr and "--memory-budget" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--model-repository", str(repository),
         "--memory-budget", "3G"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "3GiB" in bad.stderr and "Traceback" not in bad.stderr
