"""Hand-encoded agent infos parse, with upb, into what the protobuf API would build."""

from __future__ import annotations

import numpy as np
from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
from mlagents_envs.communicator_objects.observation_pb2 import PNG, ObservationProto
from mlagents_envs.communicator_objects.unity_rl_output_pb2 import UnityRLOutputProto

from unity_standin.tasks.base import ObservationDef
from unity_standin.wire import ObservationEncoder, agent_info, varint


def test_varint_matches_protobuf():
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1):
        message = AgentInfoProto(id=value)
        assert message.SerializeToString().endswith(varint(value)) or value == 0


def test_agent_infos_round_trip():
    vector = ObservationEncoder(ObservationDef("VectorSensor_size3", (3,)))
    camera = ObservationEncoder(ObservationDef("CameraSensor", (3, 2, 2), compressed=True))
    floats = np.array([[1.5, -2.0, 0.0], [3.0, 4.0, 5.0]], dtype=np.float32)
    pngs = [b"\x89PNG-one", b"\x89PNG-two"]
    encoded = [c + v for c, v in zip(camera.rows(pngs), vector.rows(floats))]
    data = agent_info(7, 0.1, encoded[0], action_mask=np.array([False, True, True]), group_id=3, group_reward=-1.0)
    data += agent_info(300, -1.0, encoded[1], done=True, max_step_reached=True)
    parsed = UnityRLOutputProto.ListAgentInfoProto.FromString(data)

    expected = UnityRLOutputProto.ListAgentInfoProto()
    for i, (agent_id, reward) in enumerate(((7, 0.1), (300, -1.0))):
        info = expected.value.add(reward=reward, id=agent_id)
        info.observations.add(
            shape=[3, 2, 2], compression_type=PNG, compressed_data=pngs[i],
            dimension_properties=[1, 2, 2], name="CameraSensor",
        )
        info.observations.add(shape=[3], dimension_properties=[1], name="VectorSensor_size3").float_data.data.extend(
            floats[i].tolist()
        )
    expected.value[0].action_mask.extend([False, True, True])
    expected.value[0].group_id = 3
    expected.value[0].group_reward = -1.0
    expected.value[1].done = True
    expected.value[1].max_step_reached = True
    assert parsed == expected


def test_empty_vector_rows():
    vector = ObservationEncoder(ObservationDef("VectorSensor_size3", (3,)))
    assert vector.rows(np.zeros((0, 3), np.float32)) == []
