"""Batched agent steps as numpy, from mlagents-envs and to/from ``tandem.v1.StepBatch``.

Why: the worker processes read mlagents' ``DecisionSteps``/``TerminalSteps``, the
servicer sends ``tandem.v1.Steps``, the actor builds trajectories, and Python
clients decode responses. One plain type (``StepBatch``) and its conversions serve
all of them, so field order, dtypes and the mask convention live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import tensor
from common.specs import BehaviorSpec
from tandem.v1 import gateway_pb2, tensor_pb2

_AGGREGATIONS = ("average", "most_recent", "sum", "histogram")

# The dtypes of step fields, as numpy (little-endian) and as ``tandem.v1.DType``: the fast
# paths below compare codes and shapes directly and leave every other case (and every
# error message) to ``common.tensor``.
_F32, _I32, _BOOL = np.dtype("<f4"), np.dtype("<i4"), np.dtype("?")
_CODES = {_F32: tensor_pb2.FLOAT32, _I32: tensor_pb2.INT32, _BOOL: tensor_pb2.BOOL}


def put_tensor(array: np.ndarray, out) -> None:
    """Fills an empty ``tandem.v1.Tensor`` with ``array``, like ``tensor.to_proto`` but cheaper.

    Why: a step response holds a dozen small tensors; ``tensor.to_proto``'s general
    dtype mapping costs more than the copy for a few agents. Arrays of the step
    dtypes (C-contiguous, little-endian) take the short path, anything else the general one.
    """
    code = _CODES.get(array.dtype)
    if code is None or not array.flags.c_contiguous:
        tensor.to_proto(array, out)
        return
    out.dtype = code
    if len(out.shape):
        del out.shape[:]
    out.shape.extend(array.shape)
    out.data = array.tobytes()


def read_tensor(msg, name: str, dtype: np.dtype, shape: tuple[int | None, ...]) -> np.ndarray:
    """Decodes a Tensor that must have ``dtype`` and ``shape`` (``None`` = any size) into a read-only array.

    The common, valid case is checked with a few integer comparisons; anything else goes
    through ``tensor.from_proto``, which raises ``tensor.TensorError`` naming ``name``.
    """
    dims = msg.shape
    if msg.dtype == _CODES[dtype] and len(dims) == len(shape):
        dims = tuple(dims)
        count = 1
        for want, got in zip(shape, dims):
            if (want is not None and want != got) or got < 0:
                break
            count *= got
        else:
            data = msg.data
            if len(data) == count * dtype.itemsize:
                return np.frombuffer(data, dtype=dtype).reshape(dims)
    try:
        return tensor.from_proto(msg, name=name, dtype=dtype, shape=shape)
    except tensor.TensorError as e:
        if str(e).startswith(f"{name}:"):
            raise
        raise tensor.TensorError(f"{name}: {e}") from None  # e.g. an unknown dtype code
    except ValueError as e:  # e.g. dimensions whose product overflows
        raise tensor.TensorError(f"{name}: shape {list(msg.shape)} cannot be read: {e}") from None


@dataclass
class StepBatch:
    """The steps of ``n`` agents of one behavior in one instance.

    Attributes:
        observations: per observation spec, float32 ``[n, *shape]``.
        rewards: float32 ``[n]``, the reward received since the agent's last step.
        agent_ids: int32 ``[n]``.
        group_ids: int32 ``[n]``.
        group_rewards: float32 ``[n]``.
        action_mask: decision batches only: bool ``[n, sum(discrete_branches)]``, true = not allowed.
        interrupted: terminal batches only: bool ``[n]``, true = ended by max step.
    """

    observations: list[np.ndarray]
    rewards: np.ndarray
    agent_ids: np.ndarray
    group_ids: np.ndarray
    group_rewards: np.ndarray
    action_mask: np.ndarray | None = None
    interrupted: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.agent_ids.shape[0])


@dataclass(frozen=True)
class Stat:
    """One value from the stats side channel."""

    instance: int
    key: str
    value: float
    aggregation: str


def empty_decisions(spec: BehaviorSpec) -> StepBatch:
    return StepBatch(
        observations=[np.zeros((0, *o.shape), np.float32) for o in spec.observations],
        rewards=np.zeros(0, np.float32),
        agent_ids=np.zeros(0, np.int32),
        group_ids=np.zeros(0, np.int32),
        group_rewards=np.zeros(0, np.float32),
        action_mask=np.zeros((0, spec.action_spec.mask_size), bool),
    )


def empty_terminals(spec: BehaviorSpec) -> StepBatch:
    batch = empty_decisions(spec)
    batch.action_mask = None
    batch.interrupted = np.zeros(0, bool)
    return batch


def from_decision_steps(steps, spec: BehaviorSpec) -> StepBatch:
    """Converts an ``mlagents_envs.base_env.DecisionSteps``.

    mlagents gives the mask as one ``[n, branch_size]`` array per branch (or None when
    no agent masked anything); it becomes one ``[n, sum(branches)]`` bool array.
    """
    n = len(steps.agent_id)
    if steps.action_mask:
        mask = np.concatenate([np.asarray(m, bool) for m in steps.action_mask], axis=1)
    else:
        mask = np.zeros((n, spec.action_spec.mask_size), bool)
    return _from_mlagents(steps, mask, None)


def from_terminal_steps(steps) -> StepBatch:
    """Converts an ``mlagents_envs.base_env.TerminalSteps``."""
    return _from_mlagents(steps, None, np.asarray(steps.interrupted, bool))


def _from_mlagents(steps, action_mask: np.ndarray | None, interrupted: np.ndarray | None) -> StepBatch:
    """The fields decision and terminal steps share, as the step dtypes."""
    return StepBatch(
        observations=[np.asarray(o, np.float32) for o in steps.obs],
        rewards=np.asarray(steps.reward, np.float32),
        agent_ids=np.asarray(steps.agent_id, np.int32),
        group_ids=np.asarray(steps.group_id, np.int32),
        group_rewards=np.asarray(steps.group_reward, np.float32),
        action_mask=action_mask,
        interrupted=interrupted,
    )


def interrupted_terminals(decisions: StepBatch) -> StepBatch:
    """Terminal steps that end the episodes of agents awaiting a decision, as interrupted.

    Used when their Unity instance crashed or hung: the agents keep their last
    observation, get no reward, and ``interrupted`` is true (their return can be
    bootstrapped, nothing ended the episode for real).
    """
    n = len(decisions)
    return StepBatch(
        observations=[o.copy() for o in decisions.observations],
        rewards=np.zeros(n, np.float32),
        agent_ids=decisions.agent_ids.copy(),
        group_ids=decisions.group_ids.copy(),
        group_rewards=np.zeros(n, np.float32),
        interrupted=np.ones(n, bool),
    )


def concat(first: StepBatch, second: StepBatch) -> StepBatch:
    """Concatenates two batches of the same kind (decision or terminal)."""
    if len(first) == 0:
        return second
    if len(second) == 0:
        return first

    def cat(a, b):
        return None if a is None else np.concatenate([a, b], axis=0)

    return StepBatch(
        observations=[np.concatenate([a, b], axis=0) for a, b in zip(first.observations, second.observations)],
        rewards=cat(first.rewards, second.rewards),
        agent_ids=cat(first.agent_ids, second.agent_ids),
        group_ids=cat(first.group_ids, second.group_ids),
        group_rewards=cat(first.group_rewards, second.group_rewards),
        action_mask=cat(first.action_mask, second.action_mask),
        interrupted=cat(first.interrupted, second.interrupted),
    )


def encode(batch: StepBatch, out: gateway_pb2.StepBatch) -> gateway_pb2.StepBatch:
    """Fills a ``tandem.v1.StepBatch`` message with ``batch``."""
    for o in batch.observations:
        put_tensor(o, out.observations.add())
    put_tensor(batch.rewards, out.rewards)
    put_tensor(batch.agent_ids, out.agent_ids)
    put_tensor(batch.group_ids, out.group_ids)
    put_tensor(batch.group_rewards, out.group_rewards)
    if batch.action_mask is not None:
        put_tensor(batch.action_mask, out.action_mask)
    if batch.interrupted is not None:
        put_tensor(batch.interrupted, out.interrupted)
    return out


def encode_stats(stats: list[Stat], out) -> None:
    """Appends stats to a repeated ``StatValue`` field."""
    for s in stats:
        out.add(instance=s.instance, key=s.key, value=s.value, aggregation=s.aggregation)


def aggregation_name(method) -> str:
    """``StatsAggregationMethod`` (enum or int) -> "average" / "most_recent" / "sum" / "histogram"."""
    value = int(getattr(method, "value", method))
    return _AGGREGATIONS[value] if 0 <= value < len(_AGGREGATIONS) else str(value)


def decode(msg: gateway_pb2.StepBatch, spec: BehaviorSpec, *, terminal: bool, name: str = "steps") -> StepBatch:
    """Decodes and checks a ``tandem.v1.StepBatch`` against the behavior's spec.

    Raises:
        tensor.TensorError: naming the field that does not match.
    """
    agent_ids = read_tensor(msg.agent_ids, f"{name}.agent_ids", _I32, (None,))
    n = agent_ids.shape[0]
    if len(msg.observations) != len(spec.observations):
        raise tensor.TensorError(
            f"{name}.observations: {len(msg.observations)} given, behavior has {len(spec.observations)}"
        )
    observations = [
        read_tensor(o, f"{name}.observations[{i}]", _F32, (n, *ospec.shape))
        for i, (o, ospec) in enumerate(zip(msg.observations, spec.observations))
    ]
    batch = StepBatch(
        observations=observations,
        rewards=read_tensor(msg.rewards, f"{name}.rewards", _F32, (n,)),
        agent_ids=agent_ids,
        group_ids=read_tensor(msg.group_ids, f"{name}.group_ids", _I32, (n,)),
        group_rewards=read_tensor(msg.group_rewards, f"{name}.group_rewards", _F32, (n,)),
    )
    if terminal:
        batch.interrupted = read_tensor(msg.interrupted, f"{name}.interrupted", _BOOL, (n,))
    else:
        batch.action_mask = read_tensor(msg.action_mask, f"{name}.action_mask", _BOOL, (n, spec.action_spec.mask_size))
    return batch
