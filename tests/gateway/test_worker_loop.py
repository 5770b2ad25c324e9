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


class _ParameterInstance:
    """An instance that records parameter values and resets (no Unity)."""

    def __init__(self) -> None:
        self.specs = {SPEC.name: SPEC}
        self.values: dict = {}
        self.resets = 0

    def set_parameter_values(self, values: dict) -> bool:
        changed = any(self.values.get(k) != v for k, v in values.items())
        self.values.update(values)
        return changed

    def reset(self):
        self.resets += 1
        return {SPEC.name: (_decisions(2), _decisions(0))}

    def new_behaviors(self):
        return []

    def drain_stats(self):
        return []


class _Pipe:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


def test_trainer_parameters_reset_only_when_they_must():
    from gateway.env.messages import ApplyParameters, Experience
    from gateway.env.parameters import ParameterValue

    instance, pipe = _ParameterInstance(), _Pipe()
    actor = InstanceActor(SimpleNamespace(index=0, instance=instance), pipe=pipe, config=ActorWorkerConfig())
    low, high = {"wall": ParameterValue.constant(2.0)}, {"wall": ParameterValue.constant(4.0)}
    actor._handle(ApplyParameters(low, False, 1))  # before the first reset: it goes with that reset
    assert (instance.resets, actor.parameters_generation) == (0, 1)
    actor.started = True
    actor._handle(ApplyParameters(low, False, 1))  # the same values again (a reconnect): nothing to do
    assert instance.resets == 0
    actor._handle(ApplyParameters(high, False, 2))  # a lesson change without require_reset: next episodes
    assert instance.resets == 0 and instance.values == high and actor.parameters_generation == 2

    # an open trajectory, then a lesson change with require_reset: it ends interrupted, stamped with its generation
    actor._set_snapshot(SPEC.name, 3, _snapshot(16))
    for _ in range(2):  # two steps: the first one gets its reward with the second answer
        actor.current = actor.unobserved = {SPEC.name: (_decisions(2), _decisions(0))}
        actions, acted = actor._act()
        actor._bookkeeping(acted)
    actor._handle(ApplyParameters({"wall": ParameterValue.constant(6.0)}, True, 3))
    assert instance.resets == 1 and actor.parameter_resets == 1 and actor.parameters_generation == 3
    [experience] = [m for m in pipe.sent if isinstance(m, Experience)]
    assert experience.parameters_generation == 2
    assert experience.trajectories and all(t.interrupted for t in experience.trajectories)


def test_first_trainer_values_after_the_first_reset_reset_again():
    from gateway.env.messages import ApplyParameters
    from gateway.env.parameters import ParameterValue

    instance = _ParameterInstance()
    actor = InstanceActor(SimpleNamespace(index=0, instance=instance), pipe=_Pipe(), config=ActorWorkerConfig())
    actor.started = True  # the instance reset to learn its behaviors before Hello
    actor._handle(ApplyParameters({"gravity": ParameterValue.constant(20.0)}, False, 1))
    assert instance.resets == 1
