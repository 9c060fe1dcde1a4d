"""Decoding request bodies into model items, and encoding outputs, with validation.

Two body formats reach ``POST /v1/infer``:

- JSON: ``{"input": <nested list>}`` for one item, ``{"inputs": [<nested list>, ...]}`` for
  several;
- binary: one NumPy ``.npy`` array (``application/octet-stream``), loaded with
  ``allow_pickle=False``; its shape is either one item's shape or ``(n, *item_shape)``.

Everything that can be wrong with an input is reported as ``InputError`` with a message
that names the problem, so the handler answers 422 instead of letting the model fail a
whole batch of other people's requests.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

NPY_MEDIA_TYPES = ("application/octet-stream", "application/x-npy")


class InputError(ValueError):
    """The request's input cannot be served; the message says why (answered with 422)."""


class TensorSpec:
    """What one input item must look like: shape (None = any) and dtype."""

    def __init__(self, shape: Sequence[int] | None, dtype: torch.dtype) -> None:
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = dtype
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype

    def describe(self) -> str:
        shape = "any shape" if self.shape is None else f"shape {list(self.shape)}"
        return f"{shape}, dtype {self.np_dtype}"

    # -- validation -----------------------------------------------------------------------
    def check_array(self, arr: np.ndarray, what: str = "input") -> torch.Tensor:
        """One item: check dtype kind, shape and finiteness, convert to the model's dtype."""
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{what} must hold numbers, got dtype {arr.dtype}")
        if not np.can_cast(arr.dtype, self.np_dtype, casting="same_kind"):
            raise InputError(
                f"{what} has dtype {arr.dtype}, which cannot be converted to the model's "
                f"{self.np_dtype}"
            )
        if self.shape is not None and tuple(arr.shape) != self.shape:
            raise InputError(
                f"{what} has shape {list(arr.shape)}; the model takes one item of shape "
                f"{list(self.shape)}"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"{what} contains NaN or infinity")
        if self.np_dtype.kind == "f":
            check_float_range(arr, self.np_dtype, what)
        if arr.dtype.kind in "iu" and self.np_dtype.kind in "iu":
            info = np.iinfo(self.np_dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise InputError(f"{what} has values outside the range of {self.np_dtype}")
        converted = np.ascontiguousarray(arr, dtype=self.np_dtype)
        return torch.from_numpy(converted)

    def split_items(self, arr: np.ndarray, what: str = "body") -> list[torch.Tensor]:
        """A binary array: one item of the item shape, or ``(n, *item_shape)`` for n items."""
        if self.shape is None or tuple(arr.shape) == self.shape:
            return [self.check_array(arr, what)]
        if arr.ndim == len(self.shape) + 1 and tuple(arr.shape[1:]) == self.shape:
            if arr.shape[0] == 0:
                raise InputError(f"{what} holds zero items")
            whole = self.check_array(arr[0], f"{what} item 0")  # dtype checks once
            rest = [self.check_array(arr[i], f"{what} item {i}") for i in range(1, arr.shape[0])]
            return [whole, *rest]
        raise InputError(
            f"{what} has shape {list(arr.shape)}; expected one item of shape {list(self.shape)} "
            f"or a batch of shape [n, {', '.join(map(str, self.shape))}]"
        )


def check_float_range(arr: np.ndarray, target: np.dtype[Any], what: str) -> None:
    """Refuse finite values the cast to ``target`` would turn into infinities.

    Finiteness is checked on the values as sent; without this, a float64 1e39 became a
    float32 infinity after the check, and every output came back ``null``.
    """
    if not arr.size or arr.dtype.kind not in "iuf" or np.can_cast(arr.dtype, target, "safe"):
        return
    largest = float(np.finfo(target).max)
    peak = float(np.max(np.abs(arr.astype(np.float64, copy=False))))
    if peak > largest:
        raise InputError(
            f"{what} has values of magnitude up to {peak:.3g}, beyond the largest {target} "
            f"({largest:.3g}); they would become infinities"
        )


# -- JSON -----------------------------------------------------------------------------------
def _reject_constant(name: str) -> float:
    raise InputError(f"JSON body contains {name}, which is not a number JSON allows")


#: The strict decoder, made once: ``json.loads`` with a keyword builds a new one per call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(body: bytes) -> Any:
    """Parse a JSON body strictly (no NaN/Infinity); InputError on anything malformed."""
    if not body:
        raise InputError('request body is empty; send JSON like {"input": [...]}')
    try:
        # As json.loads reads bytes: UTF-8, -16 or -32, told apart by the first bytes.
        return _STRICT_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except InputError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError("request body is nested too deeply") from None


def nested_to_array(value: Any, what: str) -> np.ndarray:
    """A nested list of numbers as an array; InputError for ragged or non-numeric data."""
    if isinstance(value, (bool, int, float)):
        arr = np.asarray(value)
    elif not isinstance(value, list):
        raise InputError(f"{what} must be a (nested) list of numbers, got {type(value).__name__}")
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError, TypeError, RecursionError) as exc:
            msg = str(exc).split("\n")[0]
            if "inhomogeneous" in msg or "sequence" in msg:
                msg = "nested lists have different lengths (ragged)"
            raise InputError(f"{what} is not a rectangular list of numbers: {msg}") from None
    if arr.dtype.kind in "fO":
        arr = _exact_integers(value, arr, what)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} must hold only numbers (found {_kind_name(arr)})")
    return arr


def _exact_integers(value: Any, arr: np.ndarray, what: str) -> np.ndarray:
    """Integers past int64 as themselves, not floats: NumPy turns ``[2**64 - 1, 5]`` into
    float64 (rounded) and ``[2**70]`` into objects; an unsigned 64-bit value is kept exact."""
    if arr.dtype.kind == "f" and not (arr.size and float(np.max(np.abs(arr))) >= 2.0**63):
        return arr  # floats, or integers numpy already holds exactly
    leaves = np.asarray(value, dtype=object).reshape(-1)
    if not leaves.size or not all(type(x) is int for x in leaves):
        return arr
    low, high = min(leaves), max(leaves)
    for dtype in (np.int64, np.uint64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.asarray(value, dtype=dtype)
    raise InputError(
        f"{what} holds integers {low}..{high}, which no 64-bit integer type holds "
        f"(int64 {np.iinfo(np.int64).min}..{np.iinfo(np.int64).max}, uint64 0..2**64-1)"
    )


def _kind_name(arr: np.ndarray) -> str:
    return {"U": "strings", "O": "nulls, objects or mixed values", "S": "bytes"}.get(
        arr.dtype.kind, str(arr.dtype)
    )


def json_items(payload: Any, spec: TensorSpec) -> tuple[list[torch.Tensor], bool]:
    """Items from a v1 JSON payload; also whether the client sent a list (``inputs``)."""
    if not isinstance(payload, dict):
        raise InputError(
            f'JSON body must be an object like {{"input": [...]}}, got {type(payload).__name__}'
        )
    unknown = sorted(set(payload) - {"input", "inputs", "id"})
    if unknown:
        raise InputError(f'unknown field(s) {unknown}; use "input" or "inputs"')
    if ("input" in payload) == ("inputs" in payload):
        raise InputError('give exactly one of "input" (one item) or "inputs" (a list of items)')
    if "input" in payload:
        return [spec.check_array(nested_to_array(payload["input"], "input"))], False
    values = payload["inputs"]
    if not isinstance(values, list) or not values:
        raise InputError('"inputs" must be a non-empty list of items')
    items = [
        spec.check_array(nested_to_array(v, f"inputs[{i}]"), f"inputs[{i}]")
        for i, v in enumerate(values)
    ]
    return items, True


# -- .npy -----------------------------------------------------------------------------------
def load_npy(body: bytes) -> np.ndarray:
    """One ``.npy`` array from a body; never unpickles (object arrays are refused)."""
    if not body:
        raise InputError("request body is empty; send one .npy array")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # NumPy raises several types for a bad header
        raise InputError(f"body is not a valid .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise InputError("body must hold one .npy array, not an .npz archive")
    return arr


def to_npy(value: Any) -> bytes:
    """Serialise an output (tensor, array or nested list of numbers) as ``.npy`` bytes."""
    buf = io.BytesIO()
    np.save(buf, to_numpy(value), allow_pickle=False)
    return buf.getvalue()


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return np.stack([to_numpy(v) for v in value])
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"output of type {type(value).__name__} is not an array")
    return arr


#: Float dtypes a tensor can be viewed as in NumPy without a copy (bfloat16 cannot).
_NUMPY_FLOATS = frozenset({torch.float16, torch.float32, torch.float64})


def to_jsonable(value: Any) -> Any:
    """Outputs as plain JSON values (tensors and arrays become nested lists)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad or value.device.type != "cpu":  # each torch call costs
            value = value.detach().cpu()
        if value.dtype in _NUMPY_FLOATS:  # NumPy's check costs a fraction of torch's
            finite = bool(np.isfinite(value.numpy()).all())
        else:
            finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return value.tolist() if finite else _finite_or_none(value.tolist())
    if isinstance(value, np.ndarray):
        return _finite_or_none(value.tolist()) if value.dtype.kind in "fc" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
