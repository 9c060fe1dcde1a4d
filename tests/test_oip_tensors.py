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
from ecoserve.server.tensors import InputError


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
        (lambda: array_from_values([1.5], "INT32", [1], "input 'a'"), "(float64) do not fit datatype INT32"),
        (lambda: array_from_values([1, 0], "BOOL", [2], "input 'a'"), "true/false"),
        (lambda: check_datatype("BYTES", "input 'a'"), "datatype BYTES (strings)"),
        (lambda: check_datatype("FP8", "input 'a'"), "unknown datatype 'FP8'"),
    ],
)  # fmt: skip
def test_bad_tensors_are_refused_with_the_reason(call, message: str) -> None:
    with pytest.raises(InputError) as err:
        call()
    assert message in str(err.value) and "input 'a'" in str(err.value)
