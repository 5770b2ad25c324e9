"""SAC with memory (``network_settings.memory``): sequence replay, the recurrent actor and
critics, the sequence-masked loss, one compilation, resume with the replay buffer.

Experience is produced as a gateway produces it: ``NumpyPolicy`` acts with the learner's
snapshot, carrying each agent's memory, and the memories it acted from travel in the
``Trajectory`` fragments the learner consumes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from gateway.actor.numpy_policy import NumpyPolicy
from learning_helpers import trainer_settings
from trainer_server import checkpoints
from trainer_server.learning import networks, sac
from trainer_server.learning.replay_buffer import new_generator
from trainer_server.learning.sac import REPLAY_BUFFER_FILE, SACLearner

M, L = 8, 3
HYBRID = ActionSpec(1, (2,))
ACTIONS = {"hybrid": HYBRID, "discrete": ActionSpec(0, (3, 2)), "continuous": ActionSpec(2, ())}


def _learner(actions: ActionSpec = HYBRID, seed: int = 3, **overrides) -> SACLearner:
    spec = BehaviorSpec("Mem?team=0", (ObservationSpec("v", (3,)),), actions)
    values = dict(batch_size=7, buffer_size=60, buffer_init_steps=0, hidden_units=8, num_layers=1,
                  memory={"memory_size": M, "sequence_length": L})
    values.update(overrides)
    return SACLearner(spec, trainer_settings("sac", **values), seed=seed, steps_per_call=4)


def _acted(learner: SACLearner, t: int, agent: int = 0, seed: int = 0, done: bool = True, obs=None) -> Trajectory:
    """t steps the learner's policy acted from zero memories (an episode start)."""
    rng = np.random.default_rng(seed)
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    a = learner.spec.action_spec
    obs = rng.standard_normal((t, 3)).astype(np.float32) if obs is None else obs
    mem = np.zeros((1, M), np.float32)
    rows = []
    for i in range(t):
        out = policy.act([obs[i : i + 1]], np.zeros((1, a.mask_size), bool), rng, memories=mem)
        rows.append((mem[0], out))
        mem = out.memories
    return Trajectory(
        instance=0, agent_id=agent, observations=[obs], next_observations=[rng.standard_normal(3).astype(np.float32)],
        continuous_actions=np.concatenate([o.continuous for _, o in rows]).reshape(t, a.continuous_size),
        discrete_actions=np.concatenate([o.discrete for _, o in rows]).reshape(t, a.num_branches),
        log_probs=np.concatenate([o.log_probs for _, o in rows]),
        rewards=rng.standard_normal(t).astype(np.float32), action_masks=np.zeros((t, a.mask_size), bool),
        policy_versions=np.zeros(t, np.int64), done=done, memories=np.stack([m for m, _ in rows]),
    )


def test_a_fragment_enters_the_replay_buffer_as_whole_sequences_padded_at_its_end():
    learner = _learner()
    traj = _acted(learner, 7)
    learner.process_trajectory(traj)
    data = learner.replay_buffer.chronological()
    assert learner.replay_buffer.size == 9 and learner.replay_buffer.real_steps == 7 and learner.step == 7
    np.testing.assert_array_equal(data.loss_masks, [1, 1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(data.memories[:7], traj.memories)
    assert not data.memories[7:].any() and not data.obs[0][7:].any() and not data.rewards[7:].any()
    np.testing.assert_array_equal(data.next_obs[0][6], traj.next_observations[0])  # the fragment's next observation
    np.testing.assert_array_equal(data.dones, [0, 0, 0, 0, 0, 0, 1, 0, 0])
    assert learner.replay_buffer.capacity == 60 and _learner(buffer_size=61).replay_buffer.capacity == 63
    with pytest.raises(ValueError, match=r"memories have shape None, expected \(2, 8\)"):
        learner.process_trajectory(Trajectory(**{**traj.__dict__, "memories": None}).tail(5))


def test_sampled_sequences_are_one_fragments_consecutive_steps_even_after_the_ring_wraps():
    learner = _learner(buffer_size=12)  # 4 sequence slots
    buffer = learner.replay_buffer
    for k in range(9):  # fragments of 1..5 steps: obs[0] = fragment id, obs[1] = step index
        t = 1 + k % 5
        obs = np.stack([np.full(t, k), np.arange(t), np.zeros(t)], axis=1).astype(np.float32)
        learner.process_trajectory(_acted(learner, t, agent=k, seed=k, obs=obs))
    assert buffer.size == 12
    rng = new_generator(0)
    batch = buffer.sample_sequences(rng, num_sequences=5, num_batches=6)
    assert batch.obs[0].shape == (6, 5 * L, 3) and batch.memories.shape == (6, 5 * L, M)
    seen_padding = False
    for seq_obs, seq_masks in zip(batch.obs[0].reshape(-1, L, 3), batch.loss_masks.reshape(-1, L)):
        real = int(seq_masks.sum())
        assert real >= 1 and np.array_equal(seq_masks, np.arange(L) < real)  # real steps first, padding after
        assert len(set(seq_obs[:real, 0])) == 1  # one fragment
        steps = seq_obs[:real, 1]
        assert steps[0] % L == 0 and np.array_equal(np.diff(steps), np.ones(real - 1))  # from a sequence start, in order
        seen_padding |= real < L
    assert seen_padding
    single = buffer.gather(buffer.sample_indices(rng, (200,)))
    assert single.loss_masks.all()  # the reward signals' single rows: never padding


def _loss_fn(learner: SACLearner):
    """``batch -> ((loss, metrics), gradients)`` at the learner's parameters (compiled once)."""
    loss_fn = sac.make_loss_fn(learner.policy_architecture, learner.settings, learner.signals)
    state = learner._state
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    return lambda batch: grad(state.params, state.target, None, batch, jax.random.PRNGKey(5), state.signals)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_padding_rows_change_neither_the_loss_nor_its_gradient(name):
    learner = _learner(ACTIONS[name])
    for seed in range(4):
        learner.process_trajectory(_acted(learner, 2 + seed, agent=seed, seed=seed, done=seed % 2 == 0))
    batch = jax.tree_util.tree_map(lambda x: x[0], learner.replay_buffer.sample_sequences(new_generator(1), 4, 1))
    pad = batch.loss_masks == 0
    assert 0 < pad.sum() < len(pad)
    rng = np.random.default_rng(0)

    def noise(x, scale=3.0):
        x = np.asarray(x)
        other = (rng.integers(0, 2, x.shape) if x.dtype.kind in "iub" else rng.normal(scale=scale, size=x.shape)).astype(x.dtype)
        return np.where(pad.reshape(-1, *[1] * (x.ndim - 1)), other, x)

    noisy = batch._replace(
        obs=(noise(batch.obs[0]),), next_obs=(noise(batch.next_obs[0]),), rewards=noise(batch.rewards),
        continuous_actions=np.clip(noise(batch.continuous_actions), -1.0, 1.0), discrete_actions=noise(batch.discrete_actions),
        dones=noise(batch.dones) > 0, memories=noise(batch.memories),
    )
    noisy = noisy._replace(dones=np.asarray(noisy.dones, np.float32))
    loss = _loss_fn(learner)
    (loss_a, metrics_a), grads_a = loss(batch)
    (loss_b, metrics_b), grads_b = loss(noisy)
    assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-5)
    for tag in metrics_a:
        assert float(metrics_a[tag]) == pytest.approx(float(metrics_b[tag]), abs=1e-5), tag
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # and the real rows do matter
    real = batch._replace(rewards=np.where(pad, batch.rewards, batch.rewards + 1.0).astype(np.float32))
    assert abs(float(loss(real)[0][0]) - float(loss_a)) > 1e-3


def test_training_sequences_reproduce_the_acting_policy_at_the_observations_and_the_next_ones():
    learner = _learner()
    traj = _acted(learner, 6, seed=4)
    learner.process_trajectory(traj)
    data = learner.replay_buffer.chronological()  # two full sequences
    arch, params = learner.policy_architecture, learner._state.params["actor"]
    actor, _, _ = sac.make_recurrent_fns(arch, ("extrinsic",))
    h, h_next = actor(params, data.obs, data.next_obs, None, jnp.asarray(data.memories))
    dist = networks.actor_heads(params, arch, h, None)
    dist_next = networks.actor_heads(params, arch, h_next, None)
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    acting = policy.distribution(traj.observations, None, traj.memories)  # each step from the memory it acted from
    np.testing.assert_allclose(np.asarray(dist.mu), acting["mu"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(dist.logits), acting["logits"], atol=1e-5)
    # the next observation of step t is read after step t's memory: the acting policy's next step
    after = acting["memories"]
    nxt = policy.distribution([data.next_obs[0]], None, after)
    np.testing.assert_allclose(np.asarray(dist_next.mu), nxt["mu"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(dist_next.log_std), nxt["log_std"], atol=1e-5)


def test_the_critics_run_each_sequence_from_zero_memories_over_the_replayed_steps():
    learner = _learner()
    learner.process_trajectory(_acted(learner, 6, seed=2))
    data = learner.replay_buffer.chronological()
    arch = learner.policy_architecture
    critic = jax.tree_util.tree_map(lambda x: x[0], learner._state.params["critics"])
    _, critic_pass, critic_step = sac.make_recurrent_fns(arch, ("extrinsic",))
    q, before, after = critic_pass(critic, data.obs, None, data.continuous_actions)
    assert not np.asarray(before)[::L].any()  # zeros at every sequence start (ML-Agents: none recorded)
    np.testing.assert_allclose(np.asarray(before)[1:L], np.asarray(after)[: L - 1], atol=1e-6)
    # one step from the memories before each row, at the replayed action, is the sequence's own output
    np.testing.assert_allclose(np.asarray(critic_step(critic, data.obs, None, data.continuous_actions, before)), np.asarray(q), atol=1e-5)
    # the critic is recurrent: the same step after another history gives another Q
    shifted = (np.roll(data.obs[0], 1, axis=0),)
    q_other, _, _ = critic_pass(critic, shifted, None, data.continuous_actions)
    assert np.abs(np.asarray(q_other)[0, 1:L] - np.asarray(q)[0, 1:L]).max() > 1e-4


@pytest.mark.parametrize("name", ["discrete", "continuous"])
def test_memory_updates_compile_once_and_learn_from_whole_sequences(name):
    learner = _learner(ACTIONS[name])
    assert learner.minibatch_rows() == 2 * L  # batch_size 7 // 3 sequences
    updates = 0
    for k in range(12):
        learner.process_trajectory(_acted(learner, 1 + k % 5, agent=k, seed=k, done=k % 2 == 0))
        if learner.ready():
            metrics = learner.update()
            assert metrics and all(np.isfinite(v) for v in metrics.values())
            updates += 1
    assert updates >= 2 and learner.update_steps == learner.step - 1
    assert learner.trace_counts["update"] == 1  # a second update call does not recompile


def test_resume_restores_the_replay_buffer_with_memories_and_gives_the_identical_next_update(tmp_path):
    a = _learner(save_replay_buffer=True)
    for k in range(5):
        a.process_trajectory(_acted(a, 2 + k, agent=k, seed=k))
    a.update()
    state, _ = checkpoints.loads(checkpoints.dumps(a.state_dict(), {}))
    a.save_extra(tmp_path)
    b = _learner(save_replay_buffer=True, seed=9)
    b.load_state_dict(state)
    b.load_extra(tmp_path)
    da, db = a.replay_buffer.chronological(), b.replay_buffer.chronological()
    np.testing.assert_array_equal(da.memories, db.memories)
    np.testing.assert_array_equal(da.loss_masks, db.loss_masks)
    more = _acted(a, 4, agent=7, seed=7)
    a.process_trajectory(more)
    b.process_trajectory(more)
    assert a.update() == b.update()
    for name, value in a.policy_parameters().items():
        np.testing.assert_array_equal(value, b.policy_parameters()[name], err_msg=name)
    # the file of a memory run does not load into a run without memory (and back), with the file named
    plain = _learner(save_replay_buffer=True, memory=None)
    with pytest.raises(ValueError, match=REPLAY_BUFFER_FILE + ": holds memories, the behavior's policy has no memory"):
        plain.load_extra(tmp_path)
    plain.process_trajectory(Trajectory(**{**more.__dict__, "memories": None}))
    plain.save_extra(tmp_path)
    with pytest.raises(ValueError, match=REPLAY_BUFFER_FILE + r": has no memories, the behavior's policy has memory \(memory_size 8\)"):
        b.load_extra(tmp_path)


def test_minibatch_rows_the_devices_cannot_split_are_refused_naming_the_behavior():
    from trainer_server.learning import devices

    cpu = jax.devices()[0]
    previous = devices.use(devices.Placement(devices=(cpu, cpu)))  # two devices as far as the split is concerned
    try:
        with pytest.raises(ValueError, match=r"behavior Mem\?team=0: with memory a minibatch is 9 rows .* 2 devices"):
            _learner(batch_size=10)  # a multiple of 2, but 3 sequences of 3 rows are not
    finally:
        devices.use(previous)


def test_warm_up_compiles_the_update_before_experience_and_changes_nothing():
    from trainer_server.learning.registry import make_learner

    settings = _learner().settings
    reference = SACLearner(_learner().spec, settings, seed=3)
    learner = make_learner(reference.spec, settings, 3)  # the trainer's factory warms SAC up
    assert learner.trace_counts["update"] == 1 and learner.replay_buffer.size == 0
    for name, value in reference.policy_parameters().items():
        np.testing.assert_array_equal(value, learner.policy_parameters()[name], err_msg=name)
    for k in range(4):
        trajectory = _acted(reference, 3, agent=k, seed=k)
        reference.process_trajectory(trajectory)
        learner.process_trajectory(trajectory)
    assert learner.update() == reference.update()  # the same key, the same steps
    assert learner.trace_counts["update"] == 1  # compiled once, before the experience
