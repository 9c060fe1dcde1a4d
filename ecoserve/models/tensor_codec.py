"""Binary encoding of the tensor that crosses a split point.

The next tier must get back exactly the dtype and shape that left this one, from bytes
that cannot run code when read. NumPy's ``.npy`` format does both: a short text header
(dtype, byte order, shape) then the raw data, read here with ``allow_pickle=False`` so object
arrays are refused. It is a documented, stable format that any NumPy (or a 20-line reader)
decodes, so the next tier need not be ecoserve. Sent as ``application/octet-stream``.

``fp16=True`` sends floating tensors as float16, halving the bytes at a cut (the planner's
``S``) at the price of about three significant digits; integer and bool tensors are sent
unchanged. bfloat16 has no NumPy dtype, so it travels as float32 (or float16 with ``fp16``).
"""

from __future__ import annotations

import io

import numpy as np
import torch

#: HTTP content type of an encoded tensor (the body is a ``.npy`` file).
CONTENT_TYPE = "application/octet-stream"
#: Every ``.npy`` file starts with these six bytes.
NPY_MAGIC = b"\x93NUMPY"


def encode_tensor(t: torch.Tensor, *, fp16: bool = False) -> bytes:
    """``t`` as ``.npy`` bytes (detached, on the CPU, contiguous, native byte order)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"encode_tensor needs a torch.Tensor, got {type(t).__name__}")
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    if fp16 and t.is_floating_point():
        t = t.to(torch.float16)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, t.contiguous().numpy(), allow_pickle=False)
    return buf.getvalue()


def decode_tensor(data: bytes, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The tensor encoded by :func:`encode_tensor`; ValueError says what is wrong otherwise.

    ``dtype`` casts floating payloads on arrival (a tier that received float16 usually
    computes in float32); non-floating payloads are left as they are.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_tensor needs bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw.startswith(NPY_MAGIC):
        raise ValueError(
            f"not an encoded tensor: expected a .npy body starting with {NPY_MAGIC!r}, "
            f"got {raw[:8]!r} ({len(raw)} bytes)"
        )
    arr = _read_npy(raw)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    try:
        tensor = torch.from_numpy(np.array(arr, copy=True))
    except TypeError as exc:
        raise ValueError(f"tensor body has a dtype torch cannot hold: {exc}") from None
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


def _read_npy(raw: bytes) -> np.ndarray:
    """Parse the header, check the data length against it, then view the data.

    NumPy's own reader allocates the array the header announces before reading the data,
    so a 100-byte body claiming a terabyte shape would exhaust memory; checking the length
    first turns that into a ValueError.
    """
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dt = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dt = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, OverflowError) as exc:
        raise ValueError(f"malformed tensor header ({len(raw)} bytes): {exc}") from None
    if dt.hasobject or dt.fields is not None or dt.itemsize == 0:
        raise ValueError(f"tensor body has unsupported dtype {dt}")
    count = 1
    for dim in shape:
        count *= int(dim)
    expected = count * dt.itemsize
    got = len(raw) - buf.tell()
    if got != expected:
        raise ValueError(
            f"malformed tensor body: header says {tuple(shape)} of {dt} ({expected} bytes), "
            f"but {got} bytes of data follow"
        )
    flat = np.frombuffer(raw, dtype=dt, count=count, offset=buf.tell())
    return flat.reshape(shape, order="F" if fortran else "C")
