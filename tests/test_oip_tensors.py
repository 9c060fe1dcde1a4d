"""Open Inference Protocol tensor decoding and encoding, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecoserve.server.oip_tensors import (
    DATATYPES,
    array_from_bytes,
    array_from_values,
    array_to_bytes,
    check_datatype,
    datatype_of,
    output_array,
)
from ecoserve.server.tensors import InputError, TensorSpec


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BF16"])
def test_bytes_round_trip_for_every_numpy_datatype(datatype: str) -> None:
    values = (
        np.arange(6).reshape(2, 3) % 2 == 0 if datatype == "BOOL" else np.arange(6).reshape(2, 3)
    )
    arr = array_from_values(values.tolist(), datatype, [2, 3], "x")
    back = array_from_bytes(array_to_bytes(arr, datatype), datatype, [2, 3], "x")
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    assert datatype_of(arr) == datatype


def test_bf16_travels_as_two_bytes_and_is_exact_as_float32() -> None:
    exact = torch.tensor([1.0, -2.5, 0.15625, 3e38]).bfloat16()
    raw = exact.view(torch.int16).numpy().astype("<i2").tobytes()
    assert len(raw) == 8
    arr = array_from_bytes(raw, "BF16", [4], "x")
    assert arr.dtype == np.float32
    assert np.array_equal(arr, exact.float().numpy())
    assert array_to_bytes(arr, "BF16") == raw
    assert datatype_of(exact) == "BF16" and output_array(exact).dtype == np.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: array_from_bytes(b"\0" * 7, "FP32", [2], "input 'a'"), "carries 7 bytes but shape [2] of FP32 needs 8"),
        (lambda: array_from_values([1, 2, 3], "INT8", [2], "input 'a'"), "holds 3 values but shape [2] needs 2"),
        (lambda: array_from_values([300], "UINT8", [1], "input 'a'"), "300..300 do not fit datatype UINT8"),
        (lambda: array_from_values([1.5], "INT32", [1], "input 'a'"), "non-integer values (float64), which do not fit datatype INT32"),
        (lambda: array_from_values([1e39], "FP32", [1], "input 'a'"), "magnitude up to 1e+39, beyond the largest float32"),
        (lambda: array_from_values([2**64 - 1, -1], "UINT64", [2], "input 'a'"), "integers -1..18446744073709551615"),
        (lambda: array_from_values([1, 0], "BOOL", [2], "input 'a'"), "true/false"),
        (lambda: check_datatype("BYTES", "input 'a'"), "datatype BYTES (strings)"),
        (lambda: check_datatype("FP8", "input 'a'"), "unknown datatype 'FP8'"),
    ],
)  # fmt: skip
def test_bad_tensors_are_refused_with_the_reason(call, message: str) -> None:
    with pytest.raises(InputError) as err:
        call()
    assert message in str(err.value) and "input 'a'" in str(err.value)


def test_uint64_extremes_stay_exact_integers() -> None:
    top = 2**64 - 1
    for values, shape in (([top], [1]), ([[1, 2], [top, 3]], [2, 2])):
        arr = array_from_values(values, "UINT64", shape, "x")
        assert arr.dtype == np.uint64 and int(arr.max()) == top


def test_the_model_dtype_range_is_checked_before_the_cast() -> None:
    spec = TensorSpec((2,), torch.float32)
    with pytest.raises(InputError, match=r"input has values of magnitude up to 1e\+39"):
        spec.check_array(np.array([1e39, 0.0]))
    assert spec.check_array(np.array([3e38, -1.0])).dtype == torch.float32
    assert float(spec.check_array(np.array([2**64 - 1, 0], np.uint64))[0]) == 2.0**64
