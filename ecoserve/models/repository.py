"""Triton-layout model repositories: scanned, checked and loaded before anything is served.

Layout (Triton's)::

    DIR/<model>/config.pbtxt
    DIR/<model>/<version>/model.pt     platform "pytorch_libtorch" / backend "pytorch"
    DIR/<model>/<version>/model.onnx   platform "onnxruntime_onnx" / backend "onnxruntime"
    DIR/<model>/<version>/             backend "python" with
                                       parameters { key: "entry_point"
                                                    value { string_value: "pkg.mod:callable" } }

Every subdirectory of ``DIR`` not starting with a dot is a model; version directories are
integers without a leading zero (others are ignored, as in Triton). The python backend resolves
its entry point as ``--model pkg.mod:callable`` does (an ``nn.Module``, a module class, a
factory, or a batch function); its version directories only say which versions exist.

Honoured in ``config.pbtxt``: ``name`` (equal to the directory, or absent), ``platform`` /
``backend``, ``max_batch_size`` (the bound of the model's batch-size knob; 0: the model takes
one item of exactly ``dims`` and the bound is 1), one ``input`` and one ``output`` (``name``,
``data_type``, ``dims``; the names are the protocol's, so TorchScript's ``INPUT__0`` /
``OUTPUT__0`` serve as they are, while an ONNX model's must be its graph's), ``dynamic_batching``
(``preferred_batch_size``, ``max_queue_delay_microseconds``), ``version_policy`` (``latest``,
``all``, ``specific``; default latest 1), ``default_model_filename``, and one ``instance_group``
of count 1: ``KIND_CPU`` runs an ONNX model on the CPU provider only, ``KIND_GPU`` needs a GPU
execution provider enabled (TorchScript and Python models run on the CPU, so they refuse it),
``KIND_AUTO`` uses the providers given. Any other field set is refused by name
(``repository_rules``), so a config is never served differently from how Triton reads it.

``scan_repository`` reads every model and, with ``verify``, loads each chosen version and runs
one zero item through it, so a corrupt file, dims or data types that do not match the file, or
an entry point that does not resolve fail at start with the model, field and fix named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecoserve.models.loader import (
    LoadedModel,
    load_entry_point,
    load_torchscript,
    module_batch_fn,
)
from ecoserve.models.repository_config import ModelConfig, RepositoryError, TensorConfig
from ecoserve.models.repository_rules import load_config

__all__ = [
    "ModelConfig",
    "RepositoryError",
    "TensorConfig",
    "load_version",
    "scan_repository",
]

#: The torch dtype of each protocol datatype a repository model may declare.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
DATATYPE_OF = {dtype: name for name, dtype in TORCH_DTYPES.items()}
CPU_PROVIDER = "CPUExecutionProvider"


def scan_repository(
    root: str | Path | Sequence[str | Path],
    *,
    verify: bool = True,
    onnx_providers: str | Sequence[str] | None = None,
) -> list[ModelConfig]:
    """Every model in one repository (or several, as Triton allows), sorted by name.

    Each refused model contributes its first problem; when any is refused the scan raises one
    ``RepositoryError`` listing them all (``problems``), so one run shows everything to fix.
    ``verify`` loads each chosen version (``load_version``) and drops it again.
    """
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    if not roots:
        raise RepositoryError("no model repository given; pass the repository directory")
    problems: list[RepositoryError] = []
    seen: dict[str, Path] = {}
    configs: list[ModelConfig] = []
    for repo in roots:
        try:
            model_dirs = _model_dirs(repo)
        except RepositoryError as exc:
            problems.append(exc)
            continue
        for model_dir in model_dirs:
            name = model_dir.name
            if name in seen:
                problems.append(
                    RepositoryError(
                        f"model {name!r}: found in {seen[name]} and in {model_dir}; model names "
                        "must be unique across repositories (rename one directory)",
                        name,
                        "name",
                    )
                )
                continue
            seen[name] = model_dir
            try:
                config = load_config(model_dir)
                if verify:
                    for version in config.versions:
                        load_version(config, version, onnx_providers)
            except RepositoryError as exc:
                problems.append(exc)
                continue
            except OSError as exc:  # a folder or file that cannot be read
                problems.append(RepositoryError(f"model {name!r}: {exc}", name, "path"))
                continue
            configs.append(config)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise RepositoryError(
            f"model repository refused {len(problems)} models:\n{listed}", problems=problems
        )
    if not configs:
        where = ", ".join(str(r) for r in roots)
        raise RepositoryError(
            f"model repository {where} holds no model; expected <repository>/<model>/config.pbtxt "
            "and <repository>/<model>/1/model.pt (or model.onnx)"
        )
    return sorted(configs, key=lambda c: c.name)


def _model_dirs(repo: Path) -> list[Path]:
    if not repo.is_dir():
        raise RepositoryError(
            f"model repository {repo} is not a directory; pass the folder that holds one "
            "directory per model"
        )
    try:
        return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise RepositoryError(f"model repository {repo} cannot be listed: {exc}") from exc


def load_version(
    config: ModelConfig,
    version: int,
    onnx_providers: str | Sequence[str] | None = None,
) -> LoadedModel:
    """One version of a scanned model, ready to serve, checked against its config.

    ``input_shape`` is the input's dims (without the batch dimension); the batch function takes
    a list of items or a stacked batch, as for ``--model``. One zero item is run through it and
    its output checked against the declared output dims and data type.
    """
    where = f"model {config.name!r} version {version}"
    if version not in config.versions:
        raise RepositoryError(
            f"{where} is not served: its version_policy chose {list(config.versions)}",
            config.name,
            "version_policy",
        )
    module: nn.Module | None
    if config.backend == "pytorch":
        path = _file(config, version)
        try:
            module = load_torchscript(path)
        except ValueError as exc:
            raise RepositoryError(f"{where}: {exc}", config.name, _rel(config, path)) from exc
        fn = module_batch_fn(module)
    elif config.backend == "onnxruntime":
        module, fn = None, _onnx(config, version, onnx_providers)
    else:
        try:
            module, fn = load_entry_point(str(config.entry_point))
        except ValueError as exc:
            raise RepositoryError(
                f"{where}: parameters.entry_point: {exc}", config.name, "parameters.entry_point"
            ) from exc
    if config.max_batch_size == 0:
        fn = _one_item_at_a_time(fn)
    model = LoadedModel(
        name=config.name,
        module=module,
        batch_fn=fn,
        input_shape=config.input.dims,
        input_dtype=TORCH_DTYPES[config.input.datatype],
        input_name=config.input.name,
        output_name=config.output.name,
        platform=config.platform,
    )
    _check_output(config, version, model)
    return model


def _file(config: ModelConfig, version: int) -> Path:
    path = config.model_path(version)
    assert path is not None  # the file backends always name a model file
    return path


def _rel(config: ModelConfig, path: Path) -> str:
    return str(path.relative_to(config.path))


def _onnx(
    config: ModelConfig, version: int, providers: str | Sequence[str] | None
) -> Callable[[Any], Any]:
    """An ONNX version's batch function, once its graph agrees with the config."""
    from ecoserve.models.onnx_model import load_onnx, parse_providers

    where = f"model {config.name!r} version {version}"
    path = _file(config, version)
    chosen = (CPU_PROVIDER,) if config.instance_kind == "KIND_CPU" else parse_providers(providers)
    try:
        onnx = load_onnx(
            path, chosen, threads=torch.get_num_threads(), batched=config.max_batch_size > 0
        )
    except ValueError as exc:
        raise RepositoryError(f"{where}: {exc}", config.name, _rel(config, path)) from exc
    if config.instance_kind == "KIND_GPU" and set(onnx.providers) <= {CPU_PROVIDER}:
        raise RepositoryError(
            f"{where}: instance_group[0].kind: KIND_GPU, but ONNX Runtime runs it on "
            f"{list(onnx.providers)}; pass a GPU execution provider (--onnx-providers "
            "CUDAExecutionProvider,CPUExecutionProvider) or use KIND_CPU",
            config.name,
            "instance_group[0].kind",
        )
    for what, declared, graph in (
        ("input", config.input.name, onnx.input_name),
        ("output", config.output.name, onnx.output_name),
    ):
        if declared != graph:
            raise RepositoryError(
                f"{where}: {what}[0].name: is {declared!r} but the ONNX graph's {what} is "
                f"{graph!r}; use the graph's name",
                config.name,
                f"{what}[0].name",
            )
    declared_type = TORCH_DTYPES[config.input.datatype]
    if onnx.input_dtype != declared_type:
        raise RepositoryError(
            f"{where}: input[0].data_type: is {config.input.datatype} but the ONNX graph's "
            f"input is {DATATYPE_OF.get(onnx.input_dtype, onnx.input_dtype)}; declare that",
            config.name,
            "input[0].data_type",
        )
    dims = config.input.dims
    if len(dims) != len(onnx.input_dims) or any(
        g is not None and g != d for g, d in zip(onnx.input_dims, dims)
    ):
        shown = ["?" if g is None else g for g in onnx.input_dims]
        batch = "item " if config.max_batch_size > 0 else ""
        raise RepositoryError(
            f"{where}: input[0].dims: {list(dims)} does not fit the ONNX graph's {batch}dims "
            f"{shown} ('?' is open); declare the graph's dims",
            config.name,
            "input[0].dims",
        )
    return onnx.batch_fn


def _one_item_at_a_time(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A batch function over a model that takes one item without a batch dimension
    (``max_batch_size: 0``): the item goes in as it is, its output comes back as a batch of 1."""

    def run(batch: Any) -> Any:
        items = list(batch)
        if len(items) != 1:
            raise ValueError(
                f"this model takes one item at a time (max_batch_size 0); got {len(items)}"
            )
        out = fn(items[0])
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out)
        return out.unsqueeze(0) if isinstance(out, torch.Tensor) else [out]

    return run


def _last_line(exc: BaseException) -> str:
    """An exception's last line: TorchScript puts its whole interpreter trace in the message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _check_output(config: ModelConfig, version: int, model: LoadedModel) -> None:
    """Run one zero item and compare its result with the declared output dims and type."""
    where = f"model {config.name!r} version {version}"
    dims_in = list(config.input.dims)
    item = torch.zeros(config.input.dims, dtype=model.input_dtype)
    try:  # a batch of one, stacked as the runtime stacks same-shaped items
        out = model.batch_fn(torch.stack([item]))
    except Exception as exc:  # a user model may raise anything on a wrong shape or dtype
        raise RepositoryError(
            f"{where}: input[0].dims: one zero item of dims {dims_in} ({config.input.datatype}) "
            f"fails in the model: {type(exc).__name__}: {_last_line(exc)}; declare the dims and data_type "
            "the model takes",
            config.name,
            "input[0].dims",
        ) from exc
    result = _first_result(out, f"{where}: output[0]", config.name)
    got = tuple(int(d) for d in result.shape)
    want = config.output.dims
    if len(got) != len(want) or any(w != -1 and w != g for w, g in zip(want, got)):
        raise RepositoryError(
            f"{where}: output[0].dims: declares {list(want)} but one item of dims {dims_in} "
            f"comes out as {list(got)}; declare the model's output dims",
            config.name,
            "output[0].dims",
        )
    got_type = DATATYPE_OF.get(result.dtype)
    if got_type != config.output.datatype:
        raise RepositoryError(
            f"{where}: output[0].data_type: is {config.output.datatype} but the model returns "
            f"{got_type or result.dtype}; declare that",
            config.name,
            "output[0].data_type",
        )


def _first_result(out: Any, where: str, model: str) -> torch.Tensor:
    """The one item's result in a batch function's output for a batch of 1 (a tensor or array
    with the batch first, or a list of one result per item, as the runtime splits them)."""

    def refuse(problem: str) -> RepositoryError:
        return RepositoryError(
            f"{where}: {problem}; ecoserve serves one output tensor per item", model, "output[0]"
        )

    if isinstance(out, (torch.Tensor, np.ndarray)):
        if out.ndim == 0 or out.shape[0] != 1:
            raise refuse(f"the model returns shape {list(out.shape)} for a batch of 1")
        out = out[0]
    elif isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise refuse(f"the model returns {len(out)} results for a batch of 1")
        out = out[0]
    else:
        raise refuse(f"the model returns {type(out).__name__}")
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise refuse(f"the item's result is {type(out).__name__}, not a tensor")
    return out
