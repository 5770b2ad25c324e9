"""PPO's packed per-fragment step (``ppo_packed``, what ``process_trajectories`` runs without
memory): the one-by-one results for 3DBall-like fragments of mixed lengths, GAE's recursion
over packed rows, the compiled shapes and their reuse."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from learning_helpers import trainer_settings
from test_ppo_batch_process import VECTOR, _assert_same_state, _fragments, _one_by_one_and_batched
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning import ppo, ppo_packed
from trainer_server.learning.ppo import PPOLearner


def test_discounted_sums_are_gae_s_backward_recursion_and_stop_at_a_zero_discount():
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(40, 2)).astype(np.float32)
    discounts = np.where(rng.random((40, 1)) < 0.8, np.float32(0.9 * 0.95), np.float32(0.0)) * np.ones((1, 2), np.float32)
    expected, later = np.zeros_like(deltas), np.zeros(2, np.float32)
    for row in range(39, -1, -1):
        later = deltas[row] + discounts[row] * later
        expected[row] = later
    got = np.asarray(ppo_packed.discounted_sums(jnp.asarray(deltas), jnp.asarray(discounts)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # a fragment's advantages as ppo.gae gives them, with the packed rows after it ignored
    mask = jnp.arange(8) < 5
    advantages, _ = ppo.gae(jnp.asarray(deltas[:8, 0]), jnp.zeros(8), jnp.asarray(0.0), mask, 1.0, 0.5)
    packed = ppo_packed.discounted_sums(jnp.asarray(np.where(np.arange(8) < 5, deltas[:8, 0], 7.0)),
                                        jnp.asarray(np.where(np.arange(8) < 4, 0.5, 0.0).astype(np.float32)))
    np.testing.assert_allclose(np.asarray(packed)[:5], np.asarray(advantages)[:5], rtol=1e-6)


def test_mixed_lengths_of_3dball_chunks_give_the_one_by_one_state_in_one_call():
    settings = trainer_settings("ppo", batch_size=8, buffer_size=512, time_horizon=64, hidden_units=16, num_layers=2,
                                normalize=True)
    lengths = [29, 22, 27, 14, 14, 37, 21, 17, 64, 40, 15, 3, 1, 80, 24]  # 80 > time_horizon
    fragments = _fragments(VECTOR, 11, lengths)
    one, batched = _one_by_one_and_batched(VECTOR, settings, fragments, [9, len(lengths) - 9])
    _assert_same_state(one, batched)
    # 254 and 169 rows: 256 and 192 (the second batch of two is no rare size)
    assert batched.trace_counts["packed_process"] == 2 and batched._packed_rows == {192, 256}


def test_a_signal_that_normalizes_its_inputs_sees_each_fragment_s_statistics():
    signals = {"extrinsic": {"gamma": 0.9}, "rnd": {"encoding_size": 8, "network_settings": {"normalize": True}}}
    network = {"hidden_units": 8, "num_layers": 1, "normalize": True}
    settings = trainer_settings_from_dict({"trainer_type": "ppo", "time_horizon": 32, "reward_signals": signals,
                                           "hyperparameters": {"batch_size": 8, "buffer_size": 64},
                                           "network_settings": network})
    fragments = _fragments(VECTOR, 12, [32, 3, 9, 20, 1, 12])
    one, batched = _one_by_one_and_batched(VECTOR, settings, fragments, [len(fragments)])
    _assert_same_state(one, batched)
    assert batched.trace_counts["packed_process"] == 1
    report_one, report_batched = one._episode_rewards.report(), batched._episode_rewards.report()
    assert report_one and report_one.keys() == report_batched.keys()
    for tag, value in report_one.items():
        assert value == pytest.approx(report_batched[tag], rel=1e-5, abs=1e-6), tag


def test_a_rare_batch_size_reuses_a_compiled_shape_and_a_recurring_one_gets_its_own():
    settings = trainer_settings("ppo", batch_size=8, buffer_size=8192, time_horizon=64, hidden_units=8, num_layers=1,
                                normalize=True)
    learner = PPOLearner(VECTOR, settings, seed=1)
    for seed in range(10):
        learner.process_trajectories(_fragments(VECTOR, seed, [30] * 16))  # 496 rows: 512
    learner.process_trajectories(_fragments(VECTOR, 20, [10, 12]))  # 24 rows: 64, 1 of 11 calls: runs in 512
    assert learner.trace_counts["packed_process"] == 1 and learner._packed_rows == {512}
    learner.process_trajectories(_fragments(VECTOR, 21, [30] * 5))  # 155 rows: 192, 1 of 12 calls: in 512
    learner.process_trajectories(_fragments(VECTOR, 22, [30] * 5))  # 2 of 13 calls: its own shape
    assert learner.trace_counts["packed_process"] == 2 and learner._packed_rows == {192, 512}
    learner.process_trajectories(_fragments(VECTOR, 23, [30] * 5))
    assert learner.trace_counts["packed_process"] == 2
    assert learner.step == 30 * 160 + 22 + 150 * 3 == learner.rollout_buffer.size


@pytest.mark.parametrize("steps, fragments, compiled, asked, calls, rows", [
    (10, 2, set(), 0, 0, 64),
    (100, 20, set(), 0, 0, 128),  # 120 rows
    (100, 40, set(), 0, 0, 192),  # four rows per fragment slot: 160
    (500, 20, set(), 0, 0, 768),
    (500, 20, {512, 1024}, 0, 30, 1024),
    (100, 20, {512, 1024}, 0, 30, 512),  # 128 rows' bucket: rare, 512 within sixteen times it
    (100, 20, {512, 1024}, 2, 29, 128),  # 3 of 30 calls: its own
    (100, 20, {128, 512}, 0, 30, 128),
    (10, 2, {1024}, 0, 30, 1024),  # sixteen times its bucket
    (10, 2, {2048}, 0, 30, 64),  # more than sixteen times its bucket
])
def test_packed_shapes(steps, fragments, compiled, asked, calls, rows):
    assert ppo_packed.packed_shape(steps, fragments, compiled, asked, calls) == rows


def test_long_runs_of_fragments_are_split_and_a_fragment_never_is():
    fragments = _fragments(VECTOR, 5, [1000, 2000, 1500, 5000, 10])
    groups = [[len(f) for f in g] for g in ppo_packed.packed_groups(fragments)]
    assert groups == [[1000, 2000], [1500], [5000], [10]]
    with pytest.raises(ValueError, match="do not fit"):
        ppo_packed.pack(fragments[:2], [{}] * 2, [True] * 2, 256)


def test_a_short_time_horizon_keeps_the_per_fragment_layout():
    # every fragment pads to time_horizon rows: make_batch_process_fn takes a batch in one call
    short = PPOLearner(VECTOR, trainer_settings("ppo", batch_size=8, buffer_size=64, time_horizon=16, hidden_units=8,
                                                num_layers=1), seed=1)
    short.process_trajectories(_fragments(VECTOR, 1, [16, 3, 16, 9]))
    assert short.trace_counts["batch_process"] == 1 and short.trace_counts["packed_process"] == 0
