"""A Unity behavior as dm_env_rpc tensors: the specs of a joined world, actions in, observations out.

Why: dm_env_rpc describes an environment by fixed tensor specs; a behavior has ``n``
agents (rows kept by ``gateway.remote.agent_slots``, fixed when the world is joined), so
every tensor has the agents as its first dimension. Observation uids, in this order:

* one per sensor, named like the sensor (``VectorSensor_size8``): float32 ``[n, *shape]``
  (visual ones channels-first, bounded to [0, 1]);
* ``reward`` float32 ``[n]`` and ``discount`` float32 ``[n]`` in [0, 1] (0 where an
  episode terminated, 1 otherwise, also when truncated): the names dm_env_rpc's
  ``DmEnvAdaptor`` reads;
* ``terminated``, ``truncated`` (Unity's interrupted flag), ``decision_requested`` bool ``[n]``;
* ``final_observation.<sensor>`` float32 ``[n, *shape]``: where an episode ended, its last
  observation (the sensor's own tensor already holds the next episode's first one);
* ``action_mask`` bool ``[n, sum(branches)]``, true = NOT allowed (ML-Agents' convention),
  for discrete actions only;
* ``agent_id``, ``instance`` int32 ``[n]``; ``group_reward`` float32 ``[n]``.

Action uids: ``continuous`` float32 ``[n, c]`` in [-1, 1]; ``discrete`` int32 ``[n, b]``
in [0, branch size). A missing action is zeros; actions of agents that did not request a
decision are not sent (Unity repeats their previous action).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2, tensor_spec_utils, tensor_utils

from common import protowire
from common.specs import BehaviorSpec
from gateway.remote.agent_slots import AgentSlots, SlotStep, sensor_names

_FLOAT, _INT, _BOOL = dm_env_rpc_pb2.DataType.FLOAT, dm_env_rpc_pb2.DataType.INT32, dm_env_rpc_pb2.DataType.BOOL


_RUNNING = dm_env_rpc_pb2.EnvironmentStateType.RUNNING
_STATE_FIELD = dm_env_rpc_pb2.StepResponse.DESCRIPTOR.fields_by_name["state"].number
_OBSERVATIONS_FIELD = dm_env_rpc_pb2.StepResponse.DESCRIPTOR.fields_by_name["observations"].number
_TENSOR_FIELDS = dm_env_rpc_pb2.Tensor.DESCRIPTOR.fields_by_name
_RUNNING_STATE = protowire.tag(_STATE_FIELD, protowire.VARINT) + protowire.varint(_RUNNING)


def _tensor_bytes(array: np.ndarray) -> bytes:
    """A serialized dm_env_rpc ``Tensor``: float32 and bool payloads written directly (packed
    floats are their little-endian bytes, packed bools one varint byte each), others by dm_env_rpc."""
    framing = _tensor_framing(array.dtype, array.shape)
    if framing is None:
        return tensor_utils.pack_tensor(array).SerializeToString()
    head, tail = framing
    return head + _raw(array) + tail


def _tensor_framing(dtype: np.dtype, shape: tuple[int, ...]) -> tuple[bytes, bytes] | None:
    """(bytes before, bytes after) the raw payload of a float32 or bool ``Tensor`` of ``shape``,
    or None for other dtypes. Fixed for a fixed shape: a world computes it once per uid."""
    if dtype == np.float32:
        field, size = _TENSOR_FIELDS["floats"].number, 4
    elif dtype == np.bool_:
        field, size = _TENSOR_FIELDS["bools"].number, 1
    else:
        return None
    raw_len = size * int(np.prod(shape, dtype=np.int64))
    inner = protowire.tag(1, protowire.LENGTH_DELIMITED) + protowire.varint(raw_len)
    head = protowire.tag(field, protowire.LENGTH_DELIMITED) + protowire.varint(len(inner) + raw_len) + inner
    dims = b"".join(protowire.varint(int(d)) for d in shape)
    return head, protowire.length_delimited(_TENSOR_FIELDS["shape"].number, dims)


def _raw(array: np.ndarray) -> bytes:
    """Little-endian payload bytes of a float32 or bool array (bools one byte each)."""
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array, np.uint8).tobytes()
    return np.ascontiguousarray(array, "<f4").tobytes()


def _packed_floats(payload, count: int) -> np.ndarray | None:
    """A ``FloatArray``'s values without a Python float per element (dm_env_rpc's own unpacking
    uses ``np.fromiter``): its serialized form is the tag, a length and the raw little-endian
    floats. None when it holds other than ``count`` values (the caller takes the general path)."""
    raw = payload.SerializeToString()
    if not raw:
        return np.zeros(0, np.float32) if count == 0 else None
    i, length, shift = 1, 0, 0
    while i < len(raw):
        byte = raw[i]
        length |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if byte < 0x80:
            break
    if raw[0] != 0x0A or length != 4 * count or len(raw) - i != length:
        return None
    return np.frombuffer(raw, "<f4", offset=i)


class WorldError(ValueError):
    """A request that does not fit the world; the message names the uid or setting."""


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: int
    shape: tuple[int, ...]
    bounds: tuple | None = None  # (min, max), scalars or arrays of ``shape``


def _to_spec(t: _Tensor) -> dm_env_rpc_pb2.TensorSpec:
    spec = dm_env_rpc_pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape))
    if t.bounds is not None:
        tensor_spec_utils.set_bounds(spec, *t.bounds)
    return spec


class BehaviorWorld:
    """The tensor view of one behavior's ``n`` rows (see the module docstring).

    Args:
        spec: the behavior.
        slots: its rows (``slots.n`` agents), started.
    """

    def __init__(self, spec: BehaviorSpec, slots: AgentSlots) -> None:
        self.spec = spec
        self.slots = slots
        n = slots.n
        a = spec.action_spec
        sensors = sensor_names(spec)
        obs: list[_Tensor] = []
        for name, o in zip(sensors, spec.observations):
            obs.append(_Tensor(name, _FLOAT, (n, *o.shape), (0.0, 1.0) if o.is_visual else None))
        obs += [
            _Tensor("reward", _FLOAT, (n,)),
            _Tensor("discount", _FLOAT, (n,), (0.0, 1.0)),
            _Tensor("terminated", _BOOL, (n,)),
            _Tensor("truncated", _BOOL, (n,)),
            _Tensor("decision_requested", _BOOL, (n,)),
        ]
        for name, o in zip(sensors, spec.observations):
            obs.append(_Tensor(f"final_observation.{name}", _FLOAT, (n, *o.shape), (0.0, 1.0) if o.is_visual else None))
        if a.num_branches:
            obs.append(_Tensor("action_mask", _BOOL, (n, a.mask_size)))
        obs += [
            _Tensor("agent_id", _INT, (n,)),
            _Tensor("instance", _INT, (n,)),
            _Tensor("group_reward", _FLOAT, (n,)),
        ]
        actions: list[_Tensor] = []
        if a.continuous_size:
            actions.append(_Tensor("continuous", _FLOAT, (n, a.continuous_size), (-1.0, 1.0)))
        if a.num_branches:
            high = np.broadcast_to(np.asarray(a.discrete_branches, np.int32) - 1, (n, a.num_branches))
            actions.append(_Tensor("discrete", _INT, (n, a.num_branches), (0, np.ascontiguousarray(high))))
        self._sensors = sensors
        self._requested: tuple[tuple[int, ...], list[int]] = ((), [])  # the last check_requested, usually repeated
        self.observations = {uid: t for uid, t in enumerate(obs, start=1)}
        self.actions = {uid: t for uid, t in enumerate(actions, start=len(obs) + 1)}
        self._action_bounds = {uid: tensor_spec_utils.bounds(_to_spec(t)) for uid, t in self.actions.items()}
        self._getters = {uid: self._getter(t.name) for uid, t in self.observations.items()}
        # float actions whose bounds are one scalar pair (``continuous``): the fast path of decode_actions
        self._scalar_bounds = {
            uid: (float(np.min(b.min)), float(np.max(b.max)), int(np.prod(self.actions[uid].shape)))
            for uid, b in self._action_bounds.items()
            if self.actions[uid].dtype == _FLOAT and np.ndim(b.min) == 0 and np.ndim(b.max) == 0
        }
        # each observation's bytes around its payload in a StepResponse (shapes are fixed):
        # observations map entry (field) { key: uid, value: Tensor { head, payload, tail } }
        self._framing: dict[int, tuple[bytes, bytes]] = {}
        for uid, t in self.observations.items():
            dtype = {_FLOAT: np.dtype(np.float32), _BOOL: np.dtype(np.bool_)}.get(t.dtype)
            framing = _tensor_framing(dtype, t.shape) if dtype is not None else None
            if framing is None:
                continue
            head, tail = framing
            tensor_len = len(head) + dtype.itemsize * int(np.prod(t.shape)) + len(tail)
            entry = protowire.tag(1, protowire.VARINT) + protowire.varint(uid)
            entry += protowire.tag(2, protowire.LENGTH_DELIMITED) + protowire.varint(tensor_len)
            field = protowire.tag(_OBSERVATIONS_FIELD, protowire.LENGTH_DELIMITED)
            self._framing[uid] = (field + protowire.varint(len(entry) + tensor_len) + entry + head, tail)

    @property
    def n(self) -> int:
        return self.slots.n

    def specs(self) -> dm_env_rpc_pb2.ActionObservationSpecs:
        out = dm_env_rpc_pb2.ActionObservationSpecs()
        for uid, t in self.observations.items():
            out.observations[uid].CopyFrom(_to_spec(t))
        for uid, t in self.actions.items():
            out.actions[uid].CopyFrom(_to_spec(t))
        return out

    def check_requested(self, uids) -> list[int]:
        """The requested observation uids, each once, in order.

        Raises:
            WorldError: naming an unknown uid.
        """
        key = tuple(uids)
        if key == self._requested[0]:
            return self._requested[1]
        out = []
        for uid in key:
            if uid not in self.observations:
                raise WorldError(f"requested_observations: unknown observation uid {uid} (known: 1..{len(self.observations)})")
            if uid not in out:
                out.append(uid)
        self._requested = (key, out)
        return out

    def decode_actions(self, actions) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A StepRequest's ``actions`` map -> (float32 ``[n, c]`` or None, int32 ``[n, b]`` or None).

        Raises:
            WorldError: naming the uid with an unknown id, a wrong dtype or shape, or a value out of bounds.
        """
        decoded: dict[str, np.ndarray] = {}
        for uid, tensor in actions.items():
            t = self.actions.get(uid)
            if t is None:
                raise WorldError(f"actions: unknown action uid {uid} (known: {sorted(self.actions)})")
            value = self._fast_action(uid, t, tensor)
            if value is not None:
                decoded[t.name] = value
                continue
            try:
                got_type = tensor_utils.get_tensor_type(tensor)
                if got_type != tensor_utils.data_type_to_np_type(t.dtype):
                    raise WorldError(f"actions[{uid}] ({t.name}): dtype {got_type}, expected {np.dtype(tensor_utils.data_type_to_np_type(t.dtype))}")
                value = np.asarray(tensor_utils.unpack_tensor(tensor))
            except (ValueError, TypeError) as e:
                if isinstance(e, WorldError):
                    raise
                raise WorldError(f"actions[{uid}] ({t.name}): {e}") from None
            if value.shape != t.shape:
                raise WorldError(f"actions[{uid}] ({t.name}): shape {list(value.shape)}, expected {list(t.shape)}")
            bounds = self._action_bounds[uid]
            low, high = bounds.min, bounds.max
            if t.dtype == _FLOAT and not np.isfinite(value).all():
                raise WorldError(f"actions[{uid}] ({t.name}): contains NaN or infinity")
            if (value < low).any() or (value > high).any():
                raise WorldError(f"actions[{uid}] ({t.name}): values out of bounds")
            decoded[t.name] = value
        return decoded.get("continuous"), decoded.get("discrete")

    def _fast_action(self, uid: int, t: _Tensor, tensor) -> np.ndarray | None:
        """The usual float action (packed floats of the spec's shape, every value within the
        spec's scalar bounds) read without per-element work; None for anything else, which
        the general path decodes or refuses with its message."""
        scalar = self._scalar_bounds.get(uid)
        if scalar is None or tensor.WhichOneof("payload") != "floats" or tuple(tensor.shape) != t.shape:
            return None
        low, high, count = scalar
        value = _packed_floats(tensor.floats, count)
        if value is None:
            return None
        if not (value.min() >= low and value.max() <= high):  # NaN fails both comparisons
            return None
        return value.reshape(t.shape)

    def step_response(self, step: SlotStep, uids: list[int]) -> bytes:
        """A serialized RUNNING ``StepResponse`` with the requested observations of ``step``.

        Composed as bytes and sent as such (the server's response serializer passes bytes
        through): dm_env_rpc's own packing copies arrays element by element (``tolist``),
        and a message object would be parsed, copied and serialized again on its way out.
        """
        parts = [_RUNNING_STATE]
        for uid in uids:
            value = self._getters[uid](step)
            framing = self._framing.get(uid)
            if framing is not None and value.shape == self.observations[uid].shape:
                parts += (framing[0], _raw(value), framing[1])
                continue
            entry = protowire.tag(1, protowire.VARINT) + protowire.varint(uid)
            entry += protowire.length_delimited(2, _tensor_bytes(value))
            parts.append(protowire.length_delimited(_OBSERVATIONS_FIELD, entry))
        return b"".join(parts)

    def _getter(self, name: str) -> Callable[[SlotStep], np.ndarray]:
        """The function that takes observation ``name``'s value out of a step (one per uid, made at the join)."""
        sensors = self._sensors
        if name in sensors:
            k = sensors.index(name)
            return lambda step: step.observations[k]
        if name.startswith("final_observation."):
            k = sensors.index(name.split(".", 1)[1])
            return lambda step: step.observations[k] if step.final_observations is None else step.final_observations[k]
        match name:
            case "reward":
                return lambda step: step.rewards
            case "discount":
                return lambda step: (~step.terminated).astype(np.float32)
            case "terminated":
                return lambda step: step.terminated
            case "truncated":
                return lambda step: step.truncated
            case "decision_requested":
                return lambda step: step.decided
            case "action_mask":
                return lambda step: step.action_mask
            case "agent_id":  # rows can change agents (Unity re-creates them): read at every step
                return lambda step: np.array([k[1] for k in self.slots.keys], np.int32)
            case "instance":
                return lambda step: np.array([k[0] for k in self.slots.keys], np.int32)
            case "group_reward":
                return lambda step: step.group_rewards
        raise KeyError(name)
