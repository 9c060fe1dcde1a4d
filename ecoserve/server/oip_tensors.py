"""Open Inference Protocol v2 tensors: datatypes, and arrays from and to JSON values or bytes.

One table maps each protocol datatype to its NumPy dtype; the HTTP routes (JSON data and
the binary tensor data extension) and the gRPC service (typed contents and raw contents)
all decode and encode through the functions here, so every datatype behaves the same on
both protocols. Failures raise ``InputError`` with a message that names the tensor.

BF16 has no NumPy dtype: its values travel as float32 (exact, since every bfloat16 is a
float32) and are converted with torch at the byte boundary. BYTES tensors carry strings,
which no served model takes, and are refused with a message saying so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ecoserve.server.tensors import InputError, check_float_range, nested_to_array

#: Datatypes whose values are NumPy numbers, and their dtypes (little-endian on the wire).
NUMPY_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
BF16 = "BF16"
DATATYPES = (*NUMPY_DATATYPES, BF16)

#: Triton's model configuration spells each datatype ``TYPE_<name>``, and BYTES ``TYPE_STRING``.
TRITON_CONFIG_TYPES = {name: f"TYPE_{name}" for name in DATATYPES} | {"BYTES": "TYPE_STRING"}


def check_datatype(datatype: Any, what: str) -> str:
    """The datatype name if this server can decode it; InputError naming the fix if not."""
    if datatype == "BYTES":
        raise InputError(
            f"{what} has datatype BYTES (strings); the served model takes numbers: send one of "
            f"{', '.join(DATATYPES)}"
        )
    if datatype not in DATATYPES:
        raise InputError(f"{what} has unknown datatype {datatype!r}; use one of {list(DATATYPES)}")
    return str(datatype)


def check_shape(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f'{what}: "shape" must be a list of non-negative integers, got {shape!r}')
    return shape


def element_size(datatype: str) -> int:
    return 2 if datatype == BF16 else NUMPY_DATATYPES[datatype].itemsize


def array_from_values(values: Any, datatype: str, shape: list[int], what: str) -> np.ndarray:
    """A tensor from JSON data (nested or flat list, row-major) of the declared datatype."""
    flat = nested_to_array(values, f"{what} data").reshape(-1)
    count = math.prod(shape)
    if flat.size != count:
        raise InputError(f"{what} data holds {flat.size} values but shape {shape} needs {count}")
    if datatype == BF16:
        if flat.dtype.kind not in "biuf":
            raise InputError(f"{what} data ({flat.dtype}) does not fit datatype BF16")
        check_float_range(flat, np.dtype(np.float32), f"{what} data")
        return flat.astype(np.float32).reshape(shape)
    target = NUMPY_DATATYPES[datatype]
    if datatype == "BOOL":
        if flat.dtype.kind != "b":
            raise InputError(f"{what} data must be true/false for datatype BOOL")
    elif flat.dtype.kind in "iub" and target.kind in "iu":
        info = np.iinfo(target)  # integers of any size: check the range, never wrap
        if flat.size and (int(flat.min()) < info.min or int(flat.max()) > info.max):
            raise InputError(
                f"{what} data values {int(flat.min())}..{int(flat.max())} do not fit datatype "
                f"{datatype} ({info.min}..{info.max})"
            )
    elif target.kind in "iu":
        raise InputError(
            f"{what} data holds non-integer values ({flat.dtype}), which do not fit datatype "
            f"{datatype}"
        )
    elif not np.can_cast(flat.dtype, target, casting="same_kind"):
        raise InputError(f"{what} data values ({flat.dtype}) do not fit datatype {datatype}")
    else:
        check_float_range(flat, target, f"{what} data")
    return flat.astype(target).reshape(shape)


def array_from_bytes(
    raw: bytes | memoryview, datatype: str, shape: list[int], what: str
) -> np.ndarray:
    """A tensor from its raw little-endian bytes (binary extension, gRPC raw contents)."""
    count = math.prod(shape)
    size = element_size(datatype)
    if len(raw) != count * size:
        raise InputError(
            f"{what} carries {len(raw)} bytes but shape {shape} of {datatype} needs {count * size}"
        )
    if datatype == BF16:
        halves = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16) if count else torch.empty(0)
        return halves.float().numpy().reshape(shape)
    dtype = NUMPY_DATATYPES[datatype].newbyteorder("<")
    arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    return arr.astype(NUMPY_DATATYPES[datatype], copy=True)  # writable, native order


def datatype_of(value: torch.Tensor | np.ndarray) -> str:
    """The protocol datatype of an output; BYTES for anything that is not a number."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16:
            return BF16
        value = value.detach().cpu().numpy()
    for name, dt in NUMPY_DATATYPES.items():
        if dt == value.dtype:
            return name
    return "BYTES"


def output_array(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """An output as a NumPy array (BF16 widened to float32, which JSON and math both take)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def array_to_bytes(value: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian bytes of an output of ``datatype``."""
    if datatype == BF16:
        return (
            torch.from_numpy(np.ascontiguousarray(value, np.float32))
            .bfloat16()
            .view(torch.int16)
            .numpy()
            .astype("<i2")
            .tobytes()
        )
    return np.ascontiguousarray(value, NUMPY_DATATYPES[datatype].newbyteorder("<")).tobytes()


def array_to_values(value: np.ndarray) -> list[Any]:
    """Flat JSON values, row-major; NaN and infinities become null (JSON has no spelling)."""
    flat = value.reshape(-1).tolist()
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        return [v if math.isfinite(v) else None for v in flat]
    return flat
