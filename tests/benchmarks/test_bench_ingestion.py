"""bench_ingestion's synthetic gateways send what a gateway sends: renumbered chunks that parse."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_ingestion import chunk_message
from common.tensor import to_proto
from tandem.v1 import trainer_pb2


def test_a_replayed_chunk_is_renumbered_without_reencoding():
    chunk = trainer_pb2.ExperienceChunk(behavior="3DBall?team=0", returned_steps=3)
    chunk.trajectories.add(agent_id=7, rewards=to_proto(np.arange(4, dtype=np.float32)), done=True)
    recorded = chunk.SerializeToString()
    for sequence in (1, 300, 2**40):
        message = trainer_pb2.GatewayMessage.FromString(chunk_message(sequence, recorded))
        assert message.WhichOneof("message") == "chunk"
        expected = trainer_pb2.ExperienceChunk()
        expected.CopyFrom(chunk)
        expected.sequence = sequence
        assert message.chunk == expected
