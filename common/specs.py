"""Behavior specs in the user's words, and their conversion to and from the wire.

Why: the gateway reads specs from mlagents-envs, sends them as ``tandem.v1.BehaviorSpec``;
the trainer builds networks from them. One plain, frozen domain type serves all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common import tensor
from tandem.v1 import specs_pb2


@dataclass(frozen=True)
class ObservationSpec:
    """One observation of an agent.

    Attributes:
        name: the sensor name Unity gave.
        shape: per-agent shape; vector ``(size,)``, visual ``(channels, height, width)``
            (channels-first, as Unity sends it and mlagents-envs decodes it).
        dtype: always float32 as mlagents-envs decodes (visual in [0, 1]).
        observation_type: 0 default, 1 goal signal.
        dimension_properties: ML-Agents' DimensionProperty flag per dimension.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    observation_type: int = 0
    dimension_properties: tuple[int, ...] = ()

    @property
    def is_visual(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class ActionSpec:
    continuous_size: int = 0
    discrete_branches: tuple[int, ...] = ()

    @property
    def num_branches(self) -> int:
        return len(self.discrete_branches)

    @property
    def mask_size(self) -> int:
        """Width of the action mask: the sum of the discrete branch sizes."""
        return int(sum(self.discrete_branches))


@dataclass(frozen=True)
class BehaviorSpec:
    """A behavior: its fully qualified name, its observations and its actions."""

    name: str
    observations: tuple[ObservationSpec, ...] = field(default_factory=tuple)
    action_spec: ActionSpec = field(default_factory=ActionSpec)

    @property
    def brain_name(self) -> str:
        """The name without the ``?team=N`` suffix, as ML-Agents config files use it."""
        return self.name.split("?", 1)[0]


def to_proto(spec: BehaviorSpec, out: specs_pb2.BehaviorSpec | None = None) -> specs_pb2.BehaviorSpec:
    msg = out if out is not None else specs_pb2.BehaviorSpec()
    msg.name = spec.name
    for obs in spec.observations:
        msg.observations.add(
            name=obs.name,
            shape=list(obs.shape),
            dtype=tensor.dtype_to_proto(np.dtype(obs.dtype)),
            observation_type=obs.observation_type,
            dimension_properties=list(obs.dimension_properties),
        )
    msg.action_spec.continuous_size = spec.action_spec.continuous_size
    msg.action_spec.discrete_branches[:] = list(spec.action_spec.discrete_branches)
    return msg


def from_proto(msg: specs_pb2.BehaviorSpec) -> BehaviorSpec:
    """Decodes and validates a BehaviorSpec message.

    Raises:
        ValueError: naming the bad field (empty name, non-positive sizes, ...).
    """
    if not msg.name:
        raise ValueError("behavior_spec.name: must not be empty")
    observations = []
    for i, o in enumerate(msg.observations):
        shape = tuple(int(d) for d in o.shape)
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(f"behavior_spec.observations[{i}].shape: must be positive, got {list(shape)}")
        observations.append(
            ObservationSpec(
                name=o.name,
                shape=shape,
                dtype=tensor.dtype_from_proto(o.dtype).name if o.dtype else "float32",
                observation_type=int(o.observation_type),
                dimension_properties=tuple(int(d) for d in o.dimension_properties),
            )
        )
    if msg.action_spec.continuous_size < 0:
        raise ValueError("behavior_spec.action_spec.continuous_size: must be >= 0")
    if any(b <= 0 for b in msg.action_spec.discrete_branches):
        raise ValueError("behavior_spec.action_spec.discrete_branches: sizes must be positive")
    return BehaviorSpec(
        name=msg.name,
        observations=tuple(observations),
        action_spec=ActionSpec(
            continuous_size=int(msg.action_spec.continuous_size),
            discrete_branches=tuple(int(b) for b in msg.action_spec.discrete_branches),
        ),
    )


def from_mlagents(name: str, spec) -> BehaviorSpec:
    """Converts an ``mlagents_envs.base_env.BehaviorSpec``."""
    observations = tuple(
        ObservationSpec(
            name=o.name,
            shape=tuple(int(d) for d in o.shape),
            observation_type=int(o.observation_type.value),
            dimension_properties=tuple(int(d.value) for d in o.dimension_property),
        )
        for o in spec.observation_specs
    )
    return BehaviorSpec(
        name=name,
        observations=observations,
        action_spec=ActionSpec(
            continuous_size=int(spec.action_spec.continuous_size),
            discrete_branches=tuple(int(b) for b in spec.action_spec.discrete_branches),
        ),
    )
