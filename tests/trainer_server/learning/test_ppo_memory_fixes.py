"""PPO with memory, two bugs fixed: sequence padding no longer counts towards
``buffer_size`` (the update waited for fewer real steps than the gateways were granted, so
the rest arrived stale), and the critic's stored memories are per gateway (instance and
agent ids repeat across the gateways of one behavior)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from test_ppo_memory import L, M, _acted, _critic_run, _learner
from trainer_server.learning import ppo


def test_padding_rows_do_not_count_towards_buffer_size_and_every_granted_step_trains():
    learner = _learner(buffer_size=12, batch_size=6)  # fragments of 4 steps: 6 rows each (2 padding)
    for k in range(2):
        learner.process_trajectory(_acted(learner, 4, agent=k, seed=k))
    assert learner.rollout_buffer.size == 12 and learner.buffered_real_steps == 8
    assert not learner.ready()  # 12 rows, but only 8 of the 12 granted steps
    learner.process_trajectory(_acted(learner, 4, agent=2, seed=2))
    assert learner.ready() and learner.buffered_real_steps == 12
    metrics = learner.update()
    assert all(np.isfinite(v) for v in metrics.values())
    assert learner.discard_buffered() == 0  # nothing granted is dropped after the update


def test_update_buckets_filler_sequences_that_change_nothing():
    """Filler sequences (the bucket of shapes) take no part: the update on 6 real sequences
    equals the one on the same sequences filled up to 12."""
    learner = _learner(buffer_size=9, batch_size=6)  # 3 sequences per bucket step, 2 per minibatch
    for k in range(3):
        learner.process_trajectory(_acted(learner, 4, agent=k, seed=k))  # 3 x 2 sequences, 12 real steps
    assert ppo.update_sequences(learner.policy_architecture, learner.settings, 6) == 6
    assert ppo.update_sequences(learner.policy_architecture, learner.settings, 7) == 12
    data = learner.rollout_buffer.chronological()
    batch = ppo.Batch(observations=tuple(data["observations"]), **{f: data[f] for f in learner.rollout_buffer.fields})

    def filled(rows: int) -> ppo.Batch:
        return ppo.Batch(*[tuple(ppo._pad_rows(o, rows) for o in v) if isinstance(v, tuple) else
                           (None if v is None else ppo._pad_rows(np.asarray(v), rows)) for v in batch])

    import jax

    update = jax.jit(ppo.make_update_fn(learner.policy_architecture, learner.settings, learner._tx))
    key = jax.random.PRNGKey(0)
    state_a, metrics_a = update(learner._state, batch, key)
    state_b, metrics_b = update(learner._state, filled(36), key)
    for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for name in ("Losses/Policy Loss", "Losses/Value Loss", "Policy/Entropy"):
        assert float(metrics_a[name]) == float(metrics_b[name]) or abs(float(metrics_a[name]) - float(metrics_b[name])) < 1e-6


def test_the_critic_memory_is_kept_per_gateway():
    learner = _learner()
    first = replace(_acted(learner, 5, agent=4, seed=1), source="gateway-a")
    other = replace(_acted(learner, 4, agent=4, seed=2), source="gateway-b")  # same instance 0, same agent id 4
    following = replace(_acted(learner, 4, agent=4, seed=3), source="gateway-a")
    for traj in (first, other, following):
        learner.process_trajectory(traj)
    assert set(learner.critic_memories) == {("gateway-a", 0, 4), ("gateway-b", 0, 4)}
    data = learner.rollout_buffer.chronological()  # rows: 5 + 1 padding, 4 + 2, 4 + 2
    assert not data["critic_memories"][6].any()  # gateway b's agent starts its own episode from zeros
    joined = np.concatenate([first.observations[0], following.observations[0]])
    values, before = _critic_run(learner, joined, np.zeros(M, np.float32))
    # gateway a's fragments are one unbroken critic run, whatever gateway b sent between them
    np.testing.assert_allclose(data["values"][12:16], values[5:9], atol=1e-5)
    np.testing.assert_allclose(data["critic_memories"][12], before[5], atol=1e-6)
    assert np.abs(before[5]).max() > 1e-3 and L == 3
