"""An ONNX model served through ONNX Runtime (``--model PATH.onnx`` or ``onnx:PATH``).

ONNX Runtime is the usual way to run ONNX models on a Jetson, where its builds offer the
CUDA and TensorRT execution providers; it is an optional extra (``ecoserve[onnx]``) so a
daemon serving torch models does not need it. The input's shape and dtype come from the
graph, so a client learns them from the protocol's metadata as it would from Triton.

The graph must have one input and one output, and the input's first dimension must be
dynamic (symbolic): the tuner's batch-size knob is the point of serving here, and a model
fixed at batch 1 would make it a lie. Such a model is refused with the export flag to fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: ONNX tensor element types ONNX Runtime reports, and the torch dtype of an item.
ONNX_DTYPES: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int8)": torch.int8,
    "tensor(uint8)": torch.uint8,
    "tensor(int16)": torch.int16,
    "tensor(int32)": torch.int32,
    "tensor(int64)": torch.int64,
    "tensor(bool)": torch.bool,
}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
PLATFORM = "onnxruntime_onnx"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxModel:
    """A loaded session and the contract read from its graph (item shapes exclude the batch,
    unless it was loaded ``batched=False``)."""

    batch_fn: Callable[[Any], torch.Tensor]
    input_name: str
    output_name: str
    input_dims: tuple[int | None, ...]
    input_dtype: torch.dtype
    providers: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The item shape, or None when the graph leaves a dimension open."""
        if any(d is None for d in self.input_dims):
            return None
        return tuple(d for d in self.input_dims if d is not None)

    def fit_shape(self, given: Sequence[int] | None) -> tuple[int, ...] | None:
        """The item shape to serve: ``given`` (``--input-shape``) must fit the graph's dims."""
        if given is None:
            return self.input_shape
        given = tuple(int(d) for d in given)
        if len(given) != len(self.input_dims) or any(
            d is not None and d != g for d, g in zip(self.input_dims, given)
        ):
            shown = ["?" if d is None else d for d in self.input_dims]
            raise ValueError(
                f"input_shape {list(given)} does not fit the ONNX graph's item shape {shown} "
                f"(input {self.input_name!r}; '?' is open); drop input_shape or re-export"
            )
        return given


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ValueError(
            "serving an ONNX model needs onnxruntime, which is not installed: "
            "pip install 'ecoserve[onnx]' (on a Jetson, NVIDIA's onnxruntime-gpu wheel)"
        ) from exc
    return onnxruntime


def parse_providers(providers: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"A,B"`` or a list, in priority order; None or empty means the CPU provider only."""
    if providers is None:
        return DEFAULT_PROVIDERS
    names = providers.split(",") if isinstance(providers, str) else list(providers)
    chosen = tuple(n.strip() for n in names if n.strip())
    return chosen or DEFAULT_PROVIDERS


def check_providers(chosen: Sequence[str], offered: Sequence[str], version: str) -> None:
    """Refuse a provider this onnxruntime build does not offer, naming what it does offer."""
    missing = [p for p in chosen if p not in offered]
    if missing:
        raise ValueError(
            f"onnx_providers: {', '.join(missing)} not offered by this onnxruntime ({version}); "
            f"it offers {', '.join(offered)}"
        )


def _item_dims(path: Path, name: str, dims: Sequence[Any]) -> tuple[int | None, ...]:
    """The item dimensions of input ``name`` (None where the graph leaves one symbolic)."""
    if not dims:
        raise ValueError(f"{path}: input {name!r} is a scalar; it needs a batch dimension first")
    if isinstance(dims[0], int):
        raise ValueError(
            f"{path}: input {name!r} has a fixed first dimension of {dims[0]} (shape {list(dims)}); "
            "ecoserve batches requests, so it needs a dynamic batch dimension: export with "
            f"dynamic_axes={{{name!r}: {{0: 'batch'}}}} (torch.onnx.export) or set dim_param on it"
        )
    return tuple(int(d) if isinstance(d, int) and d > 0 else None for d in dims[1:])


def load_onnx(
    path: str | Path,
    providers: str | Sequence[str] | None = None,
    threads: int | None = None,
    batched: bool = True,
) -> OnnxModel:
    """Open ``path`` in ONNX Runtime on ``providers``; ValueError says what is wrong and the fix.

    ``batched=False`` is for a graph that takes one item as it is (Triton's
    ``max_batch_size: 0``): its dims are all item dims and none needs to be dynamic.
    """
    ort = _import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX file {path} not found")
    chosen = parse_providers(providers)
    check_providers(chosen, ort.get_available_providers(), ort.__version__)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(chosen))
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise ValueError(f"{path} is not a loadable ONNX model: {exc}") from exc
    dropped = [p for p in chosen if p not in session.get_providers()]
    if dropped:  # onnxruntime falls back silently when a provider fails to initialise
        log.warning(
            "%s: onnxruntime did not enable %s; running on %s",
            path,
            dropped,
            session.get_providers(),
        )
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{path}: ecoserve serves models with one input and one output; this one has "
            f"inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
        )
    node = inputs[0]
    if node.type not in ONNX_DTYPES:
        raise ValueError(
            f"{path}: input {node.name!r} has type {node.type}; supported: {', '.join(ONNX_DTYPES)}"
        )
    input_name, output_name = node.name, outputs[0].name
    np_dtype = torch.empty(0, dtype=ONNX_DTYPES[node.type]).numpy().dtype

    def run(batch: Any) -> torch.Tensor:
        if isinstance(batch, list):
            batch = torch.stack(batch)
        array = np.ascontiguousarray(batch.numpy() if isinstance(batch, torch.Tensor) else batch)
        (out,) = session.run([output_name], {input_name: array.astype(np_dtype, copy=False)})
        return torch.from_numpy(np.asarray(out))

    return OnnxModel(
        batch_fn=run,
        input_name=input_name,
        output_name=output_name,
        input_dims=(
            _item_dims(path, input_name, node.shape)
            if batched
            else tuple(int(d) if isinstance(d, int) and d > 0 else None for d in node.shape)
        ),
        input_dtype=ONNX_DTYPES[node.type],
        providers=tuple(session.get_providers()),
    )
