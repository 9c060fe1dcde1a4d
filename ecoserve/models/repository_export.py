"""Writing a model repository in Triton's layout from the built-in models.

A repository to try ``--model-repository`` with needs model files; the built-in models are
defined here with deterministic or shipped weights, so one can be written without a
download: ``write_model(root, "a_cnn", "cnn", "pytorch")`` makes ``root/a_cnn/config.pbtxt``
and ``root/a_cnn/1/model.pt`` (TorchScript, Triton's ``INPUT__0``/``OUTPUT__0`` names), or an
ONNX graph for ``"onnxruntime"``. ``examples/model_repository.py`` uses it, and so do the
tests and benchmarks of a board serving several models.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch

from ecoserve.models.loader import builtin_module

Format = Literal["pytorch", "onnxruntime"]

#: Tensor names each format's configuration gives (TorchScript has no names of its own).
NAMES: dict[Format, tuple[str, str]] = {
    "pytorch": ("INPUT__0", "OUTPUT__0"),
    "onnxruntime": ("input", "output"),
}
FILES: dict[Format, str] = {"pytorch": "model.pt", "onnxruntime": "model.onnx"}
PLATFORMS: dict[Format, str] = {"pytorch": "pytorch_libtorch", "onnxruntime": "onnxruntime_onnx"}


def config_text(
    name: str,
    fmt: Format,
    input_dims: tuple[int, ...],
    output_dims: tuple[int, ...],
    max_batch_size: int,
    max_queue_delay_us: int | None = None,
) -> str:
    """The ``config.pbtxt`` of one model with one FP32 input and one FP32 output."""
    inp, out = NAMES[fmt]
    text = (
        f'name: "{name}"\nplatform: "{PLATFORMS[fmt]}"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: {list(input_dims)} }} ]\n'
        f'output [ {{ name: "{out}" data_type: TYPE_FP32 dims: {list(output_dims)} }} ]\n'
    )
    if max_queue_delay_us is not None:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
    return text


def write_model(
    root: str | Path,
    name: str,
    builtin: str,
    fmt: Format = "pytorch",
    max_batch_size: int = 16,
    version: int = 1,
) -> Path:
    """Write built-in model ``builtin`` as repository model ``name``; its folder."""
    module, input_shape = builtin_module(builtin)
    module.eval()
    example = torch.zeros(1, *input_shape)
    with torch.no_grad():
        output_dims = tuple(int(d) for d in module(example).shape[1:])
    folder = Path(root) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    path = folder / str(version) / FILES[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation; the legacy exporter's notes
        if fmt == "pytorch":
            with torch.no_grad():  # traced as it serves (a transformer's inference fast path)
                traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
        else:
            torch.onnx.export(
                module, (example,), str(path), input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
            )  # fmt: skip
    config = config_text(name, fmt, tuple(input_shape), output_dims, max_batch_size)
    (folder / "config.pbtxt").write_text(config)
    return folder
