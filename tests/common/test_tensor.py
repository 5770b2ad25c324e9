import numpy as np
import pytest

from common import tensor
from tandem.v1 import tensor_pb2


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[1, -2]], dtype=np.int32),
        np.array([True, False, True]),
        np.zeros((2, 0, 3), dtype=np.uint8),
        np.float64(3.5),
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian input is converted
        np.arange(4, dtype=np.int64),
        np.ones(3, dtype=np.float16),
    ],
)
def test_round_trip(array):
    msg = tensor.to_proto(array)
    back = tensor.from_proto(tensor_pb2.Tensor.FromString(msg.SerializeToString()))
    assert back.shape == np.shape(array)
    np.testing.assert_array_equal(back, array)


def test_bytes_are_little_endian():
    msg = tensor.to_proto(np.array([1], dtype=np.int32))
    assert msg.data == b"\x01\x00\x00\x00"


def test_byte_length_mismatch_names_field():
    msg = tensor.to_proto(np.zeros((2, 3), np.float32))
    msg.shape[:] = [2, 4]
    with pytest.raises(tensor.TensorError, match="actions.continuous: 24 bytes"):
        tensor.from_proto(msg, name="actions.continuous")


def test_dtype_and_shape_checks():
    msg = tensor.to_proto(np.zeros((2, 3), np.float64))
    with pytest.raises(tensor.TensorError, match="dtype must be float32"):
        tensor.from_proto(msg, name="x", dtype=np.float32)
    with pytest.raises(tensor.TensorError, match=r"shape must be \['\*', 2\]"):
        tensor.from_proto(msg, name="x", shape=(None, 2))
    assert tensor.from_proto(msg, shape=(None, 3)).shape == (2, 3)


def test_unspecified_dtype_is_rejected():
    with pytest.raises(tensor.TensorError, match="unspecified"):
        tensor.from_proto(tensor_pb2.Tensor(shape=[1], data=b"\x00"))


def test_unsupported_numpy_dtype():
    with pytest.raises(tensor.TensorError, match="complex"):
        tensor.to_proto(np.zeros(2, np.complex64))
