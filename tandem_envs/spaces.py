"""Gymnasium spaces from a behavior spec, and the conversions between them and the gateway's arrays.

Why: the Gymnasium and PettingZoo adapters show the same spaces for the same behavior:

* observations: one sensor -> ``Box``; several -> ``Dict`` keyed by sensor name (Unity's
  order; a repeated or empty name gets ``obs<i>``). Vector sensors are unbounded float32,
  visual ones float32 in [0, 1], channels-first ``(C, H, W)`` as Unity sends them;
* actions: continuous -> ``Box(-1, 1, (c,))`` float32 (ML-Agents' range; the gateway
  passes any finite value on); one discrete branch -> ``Discrete``; several ->
  ``MultiDiscrete``; both kinds -> ``Dict(continuous=..., discrete=...)``;
* action masks: Gymnasium's convention, int8 ``[sum(branches)]`` with 1 = allowed (what
  ``Discrete.sample(mask=...)`` and sb3-contrib's ``MaskablePPO`` take), the inverse of
  ML-Agents' ``DecisionSteps.action_mask`` (true = not allowed).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from common.specs import BehaviorSpec
from gateway.remote.agent_slots import sensor_names


def _box(shape: tuple[int, ...], visual: bool) -> spaces.Box:
    if visual:
        return spaces.Box(0.0, 1.0, shape, np.float32)
    return spaces.Box(-np.inf, np.inf, shape, np.float32)


def observation_space(spec: BehaviorSpec) -> spaces.Space:
    """``Box`` for one sensor, ``Dict`` of them for several."""
    boxes = [_box(o.shape, o.is_visual) for o in spec.observations]
    if len(boxes) == 1:
        return boxes[0]
    return spaces.Dict(dict(zip(sensor_names(spec), boxes)))


def action_space(spec: BehaviorSpec) -> spaces.Space:
    """``Box``, ``Discrete``, ``MultiDiscrete`` or ``Dict(continuous, discrete)``."""
    a = spec.action_spec
    parts: dict[str, spaces.Space] = {}
    if a.continuous_size:
        parts["continuous"] = spaces.Box(-1.0, 1.0, (a.continuous_size,), np.float32)
    if a.num_branches == 1:
        parts["discrete"] = spaces.Discrete(a.discrete_branches[0])
    elif a.num_branches > 1:
        parts["discrete"] = spaces.MultiDiscrete(np.asarray(a.discrete_branches, np.int64))
    if not parts:
        raise ValueError(f"behavior {spec.name!r} has no actions")
    if len(parts) == 1:
        return next(iter(parts.values()))
    return spaces.Dict(parts)


def observation_rows(spec: BehaviorSpec, arrays: list[np.ndarray], rows) -> object:
    """The observation of ``rows`` (an index or a slice/array of them) from per-sensor ``[n, *shape]`` arrays.

    Copies: the adapters never hand out arrays they write to later.
    """
    if len(arrays) == 1:
        return np.array(arrays[0][rows], np.float32)
    return {k: np.array(a[rows], np.float32) for k, a in zip(sensor_names(spec), arrays)}


def split_actions(spec: BehaviorSpec, actions, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched actions of the batched ``action_space`` -> (float32 ``[n, c]``, int32 ``[n, b]``).

    Raises:
        ValueError: naming what does not have the expected shape.
    """
    a = spec.action_spec
    if isinstance(actions, dict):
        cont, disc = actions.get("continuous"), actions.get("discrete")
    elif a.continuous_size:
        cont, disc = actions, None
    else:
        cont, disc = None, actions
    continuous = np.zeros((n, a.continuous_size), np.float32)
    discrete = np.zeros((n, a.num_branches), np.int32)
    if a.continuous_size:
        if cont is None:
            raise ValueError("actions: the continuous part is missing")
        continuous = _shaped(cont, np.float32, (n, a.continuous_size), "continuous actions")
    if a.num_branches:
        if disc is None:
            raise ValueError("actions: the discrete part is missing")
        discrete = _shaped(disc, np.int32, (n, a.num_branches), "discrete actions")
    return continuous, discrete


def _shaped(values, dtype, shape: tuple[int, int], what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size != shape[0] * shape[1]:
        raise ValueError(f"{what}: expected {shape[0]} x {shape[1]} values, got shape {array.shape}")
    return np.ascontiguousarray(array.reshape(shape), dtype)


def allowed(mask_not_allowed: np.ndarray) -> np.ndarray:
    """ML-Agents' mask (true = not allowed) -> Gymnasium's (int8, 1 = allowed)."""
    return (~mask_not_allowed).astype(np.int8)
