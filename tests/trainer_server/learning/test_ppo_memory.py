"""PPO with memory: sequence batching (padding, loss masks, initial memories), the critic's
memory carried across fragments and reset at episode ends, training and acting agree."""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory, from_proto, to_proto
from gateway.actor.numpy_policy import NumpyPolicy
from learning_helpers import trainer_settings
from trainer_server.learning import networks, ppo
from trainer_server.learning.ppo import PPOLearner

SPEC = BehaviorSpec("Mem?team=0", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))
M, L = 8, 3


def _learner(**overrides) -> PPOLearner:
    values = dict(batch_size=6, buffer_size=12, time_horizon=8, hidden_units=8, num_layers=1,
                  memory={"memory_size": M, "sequence_length": L})
    values.update(overrides)
    return PPOLearner(SPEC, trainer_settings("ppo", **values), seed=3)


def _acted(learner: PPOLearner, t: int, agent: int = 0, seed: int = 0, done: bool = False, memory=None) -> Trajectory:
    """t steps the learner's policy acted (memories carried from ``memory``, zeros by default)."""
    rng = np.random.default_rng(seed)
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    obs = rng.standard_normal((t, 3)).astype(np.float32)
    mem = np.zeros((1, M), np.float32) if memory is None else memory
    rows = []
    for i in range(t):
        out = policy.act([obs[i : i + 1]], None, rng, memories=mem)
        rows.append((mem[0], out))
        mem = out.memories
    return Trajectory(
        instance=0, agent_id=agent, observations=[obs], next_observations=[rng.standard_normal(3).astype(np.float32)],
        continuous_actions=np.concatenate([o.continuous for _, o in rows]),
        discrete_actions=np.concatenate([o.discrete for _, o in rows]),
        log_probs=np.concatenate([o.log_probs for _, o in rows]),
        rewards=rng.standard_normal(t).astype(np.float32), action_masks=np.zeros((t, 2), bool),
        policy_versions=np.zeros(t, np.int64), done=done, memories=np.stack([m for m, _ in rows]),
    )


def _critic_run(learner: PPOLearner, observations: np.ndarray, memory: np.ndarray):
    """The critic along consecutive steps: (values [T], memories before each step [T, M])."""
    params = learner._state.params
    values, before = networks.critic_trace(
        params["actor"], params["critic"], learner.policy_architecture, [jnp.asarray(observations)], None, False,
        jnp.asarray(memory),
    )
    return np.asarray(values), np.asarray(before)


def test_a_fragment_enters_the_buffer_as_sequences_padded_at_its_end():
    learner = _learner()
    traj = _acted(learner, 7)
    learner.process_trajectory(traj)
    data = learner.rollout_buffer.chronological()
    assert learner.rollout_buffer.size == 9 and learner.step == 7  # padded rows count in the buffer, not in steps
    np.testing.assert_array_equal(data["loss_masks"], [1, 1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(data["memories"][:7], traj.memories)
    assert not data["memories"][7:].any() and not data["observations"][0][7:].any() and not data["advantages"][7:].any()
    # the critic's memory of each row is the one at the start of its sequence (rows 0, 3, 6)
    _, before = _critic_run(learner, traj.observations[0], np.zeros(M, np.float32))
    for row in range(7):  # padding rows hold zeros, as ML-Agents pads (only a sequence's first row is read)
        np.testing.assert_allclose(data["critic_memories"][row], before[row // L * L], atol=1e-6)
    assert np.abs(before[6]).max() > 1e-3
    # acted by the current policy: the per-dimension log-probs recomputed from the stored memories sum to the acting ones
    np.testing.assert_allclose(data["log_probs"][:7].sum(1), traj.log_probs, atol=1e-4)


def test_the_critic_memory_is_carried_across_cuts_and_reset_when_the_episode_ends():
    learner = _learner()
    first = _acted(learner, 5, agent=4, seed=1)
    second = _acted(learner, 4, agent=4, seed=2, done=True)
    learner.process_trajectory(first)
    assert set(learner.critic_memories) == {("", 0, 4)}
    learner.process_trajectory(second)
    assert learner.critic_memories == {}  # the episode ended
    joined = np.concatenate([first.observations[0], second.observations[0]])
    values, before = _critic_run(learner, joined, np.zeros(M, np.float32))
    data = learner.rollout_buffer.chronological()  # rows: 5 + 1 padding, then 4 + 2 padding
    np.testing.assert_allclose(data["values"][6:10], values[5:9], atol=1e-5)  # one unbroken critic run
    np.testing.assert_allclose(data["critic_memories"][6], before[5], atol=1e-6)
    # a new episode of the same agent starts from zeros
    learner.process_trajectory(_acted(learner, 2, agent=4, seed=3))
    assert not learner.rollout_buffer.chronological()["critic_memories"][12].any()


def test_padding_rows_change_neither_the_loss_nor_its_gradient():
    learner = _learner()
    for seed in range(3):
        learner.process_trajectory(_acted(learner, 4, agent=seed, seed=seed))
    data = learner.rollout_buffer.take(12)
    batch = ppo.Batch(observations=tuple(data["observations"]), **{f: data[f] for f in learner.rollout_buffer.fields})
    pad = data["loss_masks"] == 0
    assert pad.sum() == 4  # two fragments of 4 steps, 2 padding rows each
    noisy = batch._replace(
        observations=(np.where(pad[:, None], 7.0, batch.observations[0]).astype(np.float32),),
        continuous_actions=np.where(pad[:, None], 2.5, batch.continuous_actions).astype(np.float32),
        returns=np.where(pad, 9.0, batch.returns).astype(np.float32),
        values=np.where(pad, -4.0, batch.values).astype(np.float32),
    )
    import jax

    grad = jax.value_and_grad(ppo.ppo_loss, has_aux=True)
    args = (learner.policy_architecture, learner.settings)
    (loss_a, _), grads_a = grad(learner._state.params, *args, batch, None, 0.2, 0.01)
    (loss_b, _), grads_b = grad(learner._state.params, *args, noisy, None, 0.2, 0.01)
    assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_sequences_reproduce_the_acting_policy_step_by_step():
    learner = _learner()
    traj = _acted(learner, 6, seed=4)
    params, arch = learner._state.params, learner.policy_architecture
    # two sequences of L steps, each from its first step's acting memory
    dist = networks.actor_forward(
        params["actor"], arch, [jnp.asarray(traj.observations[0])], None, None, jnp.asarray(traj.memories[::L]), L
    )
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    step_by_step = policy.distribution(traj.observations, None, traj.memories)
    np.testing.assert_allclose(np.asarray(dist.mu), step_by_step["mu"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(dist.logits), step_by_step["logits"], atol=1e-5)


def test_memory_update_compiles_once_and_takes_whole_sequences():
    learner = _learner(buffer_size=10, batch_size=7)  # 3 sequences per update, 2 per minibatch
    assert ppo.update_rows(learner.policy_architecture, learner.settings) == 9
    assert ppo.minibatch_sequences(learner.policy_architecture, learner.settings) == 2
    buckets = set()
    for k in range(12):
        learner.process_trajectory(_acted(learner, 1 + k % 5, agent=k, seed=k, done=k % 2 == 0))
        while learner.ready():
            buckets.add(ppo.update_sequences(learner.policy_architecture, learner.settings, learner.rollout_buffer.size // L))
            metrics = learner.update()
            assert all(np.isfinite(v) for v in metrics.values())
            assert learner.rollout_buffer.size == 0  # every buffered sequence trained
    assert learner.update_count >= 2
    # one compilation per bucket of sequences (3 times a power of two), none per update
    assert learner.trace_counts["update"] == len(buckets) < learner.update_count and learner.trace_counts["process"] == 1


def test_memories_travel_in_the_trajectory_proto_and_a_wrong_shape_is_refused():
    learner = _learner()
    traj = _acted(learner, 3)
    back = from_proto(to_proto(traj), SPEC)
    np.testing.assert_array_equal(back.memories, traj.memories)
    assert from_proto(to_proto(replace(traj, memories=None)), SPEC).memories is None
    np.testing.assert_array_equal(traj.tail(1).memories, traj.memories[1:])
    with pytest.raises(ValueError, match=r"memories have shape None, expected \(3, 8\)"):
        learner.process_trajectory(replace(traj, memories=None))
    with pytest.raises(ValueError, match=r"memories have shape \(3, 4\)"):
        learner.process_trajectory(replace(traj, memories=traj.memories[:, :4]))
