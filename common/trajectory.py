"""Trajectory fragments of single agents: the unit of experience from gateway to trainer.

Why: ML-Agents' trainers consume per-agent trajectories cut at episode ends or every
``time_horizon`` steps; the gateway builds them, the trainer validates and learns from
them. Step ``t`` holds observation o_t, the action a_t taken on it, and the reward
r_t received after it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from common import tensor
from common.specs import BehaviorSpec
from tandem.v1 import trainer_pb2


@dataclass
class Groupmates:
    """The groupmates of one agent at each of its T steps (ML-Agents' ``GroupmateStatus``),
    padded to M mates: row ``m`` of step ``t`` is a real mate where ``present[t, m]``.

    Attributes:
        observations: per observation spec, float32 ``[T, M, *shape]``: what each mate acted on.
        continuous_actions: float32 ``[T, M, continuous_size]``, unclipped samples.
        discrete_actions: int32 ``[T, M, num_branches]``.
        rewards: float32 ``[T, M]``, each mate's own reward for that step.
        present: bool ``[T, M]``.
        done: bool ``[T, M]``: the mate's episode ended at that step.
        next_observations: per observation spec, float32 ``[K, *shape]``: the mates'
            observations after the last step (K may differ from M).
    """

    observations: list[np.ndarray]
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    rewards: np.ndarray
    present: np.ndarray
    done: np.ndarray
    next_observations: list[np.ndarray]

    def tail(self, start: int) -> "Groupmates":
        """Steps ``start..T-1`` (the same next observations)."""
        return replace(
            self,
            observations=[o[start:] for o in self.observations],
            continuous_actions=self.continuous_actions[start:],
            discrete_actions=self.discrete_actions[start:],
            rewards=self.rewards[start:],
            present=self.present[start:],
            done=self.done[start:],
        )


@dataclass
class Trajectory:
    """T consecutive decision steps of one agent.

    Attributes:
        instance: the environment instance index the agent lives in.
        agent_id: the agent's id in that instance (ids change across episodes).
        observations: per observation spec, float32 ``[T, *shape]``.
        next_observations: per observation spec, float32 ``[*shape]``: what followed step T-1.
        continuous_actions: float32 ``[T, continuous_size]``, unclipped samples.
        discrete_actions: int32 ``[T, num_branches]``.
        log_probs: float32 ``[T]``, joint log-probability of the action taken.
        rewards: float32 ``[T]``.
        action_masks: bool ``[T, sum(branches)]``, true = not allowed.
        policy_versions: int64 ``[T]``, the snapshot version that chose each action.
        done: the episode ended after step T-1.
        interrupted: the end was a max-step interruption (bootstrap from next_observations).
        episode_return: when done, the whole episode's return.
        episode_length: when done, the whole episode's length in decision steps.
        memories: float32 ``[T, memory_size]``, the actor's LSTM memory before each step
            (policies with memory), else None.
        source: the gateway that streamed the fragment (its ``gateway_id``; set by the
            trainer, never sent: instance indices and agent ids are only unique within one
            gateway, so per-agent state on the trainer is keyed by ``agent_key``).
        group_id: the agent's multi-agent group in its instance (0: none).
        group_rewards: float32 ``[T]``, the group reward of each step, when collected
            (``PolicyArchitecture.collect_groupmates``), else None.
        groupmates: the groupmates at each step, when collected, else None.
        group_continues: when done, the group's episode went on without the agent
            (ML-Agents' ``not all_group_dones_reached``): bootstrap from the group's value.
    """

    instance: int
    agent_id: int
    observations: list[np.ndarray]
    next_observations: list[np.ndarray]
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    log_probs: np.ndarray
    rewards: np.ndarray
    action_masks: np.ndarray
    policy_versions: np.ndarray
    done: bool = False
    interrupted: bool = False
    episode_return: float = 0.0
    episode_length: int = 0
    memories: np.ndarray | None = None
    source: str = ""
    group_id: int = 0
    group_rewards: np.ndarray | None = None
    groupmates: Groupmates | None = None
    group_continues: bool = False

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def agent_key(self) -> tuple[str, int, int]:
        """``(source, instance, agent_id)``: names one agent among every gateway's."""
        return (self.source, int(self.instance), int(self.agent_id))

    def tail(self, start: int) -> Trajectory:
        """Steps ``start..T-1`` as a fragment of their own (same end, same next observations).

        Why: the trainer drops the steps an outdated policy acted and trains on the rest; a
        fragment's advantages depend only on its own steps and its bootstrap.
        """
        if start == 0:
            return self
        return replace(
            self,
            observations=[o[start:] for o in self.observations],
            continuous_actions=self.continuous_actions[start:],
            discrete_actions=self.discrete_actions[start:],
            log_probs=self.log_probs[start:],
            rewards=self.rewards[start:],
            action_masks=self.action_masks[start:],
            policy_versions=self.policy_versions[start:],
            memories=None if self.memories is None else self.memories[start:],
            group_rewards=None if self.group_rewards is None else self.group_rewards[start:],
            groupmates=None if self.groupmates is None else self.groupmates.tail(start),
        )


def to_proto(traj: Trajectory, out: trainer_pb2.Trajectory | None = None) -> trainer_pb2.Trajectory:
    msg = out if out is not None else trainer_pb2.Trajectory()
    msg.instance = traj.instance
    msg.agent_id = traj.agent_id
    for o in traj.observations:
        tensor.to_proto(np.asarray(o, np.float32), msg.observations.add())
    for o in traj.next_observations:
        tensor.to_proto(np.asarray(o, np.float32), msg.next_observations.add())
    tensor.to_proto(np.asarray(traj.continuous_actions, np.float32), msg.continuous_actions)
    tensor.to_proto(np.asarray(traj.discrete_actions, np.int32), msg.discrete_actions)
    tensor.to_proto(np.asarray(traj.log_probs, np.float32), msg.log_probs)
    tensor.to_proto(np.asarray(traj.rewards, np.float32), msg.rewards)
    tensor.to_proto(np.asarray(traj.action_masks, bool), msg.action_masks)
    tensor.to_proto(np.asarray(traj.policy_versions, np.int64), msg.policy_versions)
    msg.done = traj.done
    msg.interrupted = traj.interrupted
    msg.episode_return = float(traj.episode_return)
    msg.episode_length = int(traj.episode_length)
    if traj.memories is not None:
        tensor.to_proto(np.asarray(traj.memories, np.float32), msg.memories)
    msg.group_id = int(traj.group_id)
    msg.group_continues = bool(traj.group_continues)
    if traj.group_rewards is not None:
        tensor.to_proto(np.asarray(traj.group_rewards, np.float32), msg.group_rewards)
    if traj.groupmates is not None:
        _groupmates_to_proto(traj.groupmates, msg.groupmates)
    return msg


def _groupmates_to_proto(mates: Groupmates, msg: trainer_pb2.GroupmateSteps) -> None:
    for o in mates.observations:
        tensor.to_proto(np.asarray(o, np.float32), msg.observations.add())
    for o in mates.next_observations:
        tensor.to_proto(np.asarray(o, np.float32), msg.next_observations.add())
    tensor.to_proto(np.asarray(mates.continuous_actions, np.float32), msg.continuous_actions)
    tensor.to_proto(np.asarray(mates.discrete_actions, np.int32), msg.discrete_actions)
    tensor.to_proto(np.asarray(mates.rewards, np.float32), msg.rewards)
    tensor.to_proto(np.asarray(mates.present, bool), msg.present)
    tensor.to_proto(np.asarray(mates.done, bool), msg.done)


def _groupmates_from_proto(msg: trainer_pb2.GroupmateSteps, spec: BehaviorSpec, t: int, name: str) -> Groupmates:
    """Decodes and checks ``Trajectory.groupmates`` (M taken from ``present``)."""
    if len(msg.observations) != len(spec.observations) or len(msg.next_observations) != len(spec.observations):
        raise tensor.TensorError(
            f"{name}: {len(msg.observations)} observations and {len(msg.next_observations)} next observations "
            f"given, behavior {spec.name} has {len(spec.observations)}"
        )
    present = tensor.from_proto(msg.present, name=f"{name}.present", dtype=bool, shape=(t, None))
    m = present.shape[1]
    a = spec.action_spec
    mates = Groupmates(
        observations=[
            tensor.from_proto(o, name=f"{name}.observations[{i}]", dtype=np.float32, shape=(t, m, *ospec.shape))
            for i, (o, ospec) in enumerate(zip(msg.observations, spec.observations))
        ],
        continuous_actions=tensor.from_proto(
            msg.continuous_actions, name=f"{name}.continuous_actions", dtype=np.float32, shape=(t, m, a.continuous_size)
        ),
        discrete_actions=tensor.from_proto(
            msg.discrete_actions, name=f"{name}.discrete_actions", dtype=np.int32, shape=(t, m, a.num_branches)
        ),
        rewards=tensor.from_proto(msg.rewards, name=f"{name}.rewards", dtype=np.float32, shape=(t, m)),
        present=present,
        done=tensor.from_proto(msg.done, name=f"{name}.done", dtype=bool, shape=(t, m)),
        next_observations=[
            tensor.from_proto(o, name=f"{name}.next_observations[{i}]", dtype=np.float32, shape=(None, *ospec.shape))
            for i, (o, ospec) in enumerate(zip(msg.next_observations, spec.observations))
        ],
    )
    if len({o.shape[0] for o in mates.next_observations}) > 1:
        raise tensor.TensorError(f"{name}.next_observations: every observation needs the same number of mates")
    disc = mates.discrete_actions
    if a.num_branches and ((disc < 0).any() or (disc >= np.asarray(a.discrete_branches)).any()):
        raise tensor.TensorError(f"{name}.discrete_actions: values out of the branch sizes {a.discrete_branches}")
    for field_name, arr in (
        ("rewards", mates.rewards),
        ("continuous_actions", mates.continuous_actions),
        *((f"observations[{i}]", o) for i, o in enumerate(mates.observations)),
        *((f"next_observations[{i}]", o) for i, o in enumerate(mates.next_observations)),
    ):
        if not np.isfinite(arr).all():
            raise tensor.TensorError(f"{name}.{field_name}: contains NaN or infinity")
    return mates


def from_proto(msg: trainer_pb2.Trajectory, spec: BehaviorSpec, name: str = "trajectory") -> Trajectory:
    """Decodes a Trajectory and checks it against the behavior's spec.

    Raises:
        tensor.TensorError: naming the field whose dtype, shape or values are wrong.
    """
    t = None
    if len(msg.observations) != len(spec.observations):
        raise tensor.TensorError(
            f"{name}.observations: {len(msg.observations)} given, behavior {spec.name} has "
            f"{len(spec.observations)}"
        )
    if len(msg.next_observations) != len(spec.observations):
        raise tensor.TensorError(
            f"{name}.next_observations: {len(msg.next_observations)} given, behavior has "
            f"{len(spec.observations)}"
        )
    rewards = tensor.from_proto(msg.rewards, name=f"{name}.rewards", dtype=np.float32, shape=(None,))
    t = rewards.shape[0]
    if t == 0:
        raise tensor.TensorError(f"{name}.rewards: a trajectory needs at least one step")
    observations = []
    next_observations = []
    for i, (o, n, ospec) in enumerate(zip(msg.observations, msg.next_observations, spec.observations)):
        observations.append(
            tensor.from_proto(o, name=f"{name}.observations[{i}]", dtype=np.float32, shape=(t, *ospec.shape))
        )
        next_observations.append(
            tensor.from_proto(n, name=f"{name}.next_observations[{i}]", dtype=np.float32, shape=ospec.shape)
        )
    a = spec.action_spec
    cont = tensor.from_proto(
        msg.continuous_actions, name=f"{name}.continuous_actions", dtype=np.float32, shape=(t, a.continuous_size)
    )
    disc = tensor.from_proto(
        msg.discrete_actions, name=f"{name}.discrete_actions", dtype=np.int32, shape=(t, a.num_branches)
    )
    if a.num_branches and ((disc < 0).any() or (disc >= np.asarray(a.discrete_branches)).any()):
        raise tensor.TensorError(f"{name}.discrete_actions: values out of the branch sizes {a.discrete_branches}")
    log_probs = tensor.from_proto(msg.log_probs, name=f"{name}.log_probs", dtype=np.float32, shape=(t,))
    masks = tensor.from_proto(msg.action_masks, name=f"{name}.action_masks", dtype=bool, shape=(t, a.mask_size))
    versions = tensor.from_proto(msg.policy_versions, name=f"{name}.policy_versions", dtype=np.int64, shape=(t,))
    memories = None
    if msg.HasField("memories"):
        memories = tensor.from_proto(msg.memories, name=f"{name}.memories", dtype=np.float32, shape=(t, None))
    group_rewards = None
    if msg.HasField("group_rewards"):
        group_rewards = tensor.from_proto(msg.group_rewards, name=f"{name}.group_rewards", dtype=np.float32, shape=(t,))
    groupmates = None
    if msg.HasField("groupmates"):
        groupmates = _groupmates_from_proto(msg.groupmates, spec, t, f"{name}.groupmates")
    for field_name, arr in (
        *((("memories", memories),) if memories is not None else ()),
        *((("group_rewards", group_rewards),) if group_rewards is not None else ()),
        ("rewards", rewards),
        ("continuous_actions", cont),
        ("log_probs", log_probs),
        *((f"observations[{i}]", o) for i, o in enumerate(observations)),
        *((f"next_observations[{i}]", o) for i, o in enumerate(next_observations)),
    ):
        if not np.isfinite(arr).all():
            raise tensor.TensorError(f"{name}.{field_name}: contains NaN or infinity")
    return Trajectory(
        instance=int(msg.instance),
        agent_id=int(msg.agent_id),
        observations=observations,
        next_observations=next_observations,
        continuous_actions=cont,
        discrete_actions=disc,
        log_probs=log_probs,
        rewards=rewards,
        action_masks=masks,
        policy_versions=versions,
        done=bool(msg.done),
        interrupted=bool(msg.interrupted),
        episode_return=float(msg.episode_return),
        episode_length=int(msg.episode_length),
        memories=memories,
        group_id=int(msg.group_id),
        group_rewards=group_rewards,
        groupmates=groupmates,
        group_continues=bool(msg.group_continues),
    )
