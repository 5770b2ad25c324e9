"""Actor mode's protobuf messages handled as bytes: chunks assembled, snapshots passed on unparsed.

Why: the parent process is the one place where every chunk and every snapshot passes,
for every worker; building message objects there would parse and copy what it only
forwards.

Chunks: the parent serializes each worker's finished trajectories (``experience_body``;
the workers hand them over as numpy, which pickles cheaply, and their cores are the
ones stepping Unity) and numbers the chunk. Protobuf messages are concatenations of
fields, so the parent prepends the sequence number and behavior and wraps them as
``GatewayMessage.chunk`` by writing field headers (``chunk_message``): no message
object per chunk, no second serialization. The bytes are exactly what
``trainer_pb2.GatewayMessage(chunk=...).SerializeToString()`` gives (tests hold them equal).

Snapshots: the trainer's ``TrainerMessage.snapshot`` reaches the workers as the bytes
received (``snapshot_in``); the parent reads only the few scalar fields it needs
(``SnapshotHeader``), skipping the parameters, and each worker parses the snapshot once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common import trajectory as trajectory_mod
from common.protowire import LENGTH_DELIMITED, VARINT, length_delimited, tag, varint
from gateway.env.messages import Experience
from tandem.v1 import trainer_pb2

# field numbers (tandem/v1/trainer.proto)
_GATEWAY_MESSAGE_CHUNK = trainer_pb2.GatewayMessage.DESCRIPTOR.fields_by_name["chunk"].number
_CHUNK_SEQUENCE = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["sequence"].number
_CHUNK_BEHAVIOR = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["behavior"].number
_CHUNK_TRAJECTORIES = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["trajectories"].number
_CHUNK_STATS = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["stats"].number
_CHUNK_RETURNED = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["returned_steps"].number
_CHUNK_GENERATION = trainer_pb2.ExperienceChunk.DESCRIPTOR.fields_by_name["parameters_generation"].number
_TRAINER_MESSAGE_SNAPSHOT = trainer_pb2.TrainerMessage.DESCRIPTOR.fields_by_name["snapshot"].number
_SNAPSHOT_FIELDS = {
    name: trainer_pb2.PolicySnapshot.DESCRIPTOR.fields_by_name[name].number
    for name in ("behavior", "version", "time_horizon", "deterministic")
}
_FIXED_SIZES = {1: 8, 5: 4}  # wire types fixed64 and fixed32


def chunk_body(trajectories: Iterable[bytes], stats: Iterable[trainer_pb2.StatSample] = ()) -> bytes:
    """The ``trajectories`` and ``stats`` fields of an ExperienceChunk, from serialized Trajectory messages."""
    parts = [length_delimited(_CHUNK_TRAJECTORIES, t) for t in trajectories]
    parts += [length_delimited(_CHUNK_STATS, s.SerializeToString()) for s in stats]
    return b"".join(parts)


def experience_body(experience: Experience) -> bytes:
    """``chunk_body`` of a worker's ``Experience``: its trajectories and stats serialized here."""
    stats = [trainer_pb2.StatSample(key=s.key, value=s.value, aggregation=s.aggregation) for s in experience.stats]
    return chunk_body((trajectory_mod.to_proto(t).SerializeToString() for t in experience.trajectories), stats)


def chunk_message(
    sequence: int, behavior: str, body: bytes, returned_steps: int = 0, parameters_generation: int = 0
) -> bytes:
    """A serialized ``GatewayMessage`` holding ``ExperienceChunk(sequence, behavior, <body>, returned_steps,
    parameters_generation)`` (fields in number order, zero scalars left out, as protobuf writes them)."""
    chunk = (
        tag(_CHUNK_SEQUENCE, VARINT)
        + varint(sequence)
        + length_delimited(_CHUNK_BEHAVIOR, behavior.encode("utf-8"))
        + body
    )
    if returned_steps:
        chunk += tag(_CHUNK_RETURNED, VARINT) + varint(returned_steps)
    if parameters_generation:
        chunk += tag(_CHUNK_GENERATION, VARINT) + varint(parameters_generation)
    return length_delimited(_GATEWAY_MESSAGE_CHUNK, chunk)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire type, value, end)`` of each top-level field of a serialized message.

    ``value`` is the integer of a varint field and the start of a length-delimited
    field's payload (``end`` is where the field ends); fixed fields are skipped over.

    Raises:
        ValueError: bytes that are not a protobuf message (groups are not expected).
    """
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire_type, value, pos
        elif wire_type == LENGTH_DELIMITED:
            length, start = _read_varint(data, pos)
            pos = start + length
            if pos > len(data):
                raise ValueError(f"field {number}: truncated")
            yield number, wire_type, start, pos
        elif wire_type in _FIXED_SIZES:
            pos += _FIXED_SIZES[wire_type]
            yield number, wire_type, 0, pos
        else:
            raise ValueError(f"field {number}: unexpected wire type {wire_type}")


def snapshot_in(data: bytes) -> bytes | None:
    """The serialized ``PolicySnapshot`` of a serialized ``TrainerMessage`` holding one, else None.

    A message whose only field is ``snapshot`` gives its payload as it came (what
    ``message.snapshot.SerializeToString()`` would give, without parsing it); any other
    message (``welcome``, ``ack``) gives None and is parsed as usual.
    """
    found = None
    for number, wire_type, start, end in _fields(data):
        if number != _TRAINER_MESSAGE_SNAPSHOT or wire_type != LENGTH_DELIMITED or found is not None:
            return None
        found = (start, end)
    return None if found is None else data[found[0] : found[1]]


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class SnapshotHeader:
    """The scalar fields of a serialized ``PolicySnapshot`` the parent needs (read without parsing the rest)."""

    behavior: str = ""
    version: int = 0
    time_horizon: int = 0
    deterministic: bool = False

    @classmethod
    def read(cls, raw: bytes) -> SnapshotHeader:
        """Reads the header of serialized ``PolicySnapshot`` ``raw`` (proto3: the last value of a field wins).

        Raises:
            ValueError: ``raw`` is not a protobuf message.
        """
        values: dict[str, object] = {}
        numbers = {number: name for name, number in _SNAPSHOT_FIELDS.items()}
        for number, wire_type, value, end in _fields(raw):
            name = numbers.get(number)
            if name == "behavior" and wire_type == LENGTH_DELIMITED:
                values[name] = raw[value:end].decode("utf-8")
            elif name == "deterministic" and wire_type == VARINT:
                values[name] = bool(value)
            elif name is not None and wire_type == VARINT:
                values[name] = _signed64(value)
        return cls(**values)
