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


def test_the_baseline_tree_s_trainer_modules_come_from_that_tree(tmp_path):
    import os
    import subprocess
    import sys

    from benchmarks.bench_ingestion import baseline_tree

    tree = baseline_tree("HEAD", tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "protos")])}
    code = "import trainer_server.cli, tandem.v1.trainer_pb2 as t; print(trainer_server.cli.__file__); print(t.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, check=True, capture_output=True, text=True)
    assert all(line.startswith(str(tree)) for line in out.stdout.split()), out.stdout
