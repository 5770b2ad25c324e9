"""Experience chunks assembled from already-serialized parts, without re-parsing them.

Why: in actor mode the workers serialize their trajectories (in parallel, on their
own cores); the parent only numbers chunks. Protobuf messages are concatenations of
fields, so the parent can prepend the sequence number to the worker's bytes and wrap
them as ``GatewayMessage.chunk`` by writing two field headers: no parse, no copy of
each trajectory into a message object, no second serialization. The bytes are
exactly what ``trainer_pb2.GatewayMessage(chunk=...).SerializeToString()`` gives
(tests hold them equal).
"""

from __future__ import annotations

from collections.abc import Iterable

from common.protowire import VARINT, length_delimited, tag, varint
from tandem.v1 import trainer_pb2

# field numbers (tandem/v1/trainer.proto)
_GATEWAY_MESSAGE_CHUNK = trainer_pb2.GatewayMessage.DESCRIPTOR.fields_by_name["chunk"].number
_CHUNK_SEQUENCE = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["sequence"].number
_CHUNK_BEHAVIOR = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["behavior"].number
_CHUNK_TRAJECTORIES = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["trajectories"].number
_CHUNK_STATS = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["stats"].number


def chunk_body(trajectories: Iterable[bytes], stats: Iterable[trainer_pb2.StatSample] = ()) -> bytes:
    """The ``trajectories`` and ``stats`` fields of an ExperienceChunk, from serialized Trajectory messages."""
    parts = [length_delimited(_CHUNK_TRAJECTORIES, t) for t in trajectories]
    parts += [length_delimited(_CHUNK_STATS, s.SerializeToString()) for s in stats]
    return b"".join(parts)


def chunk_message(sequence: int, behavior: str, body: bytes) -> bytes:
    """A serialized ``GatewayMessage`` holding ``ExperienceChunk(sequence, behavior, <body>)``."""
    chunk = (
        tag(_CHUNK_SEQUENCE, VARINT)
        + varint(sequence)
        + length_delimited(_CHUNK_BEHAVIOR, behavior.encode("utf-8"))
        + body
    )
    return length_delimited(_GATEWAY_MESSAGE_CHUNK, chunk)
