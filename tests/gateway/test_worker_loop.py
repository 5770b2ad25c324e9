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


def _memory_snapshot(horizon: int) -> tuple[bytes, NumpyPolicy]:
    arch = PolicyArchitecture(SPEC, hidden_units=8, num_layers=1, memory_size=6, sequence_length=2)
    rng = np.random.default_rng(0)
    params = {name: rng.normal(0.0, 0.5, shape).astype(np.float32) for name, shape in parameter_shapes(arch).items()}
    return make_snapshot(SPEC.name, 3, arch, params, time_horizon=horizon).SerializeToString(), NumpyPolicy(arch, params)


def test_lstm_memory_is_carried_per_agent_across_cuts_and_reset_at_episode_ends():
    from gateway.env.messages import Experience

    pipe = _Pipe()
    instance = SimpleNamespace(specs={SPEC.name: SPEC}, drain_stats=lambda: [])
    actor = InstanceActor(SimpleNamespace(index=0, instance=instance), pipe=pipe, config=ActorWorkerConfig())
    raw, reference = _memory_snapshot(horizon=2)
    actor._set_snapshot(SPEC.name, 3, raw)
    rng = np.random.default_rng(1)
    expected = {0: np.zeros(6, np.float32), 1: np.zeros(6, np.float32)}  # memory each agent acts from next
    acted_from: list[dict[int, np.ndarray]] = []
    for step in range(5):
        dec = _decisions(2)
        dec.observations = [rng.standard_normal((2, 4)).astype(np.float32)]
        term = _decisions(0)
        if step == 3:  # agent 0's episode ends and it starts the next one with the same id
            term = _decisions(1)
            term.action_mask, term.interrupted = None, np.zeros(1, bool)
            expected[0] = np.zeros(6, np.float32)
        actor.current = actor.unobserved = {SPEC.name: (dec, term)}
        acted_from.append({a: expected[a].copy() for a in (0, 1)})
        actions, acted = actor._act()
        actor._bookkeeping(acted)
        _, after = reference.recurrent(reference.hidden(dec.observations), np.stack([expected[0], expected[1]]))
        expected = {0: after[0], 1: after[1]}
        for agent in (0, 1):  # what the actor keeps is what the reference LSTM gives
            np.testing.assert_allclose(actor.memories[SPEC.name].take(np.array([agent]))[0], expected[agent], atol=1e-6)
    actor._flush(force=True)
    fragments = [t for m in pipe.sent if isinstance(m, Experience) for t in m.trajectories]
    by_agent = {a: [t for t in fragments if t.agent_id == a] for a in (0, 1)}
    # horizon 2: steps 0-1 form a fragment; step 2 starts the next one with the memory the cut left
    first, second = by_agent[1][:2]
    np.testing.assert_allclose(first.memories, [acted_from[0][1], acted_from[1][1]], atol=1e-6)
    np.testing.assert_allclose(second.memories[0], acted_from[2][1], atol=1e-6)
    assert np.abs(second.memories[0]).max() > 1e-3
    # agent 0's terminal at step 3 ended its fragment; the new episode acted from zeros
    assert by_agent[0][1].done and len(by_agent[0][1]) == 1  # step 2, ended by the terminal of step 3
    assert not acted_from[3][0].any() and np.abs(acted_from[3][1]).max() > 1e-3
    actor._end_open_episodes()  # a reset or a failed instance: every memory is forgotten
    assert len(actor.memories[SPEC.name]) == 0
