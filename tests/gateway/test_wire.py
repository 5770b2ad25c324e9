"""Snapshots handed on as bytes: the parent reads their header without parsing them, workers get them unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from common.architecture import PolicyArchitecture, make_snapshot, parameter_shapes
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor import wire
from tandem.v1 import trainer_pb2

SPEC = BehaviorSpec("Ball?team=0", (ObservationSpec("vector", (4,)),), ActionSpec(continuous_size=2))


def _snapshot(version: int = 1, **fields) -> trainer_pb2.PolicySnapshot:
    arch = PolicyArchitecture(SPEC, hidden_units=8, num_layers=1)
    params = {name: np.ones(shape, np.float32) for name, shape in parameter_shapes(arch).items()}
    return make_snapshot(SPEC.name, version, arch, params, **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"version": 7, "time_horizon": 64, "deterministic": True},
        {"version": 2**40, "time_horizon": 0, "deterministic": False},
        {"version": -3, "time_horizon": -1},
    ],
)
def test_the_header_is_what_a_parse_gives(fields):
    snapshot = _snapshot(**fields)
    header = wire.SnapshotHeader.read(snapshot.SerializeToString())
    assert header == wire.SnapshotHeader(
        behavior=snapshot.behavior,
        version=snapshot.version,
        time_horizon=snapshot.time_horizon,
        deterministic=snapshot.deterministic,
    )


def test_an_empty_snapshot_has_the_proto3_defaults():
    assert wire.SnapshotHeader.read(b"") == wire.SnapshotHeader("", 0, 0, False)


def test_a_trainer_message_with_a_snapshot_gives_its_bytes_unparsed():
    snapshot = _snapshot(version=5, time_horizon=32)
    data = trainer_pb2.TrainerMessage(snapshot=snapshot).SerializeToString()
    raw = wire.snapshot_in(data)
    assert raw is not None and data.endswith(raw) and len(data) - len(raw) <= 1 + 5  # field key and length only
    assert trainer_pb2.PolicySnapshot.FromString(raw) == snapshot


def test_other_trainer_messages_are_left_to_the_parser():
    welcome = trainer_pb2.TrainerMessage(welcome=trainer_pb2.Welcome(run_id="r", last_accepted_sequence=3))
    ack = trainer_pb2.TrainerMessage(ack=trainer_pb2.ChunkAck(sequence=9))
    assert wire.snapshot_in(welcome.SerializeToString()) is None
    assert wire.snapshot_in(ack.SerializeToString()) is None
    assert wire.snapshot_in(b"") is None
    # a snapshot field twice (the parser would merge them): parsed, not handed on as it is
    twice = trainer_pb2.TrainerMessage(snapshot=_snapshot()).SerializeToString() * 2
    assert wire.snapshot_in(twice) is None


def test_bytes_that_are_not_a_message_are_an_error():
    with pytest.raises(ValueError):
        wire.SnapshotHeader.read(b"\x0a\x05ab")  # a string field cut short


@pytest.mark.parametrize("generation, returned", [(0, 0), (1, 0), (300, 0), (0, 7), (2, 300)])
def test_a_chunk_names_its_returned_credit_and_parameters_generation_as_the_proto_would(generation, returned):
    stats = [trainer_pb2.StatSample(key="Environment/Mass", value=2.5, aggregation="average")]
    raw = wire.chunk_message(
        4, "Ball?team=0", wire.chunk_body([], stats), returned_steps=returned, parameters_generation=generation
    )
    expected = trainer_pb2.GatewayMessage(
        chunk=trainer_pb2.ExperienceChunk(
            sequence=4, behavior="Ball?team=0", stats=stats, returned_steps=returned, parameters_generation=generation
        )
    )
    assert raw == expected.SerializeToString()  # byte for byte, as protobuf writes it
