"""Resolving ``--model`` specs into a batch function with its input contract.

Specs:
- ``builtin:cnn`` (3x32x32 images), ``builtin:transformer`` (32x64 token embeddings),
  ``builtin:noop`` (returns its input; measures serving overhead), ``builtin:digits-small``
  and ``builtin:digits-large`` (1x8x8 digits, trained weights shipped with the package);
- ``torchscript:PATH`` or a path ending in ``.pt`` / ``.ts`` — a TorchScript module;
- ``onnx:PATH`` or a path ending in ``.onnx`` — an ONNX model run by ONNX Runtime on the
  execution providers given (``onnx_model``; needs ``ecoserve[onnx]``);
- ``module:callable`` — a Python entry point returning either an ``nn.Module`` or a batch
  function (called with no arguments if it is a factory).

Pre- and post-processing are pluggable (``preprocess`` / ``postprocess`` entry points):
``preprocess`` maps one request's decoded tensor to the model's item; ``postprocess`` maps
one item's output to what the response carries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoserve.models.builtin import Identity, SmallCNN, SmallTransformer

Transform = Callable[[Any], Any]


@dataclass
class LoadedModel:
    """A model ready to serve: its batch function and what one input item looks like."""

    name: str
    module: nn.Module | None
    batch_fn: Callable[[Any], Any]
    input_shape: tuple[int, ...] | None
    input_dtype: torch.dtype = torch.float32
    preprocess: Transform | None = None
    postprocess: Transform | None = None
    #: The protocol's names and platform (Triton's): an ONNX graph brings its own names.
    input_name: str = "input"
    output_name: str = "output"
    platform: str = "pytorch_libtorch"

    def example_item(self, seed: int = 0) -> torch.Tensor:
        if self.input_shape is None:
            raise ValueError(f"model {self.name} declares no input shape")
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(self.input_shape, generator=gen).to(self.input_dtype)


def module_batch_fn(module: nn.Module) -> Callable[[Any], Any]:
    """A batch function over ``module`` in eval and inference mode; lists are stacked first."""
    module.eval()

    def run(batch: Any) -> Any:
        with torch.inference_mode():
            if isinstance(batch, list):
                batch = torch.stack(batch)
            return module(batch)

    return run


def builtin_module(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A built-in model (``cnn``, ``transformer``, ``noop``, ``digits-small``/``-large``) and
    the shape of one input item."""
    if name == "cnn":
        m: nn.Module = SmallCNN()
    elif name == "transformer":
        m = SmallTransformer()
    elif name in ("noop", "identity"):
        m = Identity()
    elif name in ("digits-small", "digits-large"):
        from ecoserve.models.digits import load_digits_model

        return load_digits_model(name.split("-")[1]), (1, 8, 8)
    else:
        raise ValueError(
            f"unknown built-in model {name!r}; choose cnn, transformer, noop, digits-small or digits-large"
        )
    return m, tuple(m.input_shape)  # type: ignore[arg-type]


def resolve_entry_point(spec: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry point {spec!r} must look like 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for entry point {spec!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive on the CPU; ValueError naming the file when it cannot be loaded."""
    if not path.is_file():
        raise ValueError(f"TorchScript file {path} not found")
    try:
        module: nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises several types for a bad archive
        raise ValueError(f"{path} is not a loadable TorchScript archive: {exc}") from exc
    return module


def load_entry_point(spec: str) -> tuple[nn.Module | None, Callable[[Any], Any]]:
    """``module:callable`` as (module, batch function): a module class is instantiated, a
    callable marked ``__ecoserve_factory__`` is called first, any other callable is the batch
    function itself (module None)."""
    obj = resolve_entry_point(spec)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        obj = obj()
    elif (
        callable(obj)
        and not isinstance(obj, nn.Module)
        and getattr(obj, "__ecoserve_factory__", False)
    ):
        obj = obj()
    if isinstance(obj, nn.Module):
        return obj, module_batch_fn(obj)
    if callable(obj):
        return None, obj
    raise ValueError(f"entry point {spec!r} is neither an nn.Module nor a callable")


def load_model(
    spec: str,
    input_shape: tuple[int, ...] | None = None,
    preprocess: str | None = None,
    postprocess: str | None = None,
    onnx_providers: str | Sequence[str] | None = None,
) -> LoadedModel:
    """Resolve a model spec (see the module docstring); raises ValueError with the fix."""
    shape = input_shape
    module: nn.Module | None
    if spec.startswith("onnx:") or spec.endswith(".onnx"):
        return _onnx(spec, input_shape, preprocess, postprocess, onnx_providers)
    if spec.startswith("builtin:"):
        module, builtin_shape = builtin_module(spec.split(":", 1)[1])
        shape = shape or builtin_shape
        fn = module_batch_fn(module)
    elif spec.startswith("torchscript:") or spec.endswith((".pt", ".ts")):
        module = load_torchscript(
            Path(spec.split(":", 1)[1] if spec.startswith("torchscript:") else spec)
        )
        shape = shape or getattr(module, "input_shape", None)
        fn = module_batch_fn(module)
    elif ":" in spec:
        module, fn = load_entry_point(spec)
        shape = shape or getattr(module if module is not None else fn, "input_shape", None)
    else:
        raise ValueError(
            f"model spec {spec!r} not understood; use builtin:NAME, torchscript:PATH, a .pt file, "
            "onnx:PATH, a .onnx file, or package.module:callable"
        )
    return LoadedModel(
        name=spec,
        module=module,
        batch_fn=fn,
        input_shape=tuple(shape) if shape else None,
        preprocess=resolve_entry_point(preprocess) if preprocess else None,
        postprocess=resolve_entry_point(postprocess) if postprocess else None,
    )


def _onnx(
    spec: str,
    input_shape: tuple[int, ...] | None,
    preprocess: str | None,
    postprocess: str | None,
    providers: str | Sequence[str] | None,
) -> LoadedModel:
    """An ONNX file; ``input_shape`` only fills dimensions the graph leaves open."""
    from ecoserve.models.onnx_model import PLATFORM, load_onnx

    path = spec.split(":", 1)[1] if spec.startswith("onnx:") else spec
    onnx = load_onnx(path, providers, threads=torch.get_num_threads())
    return LoadedModel(
        name=spec,
        module=None,
        batch_fn=onnx.batch_fn,
        input_shape=onnx.fit_shape(input_shape),
        input_dtype=onnx.input_dtype,
        preprocess=resolve_entry_point(preprocess) if preprocess else None,
        postprocess=resolve_entry_point(postprocess) if postprocess else None,
        input_name=onnx.input_name,
        output_name=onnx.output_name,
        platform=PLATFORM,
    )
