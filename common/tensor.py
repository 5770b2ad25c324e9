"""Converts between numpy arrays and ``tandem.v1.Tensor`` (raw bytes + dtype + shape).

Why: byte order, dtype mapping and validation live in one place: little-endian bytes,
C order. This is the general path; the gateway's step fields take a shorter one for
the dtypes and shapes they always have (``gateway.env.steps.put_tensor`` and
``read_tensor``), which falls back to this module for anything else and for every
error message.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tandem.v1 import tensor_pb2

_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.FLOAT32: np.dtype("<f4"),
    tensor_pb2.FLOAT64: np.dtype("<f8"),
    tensor_pb2.INT32: np.dtype("<i4"),
    tensor_pb2.INT64: np.dtype("<i8"),
    tensor_pb2.UINT8: np.dtype("u1"),
    tensor_pb2.BOOL: np.dtype("?"),
    tensor_pb2.FLOAT16: np.dtype("<f2"),
}
_FROM_NUMPY: dict[str, int] = {dt.newbyteorder("<").str: code for code, dt in _TO_NUMPY.items()}
_FROM_NUMPY["|u1"] = tensor_pb2.UINT8
_FROM_NUMPY["|b1"] = tensor_pb2.BOOL


class TensorError(ValueError):
    """A Tensor message that cannot be a numpy array (bad dtype, shape or byte length)."""


def dtype_to_proto(dtype: np.dtype | type) -> int:
    """Maps a numpy dtype to the ``tandem.v1.DType`` enum value."""
    dt = np.dtype(dtype)
    key = dt.newbyteorder("<").str if dt.itemsize > 1 else dt.str
    try:
        return _FROM_NUMPY[key]
    except KeyError:
        raise TensorError(f"dtype {dt} has no tandem.v1.DType") from None


def dtype_from_proto(code: int) -> np.dtype:
    """Maps a ``tandem.v1.DType`` enum value to a little-endian numpy dtype."""
    try:
        return _TO_NUMPY[code]
    except KeyError:
        raise TensorError(f"unknown or unspecified dtype {code}") from None


def to_proto(array: np.ndarray, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """Encodes ``array`` as a Tensor (fills ``out`` in place when given)."""
    array = np.asarray(array)
    code = dtype_to_proto(array.dtype)
    le = array.astype(_TO_NUMPY[code], copy=False)
    msg = out if out is not None else tensor_pb2.Tensor()
    msg.dtype = code
    msg.shape[:] = array.shape
    msg.data = np.ascontiguousarray(le).tobytes()
    return msg


@functools.lru_cache(maxsize=None)
def _accepted(dtype: np.dtype | type) -> tuple[np.dtype, np.dtype]:
    """The dtypes a tensor asked to be ``dtype`` may have: it, and it little-endian (cached:
    a trainer decodes about ten tensors per trajectory)."""
    return np.dtype(dtype), np.dtype(dtype).newbyteorder("<")


def from_proto(
    msg: tensor_pb2.Tensor,
    *,
    name: str = "tensor",
    dtype: np.dtype | type | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Decodes a Tensor into a (read-only) numpy array, validating it.

    Args:
        msg: the Tensor message.
        name: the field name used in error messages (e.g. ``"actions[0].continuous"``).
        dtype: if given, the dtype the tensor must have.
        shape: if given, the shape it must have; ``None`` entries match any size.

    Raises:
        TensorError: naming ``name``, when dtype, shape or byte length do not match.
    """
    dt = dtype_from_proto(msg.dtype) if msg.dtype else None
    if dt is None:
        raise TensorError(f"{name}: dtype is unspecified")
    if dtype is not None and dt not in _accepted(dtype):
        raise TensorError(f"{name}: dtype must be {np.dtype(dtype).name}, got {dt.name}")
    dims = tuple(msg.shape)
    if any(d < 0 for d in dims):
        raise TensorError(f"{name}: negative dimension in shape {list(dims)}")
    expected = math.prod(dims) * dt.itemsize  # Python ints: no overflow
    if len(msg.data) != expected:
        raise TensorError(
            f"{name}: {len(msg.data)} bytes do not match shape {list(dims)} of {dt.name} "
            f"({expected} bytes)"
        )
    if shape is not None:
        if len(shape) != len(dims) or any(s is not None and s != d for s, d in zip(shape, dims)):
            want = ["*" if s is None else s for s in shape]
            raise TensorError(f"{name}: shape must be {want}, got {list(dims)}")
    return np.frombuffer(msg.data, dtype=dt).reshape(dims)
