"""Triton-layout model repositories: TorchScript, ONNX and Python entry-point models built here
(nothing downloaded), every version policy, and every refusal naming the model and the field."""

from __future__ import annotations

import re
import shutil
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ecoserve.models.repository import (
    RepositoryError,
    load_version,
    scan_repository,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export writes through it
pytest.importorskip("tritonclient.grpc")
# torch 2.x deprecates TorchScript, which is what Triton's pytorch backend serves.
pytestmark = pytest.mark.filterwarnings("ignore:.torch.jit.* is deprecated:DeprecationWarning")


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3).eval()


def export_onnx(path: Path, dynamic: bool) -> Path:
    """The linear layer as ONNX (the legacy exporter: no extra packages, works offline)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            linear(), (torch.rand(1, 4),), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None,
            dynamo=False,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files built once: TorchScript, batched and fixed-batch ONNX, and a corrupt file."""
    folder = tmp_path_factory.mktemp("files")
    torch.jit.save(torch.jit.script(linear()), str(folder / "model.pt"))
    corrupt = folder / "corrupt"
    corrupt.write_bytes(b"not a model at all")
    return {
        "pt": folder / "model.pt",
        "onnx": export_onnx(folder / "model.onnx", dynamic=True),
        "onnx_fixed": export_onnx(folder / "fixed.onnx", dynamic=False),
        "corrupt": corrupt,
    }


HELPERS = """
import torch
from torch import nn


def double(batch):
    if isinstance(batch, list):
        batch = torch.stack(batch)
    return batch * 2


class Halve(nn.Module):
    def forward(self, x):
        return x / 2


def tuple_out(batch):
    return (batch, batch)


def per_item(batch):
    return [x * 3 for x in batch]


def no_tensor(batch):
    return ["seven" for _ in batch]


not_callable = 3
"""


@pytest.fixture
def helpers(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A helper module the python-backend models point at; its (unique) module name."""
    name = f"repo_helpers_{uuid.uuid4().hex}"  # a fresh module: nothing cached from another test
    folder = tmp_path_factory.mktemp("helpers")  # outside the repository under tmp_path
    (folder / f"{name}.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(folder))
    return name


TS = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
ONNX = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def python_config(entry_point: str) -> str:
    return f"""
backend: "python"
max_batch_size: 4
input [ {{ name: "in" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "out" data_type: TYPE_FP32 dims: [ 4 ] }} ]
parameters {{ key: "entry_point" value {{ string_value: "{entry_point}" }} }}
"""


def add_model(
    root: Path,
    name: str,
    config: str | None,
    versions: tuple[int | str, ...] = (1,),
    file: Path | None = None,
    filename: str = "model.pt",
) -> Path:
    """``root/name/config.pbtxt`` and a version directory per version, each with ``file``."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    for version in versions:
        (model_dir / str(version)).mkdir()
        if file is not None:
            shutil.copy(file, model_dir / str(version) / filename)
    return model_dir


def refused(root: Path, model: str, field: str, match: str = "") -> RepositoryError:
    """Scanning ``root`` refuses ``model``, naming it and ``field`` in the message."""
    with pytest.raises(RepositoryError) as info:
        scan_repository(root)
    message = str(info.value)
    assert f"model {model!r}" in message, message
    assert field in message, message
    assert info.value.model == model and info.value.field == field, message
    if match:
        assert match in message, message
    return info.value


def test_a_torchscript_model_loads_with_its_contract(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    add_model(tmp_path, "lin", TS, versions=(1, 2, 3), file=files["pt"])
    (config,) = scan_repository(tmp_path)
    assert (config.name, config.backend, config.platform) == ("lin", "pytorch", "pytorch_libtorch")
    assert config.versions == (3,) and config.max_batch_size == 8 and config.batch_bound == 8
    assert (config.input.name, config.input.datatype, config.input.dims) == (
        "INPUT__0",
        "FP32",
        (4,),
    )
    assert config.output.dims == (3,) and config.instance_kind == "KIND_AUTO"
    assert config.path == tmp_path / "lin" and not config.dynamic_batching
    model = load_version(config, 3)
    assert model.name == "lin" and model.input_shape == (4,)
    assert (model.input_name, model.output_name, model.platform) == (
        "INPUT__0",
        "OUTPUT__0",
        "pytorch_libtorch",
    )
    x = torch.rand(5, 4)
    with torch.inference_mode():
        expected = linear()(x)
    torch.testing.assert_close(model.batch_fn(x), expected)
    torch.testing.assert_close(model.batch_fn(list(x[:2])), expected[:2])
    with pytest.raises(RepositoryError, match=r"model 'lin' version 1 is not served.*\[3\]"):
        load_version(config, 1)


@pytest.mark.parametrize(
    ("policy", "chosen"),
    [
        ("", (1, 2, 3)),
        ("version_policy: { latest { num_versions: 1 } }", (3,)),
        ("version_policy: { latest { num_versions: 2 } }", (2, 3)),
        ("version_policy: { latest { num_versions: 9 } }", (1, 2, 3)),
        ("version_policy: { all { } }", (1, 2, 3)),
        ("version_policy: { specific { versions: [ 3, 1, 1 ] } }", (1, 3)),
    ],
)
def test_each_version_policy_picks_its_versions(
    tmp_path: Path, files: dict[str, Path], policy: str, chosen: tuple[int, ...]
) -> None:
    model_dir = add_model(tmp_path, "lin", TS + policy, versions=(1, 2, 3), file=files["pt"])
    if not policy:  # the default serves the latest only
        chosen = (3,)
    # Triton ignores directories that are not integers or start with zero, and plain files.
    (model_dir / "04").mkdir()
    (model_dir / "labels").mkdir()
    (model_dir / "7").write_text("a file, not a version")
    (config,) = scan_repository(tmp_path)
    assert config.versions == chosen
    assert [load_version(config, v).input_shape for v in chosen] == [(4,)] * len(chosen)


def test_a_version_the_policy_names_must_exist(tmp_path: Path, files: dict[str, Path]) -> None:
    policy = "version_policy: { specific { versions: [ 2, 5 ] } }"
    add_model(tmp_path, "lin", TS + policy, versions=(1, 2), file=files["pt"])
    refused(tmp_path, "lin", "version_policy.specific.versions", "[5]")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", TS + "version_policy: { latest { } }", file=files["pt"])
    refused(tmp_path, "lin", "version_policy.latest.num_versions", "at least 1")


def test_an_onnx_model_loads_and_answers_as_torch(tmp_path: Path, files: dict[str, Path]) -> None:
    add_model(tmp_path, "lin_onnx", ONNX, file=files["onnx"], filename="model.onnx")
    add_model(tmp_path, "cpu_onnx", ONNX + 'instance_group [ { kind: KIND_CPU count: 1 } ]',
              file=files["onnx"], filename="model.onnx")  # fmt: skip
    cpu, config = scan_repository(tmp_path)
    assert (config.name, config.platform, cpu.instance_kind) == (
        "lin_onnx",
        "onnxruntime_onnx",
        "KIND_CPU",
    )
    model = load_version(config, 1, onnx_providers="CPUExecutionProvider")
    assert (model.input_name, model.output_name, model.input_shape) == ("x", "y", (4,))
    x = torch.rand(3, 4)
    with torch.inference_mode():
        expected = linear()(x)
    torch.testing.assert_close(model.batch_fn(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        (('name: "x"', 'name: "images"'), "input[0].name", "graph's input is 'x'"),
        (('name: "y"', 'name: "OUTPUT__0"'), "output[0].name", "graph's output is 'y'"),
        (("TYPE_FP32 dims: [ 4 ]", "TYPE_FP64 dims: [ 4 ]"), "input[0].data_type", "FP32"),
        (("dims: [ 4 ]", "dims: [ 5 ]"), "input[0].dims", "item dims [4]"),
        (("dims: [ 4 ]", "dims: [ 2, 2 ]"), "input[0].dims", "[2, 2] does not fit"),
        (("dims: [ 3 ]", "dims: [ 6 ]"), "output[0].dims", "comes out as [3]"),
        (("TYPE_FP32 dims: [ 3 ]", "TYPE_INT64 dims: [ 3 ]"), "output[0].data_type", "FP32"),
        (("max_batch_size: 8", "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]"),
         "instance_group[0].kind", "GPU execution provider"),
    ],
)  # fmt: skip
def test_an_onnx_config_must_agree_with_its_graph(
    tmp_path: Path, files: dict[str, Path], change: tuple[str, str], field: str, match: str
) -> None:
    add_model(tmp_path, "lin", ONNX.replace(*change), file=files["onnx"], filename="model.onnx")
    refused(tmp_path, "lin", field, match)


def test_python_entry_points_serve_functions_and_modules(tmp_path: Path, helpers: str) -> None:
    add_model(tmp_path, "double", python_config(f"{helpers}:double"), versions=(1, 2))
    add_model(tmp_path, "halve", python_config(f"{helpers}:Halve"))
    add_model(tmp_path, "per_item", python_config(f"{helpers}:per_item"))
    double, halve, per_item = scan_repository(tmp_path)
    assert (double.backend, double.platform, double.versions) == ("python", "python", (2,))
    assert double.entry_point == f"{helpers}:double" and double.model_path(2) is None
    item = torch.ones(4)
    model = load_version(double, 2)
    assert model.module is None and model.input_name == "in"
    torch.testing.assert_close(model.batch_fn([item, item]), torch.full((2, 4), 2.0))
    model = load_version(halve, 1)
    assert isinstance(model.module, nn.Module)
    torch.testing.assert_close(model.batch_fn([item]), torch.full((1, 4), 0.5))
    (result,) = load_version(per_item, 1).batch_fn([item])  # one result per item, as a list
    torch.testing.assert_close(result, torch.full((4,), 3.0))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("{h}:missing", "has no attribute"),
        ("no_such_module_here:f", "cannot import"),
        ("{h}:not_callable", "neither an nn.Module nor a callable"),
        ("{h}:tuple_out", "returns 2 results for a batch of 1"),
        ("{h}:no_tensor", "result is str, not a tensor"),
        ("nocolon", "package.module:callable"),
    ],
)
def test_a_bad_entry_point_is_refused(tmp_path: Path, helpers: str, entry: str, match: str) -> None:
    add_model(tmp_path, "py", python_config(entry.format(h=helpers)))
    field = "output[0]" if entry.endswith("_out") or "tensor" in entry else "parameters.entry_point"
    refused(tmp_path, "py", field, match)


def test_max_batch_size_0_serves_one_whole_item(tmp_path: Path, files: dict[str, Path]) -> None:
    unbatched = (
        TS.replace("max_batch_size: 8", "max_batch_size: 0")
        .replace("dims: [ 4 ]", "dims: [ 2, 4 ]")
        .replace("dims: [ 3 ]", "dims: [ 2, 3 ]")
    )
    add_model(tmp_path, "ts", unbatched, file=files["pt"])
    fixed = (
        ONNX.replace("max_batch_size: 8", "max_batch_size: 0")
        .replace("dims: [ 4 ]", "dims: [ 1, 4 ]")
        .replace("dims: [ 3 ]", "dims: [ 1, 3 ]")
    )
    add_model(tmp_path, "onnx", fixed, file=files["onnx_fixed"], filename="model.onnx")
    onnx, ts = scan_repository(tmp_path)
    assert ts.max_batch_size == 0 and ts.batch_bound == 1 and ts.input.dims == (2, 4)
    model = load_version(ts, 1)
    assert model.input_shape == (2, 4)
    item = torch.rand(2, 4)
    with torch.inference_mode():
        expected = linear()(item)
    torch.testing.assert_close(model.batch_fn([item]), expected.unsqueeze(0))
    torch.testing.assert_close(model.batch_fn(item.unsqueeze(0)), expected.unsqueeze(0))
    with pytest.raises(ValueError, match="one item at a time"):
        model.batch_fn([item, item])
    model = load_version(onnx, 1)
    assert model.input_shape == (1, 4) and model.batch_fn([torch.ones(1, 4)]).shape == (1, 1, 3)


def test_dynamic_batching_gives_preferred_sizes_and_the_delay_in_seconds(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    batching = (
        "dynamic_batching { preferred_batch_size: [ 8, 2, 4 ] max_queue_delay_microseconds: 2500 }"
    )
    add_model(tmp_path, "lin", TS + batching, file=files["pt"])
    (config,) = scan_repository(tmp_path)
    assert config.dynamic_batching and config.preferred_batch_sizes == (2, 4, 8)
    assert config.max_queue_delay_s == pytest.approx(0.0025)


@pytest.mark.parametrize(
    ("extra", "field", "match"),
    [
        ("sequence_batching { }", "sequence_batching", "stateless"),
        ('ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }',
         "ensemble_scheduling", "serve each step"),
        ('model_warmup [ { name: "w" batch_size: 1 } ]', "model_warmup", "zero item"),
        ("optimization { priority: PRIORITY_MAX }", "optimization", "as exported"),
        ("response_cache { enable: true }", "response_cache", "supported here: backend"),
        ('runtime: "libtorch.so"', "runtime", "supported here"),
        ("instance_group [ { kind: KIND_CPU count: 2 } ]", "instance_group[0].count", "count 1"),
        ("instance_group [ { count: 1 }, { count: 1 } ]", "instance_group", "2 groups"),
        ("instance_group [ { kind: KIND_GPU } ]", "instance_group[0].kind", "on the CPU"),
        ("instance_group [ { kind: KIND_MODEL } ]", "instance_group[0].kind", "KIND_MODEL"),
        ("instance_group [ { gpus: [ 0 ] } ]", "instance_group[0].gpus", "count, kind, name"),
        ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels", ""),
        ("dynamic_batching { preferred_batch_size: [ 16 ] }",
         "dynamic_batching.preferred_batch_size", "[16] outside 1..max_batch_size (8)"),
        ('parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value { string_value: "true" } }',
         "parameters", "DISABLE_OPTIMIZED_EXECUTION"),
        ('name: "other"', "name", "directory is 'lin'"),
        ('backend: "onnxruntime"', "backend", "contradicts platform"),
        ('default_model_filename: "../model.pt"', "default_model_filename", "plain file name"),
    ],
)  # fmt: skip
def test_fields_ecoserve_does_not_honour_are_refused_by_name(
    tmp_path: Path, files: dict[str, Path], extra: str, field: str, match: str
) -> None:
    add_model(tmp_path, "lin", TS + extra, file=files["pt"])
    refused(tmp_path, "lin", field, match)


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        (('platform: "pytorch_libtorch"', 'platform: "tensorrt_plan"'), "platform",
         "'tensorrt_plan' is not served"),
        (('platform: "pytorch_libtorch"', 'backend: "openvino"'), "backend", "pytorch, onnxruntime"),
        (('platform: "pytorch_libtorch"', ""), "platform", "neither platform nor backend"),
        (("max_batch_size: 8", "max_batch_size: -1"), "max_batch_size", "0 (no batching)"),
        (("dims: [ 4 ] }", 'dims: [ 4 ] }, { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 4 ] }'),
         "input", "declares 2 (['INPUT__0', 'INPUT__1']); ecoserve serves models with exactly one"),
        (("output [ { name: \"OUTPUT__0\" data_type: TYPE_FP32 dims: [ 3 ] } ]", ""), "output",
         "declares 0"),
        (("TYPE_FP32 dims: [ 4 ]", "TYPE_STRING dims: [ 4 ]"), "input[0].data_type",
         "TYPE_STRING is not served; use one of TYPE_BOOL"),
        (("TYPE_FP32 dims: [ 3 ]", "TYPE_UINT16 dims: [ 3 ]"), "output[0].data_type", "TYPE_UINT16"),
        (("data_type: TYPE_FP32 dims: [ 4 ]", "dims: [ 4 ]"), "input[0].data_type", "is not set"),
        (("dims: [ 4 ]", "dims: [ -1 ]"), "input[0].dims", "variable (-1)"),
        (("dims: [ 4 ]", "dims: [ 4 ] reshape { shape: [ 2, 2 ] }"), "input[0].reshape",
         "export the model"),
        (("dims: [ 3 ]", "dims: [ 3 ] label_filename: \"l.txt\""), "output[0].label_filename", ""),
        (("dims: [ 3 ]", "dims: [ 0 ]"), "output[0].dims", "each dim is >= 1 or -1"),
        (("dims: [ 4 ]", "dims: [ ]"), "input[0].dims", "is empty"),
        (("max_batch_size: 8", "max_batch_size: 0\ndynamic_batching { }"), "dynamic_batching",
         "needs max_batch_size >= 1"),
    ],
)  # fmt: skip
def test_configs_ecoserve_cannot_serve_are_refused(
    tmp_path: Path, files: dict[str, Path], change: tuple[str, str], field: str, match: str
) -> None:
    assert change[0] in TS
    add_model(tmp_path, "lin", TS.replace(*change), file=files["pt"])
    refused(tmp_path, "lin", field, match)


def test_files_that_do_not_fit_are_refused_at_scan(tmp_path: Path, files: dict[str, Path]) -> None:
    add_model(tmp_path, "lin", None, file=files["pt"])
    refused(tmp_path, "lin", "config.pbtxt", "not found")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", TS + "\nmax_batch_size: {", file=files["pt"])
    error = refused(tmp_path, "lin", "config.pbtxt", "is not a valid model configuration")
    assert str(tmp_path / "lin" / "config.pbtxt") in str(error)
    assert re.search(r"config.pbtxt is not a valid model configuration: \d+:\d+ : ", str(error))
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", TS, versions=())
    refused(tmp_path, "lin", "version", "has no version directory")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", TS, versions=(1, 2))
    refused(tmp_path, "lin", "2/model.pt", "version 2 has no model.pt")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", TS, file=files["corrupt"])
    refused(tmp_path, "lin", "1/model.pt", "not a loadable TorchScript archive")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", ONNX, file=files["corrupt"], filename="model.onnx")
    refused(tmp_path, "lin", "1/model.onnx", "not a loadable ONNX model")
    shutil.rmtree(tmp_path / "lin")
    add_model(tmp_path, "lin", ONNX, file=files["onnx_fixed"], filename="model.onnx")
    refused(tmp_path, "lin", "1/model.onnx", "dynamic batch dimension")


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        (("dims: [ 4 ]", "dims: [ 5 ]"), "input[0].dims", "one zero item of dims [5] (FP32) fails"),
        (("dims: [ 3 ]", "dims: [ 3, 1 ]"), "output[0].dims", "comes out as [3]"),
        (("TYPE_FP32 dims: [ 3 ]", "TYPE_FP16 dims: [ 3 ]"), "output[0].data_type",
         "returns FP32"),
        (("TYPE_FP32 dims: [ 4 ]", "TYPE_INT32 dims: [ 4 ]"), "input[0].dims", "(INT32) fails"),
    ],
)  # fmt: skip
def test_a_torchscript_model_is_run_once_against_its_declared_dims(
    tmp_path: Path, files: dict[str, Path], change: tuple[str, str], field: str, match: str
) -> None:
    add_model(tmp_path, "lin", TS.replace(*change), file=files["pt"])
    refused(tmp_path, "lin", field, match)


def test_without_verify_files_are_checked_at_load(tmp_path: Path, files: dict[str, Path]) -> None:
    add_model(tmp_path, "lin", TS.replace("dims: [ 3 ]", "dims: [ -1 ]"), file=files["corrupt"])
    (config,) = scan_repository(tmp_path, verify=False)
    with pytest.raises(RepositoryError, match="model 'lin' version 1.*not a loadable"):
        load_version(config, 1)
    shutil.copy(files["pt"], tmp_path / "lin" / "1" / "model.pt")
    assert load_version(config, 1).batch_fn(torch.ones(2, 4)).shape == (2, 3)  # -1 fits any


def test_the_scan_reports_every_refused_model_and_duplicates_across_repositories(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    add_model(first, "good", TS, file=files["pt"])
    add_model(first, "no_config", None)
    add_model(first, "bad_type", TS.replace("TYPE_FP32", "TYPE_STRING", 1), file=files["pt"])
    (first / ".hidden").mkdir()
    (first / "README.md").write_text("not a model")
    add_model(second, "good", TS, file=files["pt"])
    with pytest.raises(RepositoryError) as info:
        scan_repository([first, second])
    error = info.value
    assert "refused 3 models" in str(error)
    assert [(p.model, p.field) for p in error.problems] == [
        ("bad_type", "input[0].data_type"),
        ("no_config", "config.pbtxt"),
        ("good", "name"),
    ]
    assert str(first / "good") in str(error) and str(second / "good") in str(error)


def test_a_missing_or_empty_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="is not a directory"):
        scan_repository(tmp_path / "nowhere")
    with pytest.raises(RepositoryError, match="holds no model.*config.pbtxt"):
        scan_repository(tmp_path)
    with pytest.raises(RepositoryError, match="no model repository given"):
        scan_repository([])


def test_the_effective_config_answers_as_triton_does(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    batching = "dynamic_batching { max_queue_delay_microseconds: 100 }"
    add_model(tmp_path, "lin", TS + batching, versions=(1, 2), file=files["pt"])
    add_model(tmp_path, "py", python_config("pkg:fn"), versions=(1,))
    lin, py = scan_repository(tmp_path, verify=False)
    assert lin.to_json() == {
        "name": "lin",
        "platform": "pytorch_libtorch",
        "backend": "pytorch",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
    }
    message = lin.to_protobuf()
    assert message.name == "lin" and list(message.input[0].dims) == [4]
    message.name = "changed"  # a copy: the config itself stays as it was
    assert lin.to_protobuf().name == "lin"
    assert py.to_json()["parameters"] == {"entry_point": {"string_value": "pkg:fn"}}
    assert "platform" not in py.to_json() and py.to_json()["backend"] == "python"


def test_without_tritonclient_the_error_names_the_extra(
    tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_model(tmp_path, "lin", TS, file=files["pt"])
    monkeypatch.setitem(__import__("sys").modules, "tritonclient.grpc", None)
    with pytest.raises(RepositoryError, match=r"ecoserve\[grpc\]"):
        scan_repository(tmp_path)
