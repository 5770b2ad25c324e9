"""Hand-encoded ``AgentInfoProto`` bytes, so hundreds of agents per step stay cheap.

Why: building one protobuf message per agent and per observation through the Python
API costs tens of microseconds each; a 256-agent step then spends most of its time in
message construction. The agent infos of a behavior are a ``ListAgentInfoProto``
(``repeated AgentInfoProto value = 1``), so the stand-in writes those bytes itself
(standard protobuf wire format, field numbers read from mlagents-envs' descriptors) and
lets upb parse them once into the output (``MergeFromString``). The static part of
each observation (shape, dimension properties, name) is encoded once per sensor.

Wire format used here: a field is ``varint(number << 3 | wire_type)`` followed by a
varint (type 0), 4 little-endian bytes (type 5) or ``varint(length)`` + bytes (type 2);
repeated scalars are packed (proto3).
"""

from __future__ import annotations

import struct

import numpy as np
from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
from mlagents_envs.communicator_objects.observation_pb2 import NONE, PNG, ObservationProto

from common.protowire import FIXED32 as _FIXED32
from common.protowire import LENGTH_DELIMITED as _LENGTH
from common.protowire import VARINT as _VARINT
from common.protowire import length_delimited as _length_delimited
from common.protowire import tag as _tag
from common.protowire import varint
from unity_standin.tasks.base import ObservationDef


def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


def _packed_varints(number: int, values) -> bytes:
    return _length_delimited(number, b"".join(varint(int(v)) for v in values)) if len(values) else b""


_REWARD = _tag(_number(AgentInfoProto, "reward"), _FIXED32)
_DONE_TRUE = _tag(_number(AgentInfoProto, "done"), _VARINT) + b"\x01"
_MAX_STEP_TRUE = _tag(_number(AgentInfoProto, "max_step_reached"), _VARINT) + b"\x01"
_ID = _tag(_number(AgentInfoProto, "id"), _VARINT)
_MASK = _number(AgentInfoProto, "action_mask")
_OBSERVATIONS = _number(AgentInfoProto, "observations")
_GROUP_ID = _tag(_number(AgentInfoProto, "group_id"), _VARINT)
_GROUP_REWARD = _tag(_number(AgentInfoProto, "group_reward"), _FIXED32)
_LIST_TAG = _tag(1, _LENGTH)  # ListAgentInfoProto.value
_FLOAT = struct.Struct("<f")
_FLOAT_DATA = _number(ObservationProto, "float_data")
_FLOAT_DATA_VALUES = _number(ObservationProto.FloatData, "data")
_COMPRESSED_DATA = _number(ObservationProto, "compressed_data")


class ObservationEncoder:
    """Encodes one sensor's ``ObservationProto`` for one agent.

    Args:
        definition: the sensor; vector values arrive as float32 rows, compressed visual
            ones as PNG bytes.
    """

    def __init__(self, definition: ObservationDef) -> None:
        self.definition = definition
        static = _packed_varints(_number(ObservationProto, "shape"), definition.shape)
        compression = PNG if definition.compressed else NONE
        if compression:
            static += _tag(_number(ObservationProto, "compression_type"), _VARINT) + varint(compression)
        static += _packed_varints(_number(ObservationProto, "dimension_properties"), definition.dimension_properties)
        static += _length_delimited(_number(ObservationProto, "name"), definition.name.encode("utf-8"))
        self._static = static

    def rows(self, values: np.ndarray) -> list[bytes]:
        """The observation of each agent: float rows [k, ...] or, compressed, PNG bytes [k]."""
        if self.definition.compressed:
            return [self.compressed(data) for data in values]
        values = np.ascontiguousarray(values, dtype="<f4")
        k = len(values)
        if k == 0:
            return []
        size = values[0].nbytes
        # every agent's message has the same length: one prefix for all of them
        float_data_len = len(_tag(_FLOAT_DATA_VALUES, _LENGTH)) + len(varint(size)) + size
        inner_len = len(self._static) + len(_tag(_FLOAT_DATA, _LENGTH)) + len(varint(float_data_len)) + float_data_len
        prefix = (
            _tag(_OBSERVATIONS, _LENGTH) + varint(inner_len) + self._static
            + _tag(_FLOAT_DATA, _LENGTH) + varint(float_data_len)
            + _tag(_FLOAT_DATA_VALUES, _LENGTH) + varint(size)
        )
        raw = values.tobytes()
        return [prefix + raw[i * size : (i + 1) * size] for i in range(k)]

    def compressed(self, data: bytes) -> bytes:
        """The observation of one agent from its compressed (PNG) bytes."""
        return _length_delimited(_OBSERVATIONS, self._static + _length_delimited(_COMPRESSED_DATA, data))


def agent_info(
    agent_id: int,
    reward: float,
    observations: bytes,
    *,
    done: bool = False,
    max_step_reached: bool = False,
    action_mask: np.ndarray | None = None,
    group_id: int = 0,
    group_reward: float = 0.0,
) -> bytes:
    """One ``ListAgentInfoProto.value`` element: an ``AgentInfoProto`` framed as field 1.

    Args:
        observations: the agent's encoded observations (ObservationEncoder.rows), in sensor order.
        action_mask: bool [sum(branches)], True = not allowed; None: no mask sent.
    """
    parts = [_REWARD, _FLOAT.pack(reward)]
    if done:
        parts.append(_DONE_TRUE)
    if max_step_reached:
        parts.append(_MAX_STEP_TRUE)
    parts += (_ID, varint(agent_id))
    if action_mask is not None and len(action_mask):
        parts.append(_length_delimited(_MASK, np.asarray(action_mask, dtype=np.uint8).tobytes()))
    parts.append(observations)
    if group_id:
        parts += (_GROUP_ID, varint(group_id))
    if group_reward:
        parts += (_GROUP_REWARD, _FLOAT.pack(group_reward))
    body = b"".join(parts)
    return _LIST_TAG + varint(len(body)) + body
