"""What the trainer accepts from gateways beyond dtypes and shapes: bounds checked at the edge.

Why: finite but extreme values poison training silently (observations of 1e20 overflow the
float32 normalizer's variance, log-probabilities of -1e30 or rewards of 1e30 make the policy
and the optimizer state infinite), and a ~60-byte ``BehaviorSpec`` with huge shapes makes the
trainer allocate networks of gigabytes. Everything a gateway sends is checked against the
bounds below before anything is queued or allocated; a value out of bounds is refused with
INVALID_ARGUMENT naming the field, the trajectory and the behavior. The bounds are stated in
``protos/tandem/v1/trainer.proto`` and ``specs.proto`` comments and in README's "Limits the
trainer enforces"; real Unity environments stay far inside them.

The update itself is guarded too (``trainer_server.learning.shared.keep_finite``): an update
whose result is not finite is skipped; see ``BehaviorRun``.
"""

from __future__ import annotations

import math

import numpy as np

from common.tensor import TensorError
from common.trajectory import Trajectory
from tandem.v1 import specs_pb2

#: largest magnitude of an observation value (vector or visual): the normalizer's float32
#: variance must stay finite over billions of steps
MAX_ABS_OBSERVATION = 1e6
#: largest magnitude of a reward: a discounted return stays below ~1e10 (gamma 0.9999), its
#: square (the value loss, Adam's second moment) far below float32's 3.4e38
MAX_ABS_REWARD = 1e6
#: largest magnitude of a joint log-probability of the action taken (what a policy samples
#: is typically within +-100)
MAX_ABS_LOG_PROB = 1e4
#: largest magnitude of a continuous action (unclipped samples; typically within +-10)
MAX_ABS_CONTINUOUS_ACTION = 1e4
#: largest magnitude of ``Trajectory.episode_return`` (statistics and curricula only)
MAX_ABS_EPISODE_RETURN = 1e15

#: a behavior name's length in characters (``3DBall?team=0``)
MAX_BEHAVIOR_NAME = 512
#: observations per behavior
MAX_OBSERVATIONS = 64
#: elements of one observation by its rank: vector, 2-D (buffer sensors), 3-D (visual, grid)
MAX_OBSERVATION_ELEMENTS = {1: 16_384, 2: 65_536, 3: 131_072}
#: height and width of a 3-D observation (the visual encoder's first dense layer grows with both)
MAX_VISUAL_SIDE = 256
#: elements of all of a behavior's observations together, and of its vector observations
#: together (they share one encoder): with the default network (128 units) the largest spec's
#: PPO learner holds about 200 MB (parameters and Adam's moments), not gigabytes
MAX_TOTAL_ELEMENTS = 131_072
MAX_VECTOR_ELEMENTS = 16_384
#: continuous action size, and number and size of discrete branches
MAX_CONTINUOUS_ACTIONS = 256
MAX_DISCRETE_BRANCHES = 32
MAX_BRANCH_SIZE = 256
#: behaviors one run registers at most (each has a learner)
MAX_BEHAVIORS = 64

_VALUE_BOUNDS = (
    ("rewards", MAX_ABS_REWARD),
    ("log_probs", MAX_ABS_LOG_PROB),
    ("continuous_actions", MAX_ABS_CONTINUOUS_ACTION),
)


def check_spec_message(msg: specs_pb2.BehaviorSpec, field_name: str) -> None:
    """Checks a ``BehaviorSpec`` message's sizes before anything is decoded or allocated.

    Raises:
        ValueError: naming the field (``hello.behaviors[0].observations[1].shape``) and the bound.
    """
    if len(msg.name) > MAX_BEHAVIOR_NAME:
        raise ValueError(f"{field_name}.name: {len(msg.name)} characters, at most {MAX_BEHAVIOR_NAME}")
    if len(msg.observations) > MAX_OBSERVATIONS:
        raise ValueError(f"{field_name}.observations: {len(msg.observations)} given, at most {MAX_OBSERVATIONS}")
    for i, o in enumerate(msg.observations):
        shape = list(o.shape)
        limit = MAX_OBSERVATION_ELEMENTS.get(len(shape))
        if limit is None:
            raise ValueError(f"{field_name}.observations[{i}].shape: rank {len(shape)}, the trainer takes 1 to 3")
        if any(d <= 0 for d in shape):
            continue  # common.specs.from_proto names it
        elements = math.prod(shape)
        if elements > limit:
            raise ValueError(
                f"{field_name}.observations[{i}].shape: {shape} has {elements} elements, "
                f"at most {limit} for a rank-{len(shape)} observation"
            )
        if len(shape) == 3 and max(shape[1:]) > MAX_VISUAL_SIDE:
            raise ValueError(
                f"{field_name}.observations[{i}].shape: {shape}: height and width at most {MAX_VISUAL_SIDE}"
            )
    sizes = [(len(o.shape), math.prod(o.shape)) for o in msg.observations if all(d > 0 for d in o.shape)]
    for what, total, limit in (
        ("elements together", sum(n for _, n in sizes), MAX_TOTAL_ELEMENTS),
        ("vector elements together", sum(n for rank, n in sizes if rank == 1), MAX_VECTOR_ELEMENTS),
    ):
        if total > limit:
            raise ValueError(f"{field_name}.observations: {total} {what}, at most {limit}")
    a = msg.action_spec
    if a.continuous_size > MAX_CONTINUOUS_ACTIONS:
        raise ValueError(f"{field_name}.action_spec.continuous_size: {a.continuous_size}, at most {MAX_CONTINUOUS_ACTIONS}")
    if len(a.discrete_branches) > MAX_DISCRETE_BRANCHES:
        raise ValueError(
            f"{field_name}.action_spec.discrete_branches: {len(a.discrete_branches)} branches, "
            f"at most {MAX_DISCRETE_BRANCHES}"
        )
    if any(b > MAX_BRANCH_SIZE for b in a.discrete_branches):
        raise ValueError(f"{field_name}.action_spec.discrete_branches: a branch size above {MAX_BRANCH_SIZE}")


def _out_of_bounds(values: np.ndarray, bound: float) -> str | None:
    if not values.size or -bound <= values.min() and values.max() <= bound:  # the usual case: no copy
        return None
    bad = np.flatnonzero(np.abs(values.reshape(-1)) > bound)
    return f"{bad.size} value(s) outside [-{bound:g}, {bound:g}] (e.g. {values.reshape(-1)[bad[0]]:g})"


def check_trajectory_values(trajectory: Trajectory, name: str, behavior: str) -> None:
    """Checks a decoded (finite) trajectory's values against the trainer's bounds.

    Args:
        trajectory: decoded by ``common.trajectory.from_proto`` (shapes and finiteness checked).
        name: how the trajectory is named in errors (``chunk 7: trajectories[3]``).
        behavior: its behavior's name, for the error.

    Raises:
        TensorError: naming the field, the trajectory and the behavior.
    """
    fields = [(f, getattr(trajectory, f), bound) for f, bound in _VALUE_BOUNDS]
    fields += [(f"observations[{i}]", o, MAX_ABS_OBSERVATION) for i, o in enumerate(trajectory.observations)]
    fields += [(f"next_observations[{i}]", o, MAX_ABS_OBSERVATION) for i, o in enumerate(trajectory.next_observations)]
    for field_name, values, bound in fields:
        problem = _out_of_bounds(np.asarray(values), bound)
        if problem:
            raise TensorError(f"{name}.{field_name} (behavior {behavior}): {problem}")
    ret = trajectory.episode_return
    if not (math.isfinite(ret) and abs(ret) <= MAX_ABS_EPISODE_RETURN):
        raise TensorError(
            f"{name}.episode_return (behavior {behavior}): {ret:g} is not finite or outside "
            f"[-{MAX_ABS_EPISODE_RETURN:g}, {MAX_ABS_EPISODE_RETURN:g}]"
        )
    if trajectory.episode_length < 0:
        raise TensorError(f"{name}.episode_length (behavior {behavior}): {trajectory.episode_length} is negative")


def check_stat_value(value: float, name: str) -> None:
    """A side-channel statistic must be finite (TensorBoard and the console average it).

    Raises:
        TensorError: naming the stat.
    """
    if not math.isfinite(value):
        raise TensorError(f"{name}: {value} is not finite")
