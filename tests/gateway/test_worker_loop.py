"""The actor loop inside a worker: what a snapshot sets up (policy, time horizon), without Unity."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from common.architecture import PolicyArchitecture, make_snapshot, parameter_shapes
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor.numpy_policy import NumpyPolicy
from gateway.actor.worker_loop import DEFAULT_TIME_HORIZON, ActorWorkerConfig, InstanceActor, time_horizon
from gateway.env.steps import StepBatch

SPEC = BehaviorSpec("Ball?team=0", (ObservationSpec("vector", (4,)),), ActionSpec(continuous_size=2))


def _actor() -> InstanceActor:
    instance = SimpleNamespace(specs={SPEC.name: SPEC}, drain_stats=lambda: [])
    return InstanceActor(SimpleNamespace(index=0, instance=instance), pipe=None, config=ActorWorkerConfig())


def _snapshot(horizon: int) -> bytes:
    arch = PolicyArchitecture(SPEC, hidden_units=8, num_layers=1)
    params = {name: np.zeros(shape, np.float32) for name, shape in parameter_shapes(arch).items()}
    return make_snapshot(SPEC.name, 3, arch, params, time_horizon=horizon).SerializeToString()


def _decisions(n: int) -> StepBatch:
    return StepBatch(
        observations=[np.zeros((n, 4), np.float32)],
        rewards=np.zeros(n, np.float32),
        agent_ids=np.arange(n, dtype=np.int32),
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.zeros(n, np.float32),
        action_mask=np.zeros((n, 0), bool),
    )


def test_time_horizon_zero_means_ml_agents_default():
    assert DEFAULT_TIME_HORIZON == 64
    assert time_horizon(0) == 64
    assert time_horizon(5) == 5
    assert time_horizon(1000) == 1000


@pytest.mark.parametrize("horizon, expected", [(0, 64), (12, 12)])
def test_a_snapshot_sets_the_policy_and_the_trajectory_length(horizon, expected):
    actor = _actor()
    actor._set_snapshot(SPEC.name, 3, _snapshot(horizon))
    entry = actor.policies[SPEC.name]
    assert isinstance(entry.policy, NumpyPolicy)
    assert (entry.version, entry.deterministic, entry.time_horizon) == (3, False, expected)
    actor.current = {SPEC.name: (_decisions(2), _decisions(0))}
    actions, acted = actor._act()
    assert actions[SPEC.name].continuous.shape == (2, 2)
    actor._bookkeeping(acted)
    assert actor.builders[SPEC.name].time_horizon == expected
