"""ONNX models through ONNX Runtime: the built-in CNN exported to ONNX here (nothing is
downloaded), served by a real daemon, answers as torch does, and the protocol's metadata
carries the graph's own input and output names and shapes."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_server_fixtures import FAST, daemon
from torch import nn

from ecoserve.models.builtin import SmallCNN
from ecoserve.models.loader import load_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export writes through it


def export(module: nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool = True) -> Path:
    """``module`` as an ONNX file (the legacy exporter: no extra packages, works offline)."""
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (torch.rand(2, *shape),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(SmallCNN(), tmp_path_factory.mktemp("onnx") / "cnn.onnx", (3, 32, 32))


def test_the_graph_gives_the_contract_and_outputs_equal_torch(cnn_onnx: Path) -> None:
    for spec in (str(cnn_onnx), f"onnx:{cnn_onnx}"):
        model = load_model(spec)
        assert model.input_shape == (3, 32, 32) and model.input_dtype == torch.float32
        assert (model.input_name, model.output_name) == ("images", "logits")
        assert model.platform == "onnxruntime_onnx"
        x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            expected = SmallCNN()(x)
        torch.testing.assert_close(model.batch_fn(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.batch_fn(list(x[:2])), expected[:2], rtol=1e-4, atol=1e-5)


def test_a_model_without_a_dynamic_batch_dimension_is_refused(tmp_path: Path) -> None:
    fixed = export(SmallCNN(), tmp_path / "fixed.onnx", (3, 32, 32), dynamic=False)
    with pytest.raises(ValueError, match="dynamic batch dimension.*dynamic_axes"):
        load_model(str(fixed))


def test_providers_the_build_does_not_offer_are_refused_naming_what_it_offers(
    cnn_onnx: Path,
) -> None:
    assert load_model(str(cnn_onnx), onnx_providers="CPUExecutionProvider").input_shape
    with pytest.raises(
        ValueError, match="NoSuchExecutionProvider not offered.*CPUExecutionProvider"
    ):
        load_model(str(cnn_onnx), onnx_providers="NoSuchExecutionProvider,CPUExecutionProvider")


def test_without_onnxruntime_the_error_names_the_extra(
    cnn_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"ecoserve\[onnx\]"):
        load_model(str(cnn_onnx))


class TwoHeads(nn.Module):
    input_shape = (4,)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + 1


def test_bad_files_and_shapes_are_refused_at_load(cnn_onnx: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        load_model(str(corrupt))
    with pytest.raises(ValueError, match="not found"):
        load_model(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match=r"input_shape \[3, 16, 16\] does not fit"):
        load_model(str(cnn_onnx), input_shape=(3, 16, 16))
    two = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwoHeads(), (torch.rand(2, 4),), str(two), input_names=["x"],
            output_names=["a", "b"], dynamic_axes={"x": {0: "n"}}, dynamo=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"one input and one output.*\['a', 'b'\]"):
        load_model(str(two))


def test_a_daemon_serves_the_onnx_model_as_torch_answers(cnn_onnx: Path) -> None:
    x = np.random.default_rng(0).random((3, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = SmallCNN()(torch.from_numpy(x)).numpy()
    with daemon("--model", str(cnn_onnx), *FAST) as d:
        meta = httpx.get(f"{d.url}/v2/models/cnn", timeout=10).json()
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        config = httpx.get(f"{d.url}/v2/models/cnn/config", timeout=10).json()
        assert config["backend"] == "onnxruntime" and config["output"][0]["dims"] == [10]
        body = {
            "inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "logits"}],
        }  # fmt: skip
        r = httpx.post(f"{d.url}/v2/models/cnn/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "logits" and out["shape"] == [3, 10]
        np.testing.assert_allclose(np.reshape(out["data"], (3, 10)), expected, rtol=1e-4, atol=1e-5)
        v1 = httpx.post(f"{d.url}/v1/infer", json={"inputs": x.tolist()}, timeout=30)
        assert v1.status_code == 200, v1.text
        np.testing.assert_allclose(v1.json()["outputs"], expected, rtol=1e-4, atol=1e-5)
        thttp = pytest.importorskip("tritonclient.http")
        client = thttp.InferenceServerClient(d.url.removeprefix("http://"))
        tensor = thttp.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        answer = client.infer("cnn", [tensor]).as_numpy("logits")
        client.close()
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-5)
        wrong = {**body, "inputs": [{**body["inputs"][0], "name": "input"}]}
        r = httpx.post(f"{d.url}/v2/models/cnn/infer", json=wrong, timeout=30)
        assert r.status_code == 400 and "'images'" in r.json()["error"]


def test_the_daemon_refuses_a_provider_at_start(cnn_onnx: Path) -> None:
    with pytest.raises(RuntimeError, match="not offered by this onnxruntime.*it offers"):
        with daemon("--model", str(cnn_onnx), "--onnx-providers", "TensorrtExecutionProvider"):
            pass
