"""POCA's learner: group returns and baselines against plain loops, agents that leave early,
padding for variable group sizes without recompiling, checkpoints, and the actor's three forms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from common.architecture import make_snapshot
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Groupmates, Trajectory
from gateway.actor.numpy_policy import NumpyPolicy
from gateway.actor.onnx_policy import OnnxPolicy
from learning_helpers import trainer_settings
from trainer_server.learning import poca
from trainer_server.learning.registry import make_learner, trainer_types
from trainer_server.onnx_export import export_policy_bytes

SPEC = BehaviorSpec("Team?team=0", (ObservationSpec("VectorSensor_size4", (4,)),), ActionSpec(1, (3,)))
GAMMA, LAMBD = 0.9, 0.8


def settings(**overrides):
    values = dict(batch_size=16, buffer_size=32, hidden_units=16, num_layers=1, gamma=GAMMA, lambd=LAMBD, time_horizon=16)
    values.update(overrides)
    return trainer_settings("poca", **values)


def fragment(t, mates, seed=0, done=False, interrupted=False, group_continues=False, next_mates=None, mate_rewards=0.0):
    """A trajectory of ``t`` steps with ``mates`` groupmates at every step."""
    rng = np.random.default_rng(seed)
    k = mates if next_mates is None else next_mates
    groupmates = Groupmates(
        observations=[rng.normal(size=(t, mates, 4)).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, mates, 1)).astype(np.float32),
        discrete_actions=rng.integers(0, 3, (t, mates, 1)).astype(np.int32),
        rewards=np.full((t, mates), mate_rewards, np.float32),
        present=np.ones((t, mates), bool),
        done=np.zeros((t, mates), bool),
        next_observations=[rng.normal(size=(k, 4)).astype(np.float32)],
    )
    return Trajectory(
        instance=0, agent_id=seed, observations=[rng.normal(size=(t, 4)).astype(np.float32)],
        next_observations=[rng.normal(size=4).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, 1)).astype(np.float32),
        discrete_actions=rng.integers(0, 3, (t, 1)).astype(np.int32),
        log_probs=np.full(t, -2.0, np.float32), rewards=rng.normal(size=t).astype(np.float32),
        action_masks=np.zeros((t, 3), bool), policy_versions=np.zeros(t, np.int64), done=done, interrupted=interrupted,
        group_id=1, group_rewards=rng.normal(size=t).astype(np.float32), groupmates=groupmates,
        group_continues=group_continues,
    )


def loop_lambda_returns(rewards, values, value_next):
    """ML-Agents' ``lambda_return`` as a plain loop."""
    returns = np.zeros(len(rewards))
    returns[-1] = rewards[-1] + GAMMA * value_next
    for t in reversed(range(len(rewards) - 1)):
        returns[t] = GAMMA * LAMBD * returns[t + 1] + rewards[t] + (1 - LAMBD) * GAMMA * values[t + 1]
    return returns


def critic_values(learner, trajectory):
    """(V per step, baseline per step, V after the last step) from the learner's critic, unpadded."""
    mates = trajectory.groupmates
    flat = poca.flat_actions(SPEC, mates.continuous_actions, mates.discrete_actions)
    values, baselines = poca.values_and_baselines(
        learner._state.params["critic"], learner.policy_architecture, [jnp.asarray(trajectory.observations[0])],
        [jnp.asarray(mates.observations[0])], jnp.asarray(flat), jnp.asarray(mates.present, jnp.float32), None,
        float(learner.max_agents),
    )
    nxt, _ = poca.values_and_baselines(
        learner._state.params["critic"], learner.policy_architecture, [jnp.asarray(trajectory.next_observations[0])[None]],
        [jnp.asarray(mates.next_observations[0])[None]], jnp.zeros((1, len(mates.next_observations[0]), 4)),
        jnp.ones((1, len(mates.next_observations[0]))), None, float(learner.max_agents),
    )
    return np.asarray(values), np.asarray(baselines), float(nxt[0])


def test_poca_is_a_registered_trainer_type():
    assert "poca" in trainer_types()
    learner = make_learner(SPEC, settings(), 0)
    assert isinstance(learner, poca.POCALearner) and learner.architecture().collect_groupmates


def test_lambda_returns_match_mlagents_loop_and_ignore_padding():
    rng = np.random.default_rng(3)
    rewards, values = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    mask = np.arange(10) < 7
    got = poca.lambda_returns(jnp.asarray(np.r_[rewards, [5, 5, 5]]), jnp.asarray(np.r_[values, [9, 9, 9]]), jnp.asarray(0.7), jnp.asarray(mask), GAMMA, LAMBD)
    np.testing.assert_allclose(np.asarray(got)[:7], loop_lambda_returns(rewards, values, 0.7), rtol=1e-5, atol=1e-6)
    assert not np.asarray(got)[7:].any()


@pytest.mark.parametrize(
    ("done", "interrupted", "group_continues", "bootstraps"),
    [
        (False, False, False, True),  # cut at time_horizon
        (True, False, False, False),  # the whole group's episode ended
        (True, True, False, True),  # interrupted
        (True, False, True, True),  # the agent left early, its group went on: credited through the group's value
    ],
)
def test_returns_and_advantages_follow_the_group_rules(done, interrupted, group_continues, bootstraps):
    learner = poca.POCALearner(SPEC, settings(), 0)
    trajectory = fragment(9, 2, seed=1, done=done, interrupted=interrupted, group_continues=group_continues, mate_rewards=0.5)
    learner.process_trajectory(trajectory)
    values, baselines, value_next = critic_values(learner, trajectory)
    # POCA's extrinsic reward: own + groupmates' own + the group's
    rewards = trajectory.rewards + trajectory.group_rewards + 2 * 0.5
    want = loop_lambda_returns(rewards, values, value_next if bootstraps else 0.0)
    data = learner.rollout_buffer.chronological()
    np.testing.assert_allclose(data["values"], values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["baselines"], baselines, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["returns"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["advantages"], want - baselines, rtol=1e-4, atol=1e-5)
    assert learner.step == 9


def test_baseline_depends_on_the_groupmates_actions_and_the_value_does_not():
    learner = poca.POCALearner(SPEC, settings(), 0)
    trajectory = fragment(6, 2, seed=2)
    values, baselines, _ = critic_values(learner, trajectory)
    trajectory.groupmates.continuous_actions += 1.0
    other_values, other_baselines, _ = critic_values(learner, trajectory)
    np.testing.assert_allclose(values, other_values, rtol=1e-6)
    assert np.abs(baselines - other_baselines).max() > 1e-4


def test_padding_groupmates_changes_no_value():
    learner = poca.POCALearner(SPEC, settings(), 0)
    trajectory = fragment(5, 2, seed=4)
    values, baselines, _ = critic_values(learner, trajectory)
    mates = trajectory.groupmates
    padded = Groupmates(
        observations=[np.concatenate([mates.observations[0], np.full((5, 5, 4), 7.0, np.float32)], axis=1)],
        continuous_actions=np.concatenate([mates.continuous_actions, np.ones((5, 5, 1), np.float32)], axis=1),
        discrete_actions=np.concatenate([mates.discrete_actions, np.ones((5, 5, 1), np.int32)], axis=1),
        rewards=np.zeros((5, 7), np.float32), present=np.c_[mates.present, np.zeros((5, 5), bool)],
        done=np.zeros((5, 7), bool), next_observations=mates.next_observations,
    )
    trajectory.groupmates = padded
    padded_values, padded_baselines, _ = critic_values(learner, trajectory)
    np.testing.assert_allclose(padded_values, values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded_baselines, baselines, rtol=1e-5, atol=1e-6)


def test_groups_of_two_to_four_agents_and_lone_agents_share_one_compilation():
    learner = poca.POCALearner(SPEC, settings(), 0)
    for seed, mates in enumerate((1, 2, 3, 0, 2)):
        learner.process_trajectory(fragment(10, mates, seed=seed))
    lone = fragment(7, 1, seed=9)
    lone.groupmates, lone.group_rewards = None, None  # an agent without a group
    learner.process_trajectory(lone)
    assert learner.ready()
    metrics = learner.update()
    learner.process_trajectory(fragment(12, 3, seed=11))
    assert learner.trace_counts == {"update": 1, "process": 1, "act": 0}
    assert learner.max_agents == 4 and learner.mates == 3
    for tag in ("Losses/Policy Loss", "Losses/Value Loss", "Losses/Baseline Loss", "Policy/Extrinsic Baseline Estimate",
                "Policy/Extrinsic Value Estimate", "Policy/Learning Rate", "Policy/Beta", "Policy/Epsilon"):
        assert np.isfinite(metrics[tag]), tag
    learner.process_trajectory(fragment(10, 6, seed=12))  # a group of 7: the capacity grows, the buffer is padded
    assert learner.mates == 7 and learner.buffered_steps == 47


def test_group_cumulative_reward_counts_whole_groups_not_agents_that_left():
    learner = poca.POCALearner(SPEC, settings(), 0)
    left = fragment(4, 1, seed=1, done=True, group_continues=True)
    stayed = [fragment(5, 1, seed=2), fragment(3, 1, seed=2, done=True)]
    for trajectory in (left, *stayed):
        learner.process_trajectory(trajectory)
    while not learner.ready():
        learner.process_trajectory(fragment(8, 1, seed=3))
    metrics = learner.update()
    want = float(stayed[0].group_rewards.sum() + stayed[1].group_rewards.sum())
    assert metrics[poca.GROUP_REWARD] == pytest.approx(want, rel=1e-5)


def test_checkpoint_round_trip_resumes_exactly():
    learner = poca.POCALearner(SPEC, settings(), 0)
    for seed in range(5):
        learner.process_trajectory(fragment(10, 2, seed=seed))
    learner.update()
    learner.process_trajectory(fragment(6, 5, seed=8))
    state = learner.state_dict()
    other = poca.POCALearner(SPEC, settings(), 1)
    other.load_state_dict(state)
    assert other.step == learner.step and other.buffered_steps == learner.buffered_steps and other.mates == 7
    for name, value in learner.policy_parameters().items():
        np.testing.assert_array_equal(other.policy_parameters()[name], value)
    with pytest.raises(ValueError, match="not a POCA learner state"):
        other.load_state_dict({**state, "algorithm": "ppo"})


def test_snapshot_numpy_onnx_and_jax_actors_agree():
    learner = poca.POCALearner(SPEC, settings(), 0)
    for seed in range(4):
        learner.process_trajectory(fragment(10, 2, seed=seed))
    learner.update()  # trained weights, not the initial ones
    arch, params = learner.architecture(), learner.policy_parameters()
    snapshot = make_snapshot(SPEC.name, 1, arch, params)
    assert snapshot.architecture.collect_groupmates
    numpy_policy = NumpyPolicy.from_snapshot(snapshot)
    onnx_policy = OnnxPolicy(export_policy_bytes(arch, params), spec=SPEC)
    obs = [np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)]
    mask = np.zeros((6, 3), bool)
    mask[0, 1] = True
    jax_out = learner.act(obs, mask, deterministic=True)
    numpy_out = numpy_policy.act(obs, mask, np.random.default_rng(0), deterministic=True)
    onnx_out = onnx_policy.act(obs, mask, deterministic=True)
    for out in (numpy_out, onnx_out):
        np.testing.assert_allclose(out.env_continuous, jax_out.env_continuous, atol=1e-5)
        np.testing.assert_array_equal(out.discrete, jax_out.discrete)


def test_a_large_group_first_grows_the_empty_buffer():
    learner = poca.POCALearner(SPEC, settings(), 0)
    learner.process_trajectory(fragment(10, 6, seed=1))
    assert learner.mates == 7 and learner.buffered_steps == 10
    assert learner.rollout_buffer.chronological()["mate_present"].shape == (10, 7)
