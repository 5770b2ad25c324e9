"""Protobuf wire-format primitives, for composing messages from pre-serialized parts.

Why: on hot paths (the stand-in's agent infos, the gateway's experience chunks) we
concatenate already-serialized submessages instead of building message objects and
parsing them again. A field is ``varint(number << 3 | wire_type)`` followed by a varint
(type 0), 4 little-endian bytes (type 5) or ``varint(length)`` + bytes (type 2); fields
of a message may simply be concatenated.
"""

from __future__ import annotations

VARINT = 0
FIXED32 = 5
LENGTH_DELIMITED = 2

_ONE_BYTE = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if 0 <= value < 128:
        return _ONE_BYTE[value]
    if value < 0:
        raise ValueError(f"negative varint {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The key of field ``number`` with ``wire_type``."""
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (bytes, string or a serialized submessage)."""
    return tag(number, LENGTH_DELIMITED) + varint(len(payload)) + payload
