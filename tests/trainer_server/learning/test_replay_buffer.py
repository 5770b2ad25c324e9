"""The SAC replay buffer: ring wraparound, uniform sampling, sampler checkpoint, save/load round trip."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from trainer_server.learning.replay_buffer import (
    ReplayBuffer,
    Transitions,
    generator_from_state,
    generator_state,
    new_generator,
)


def make_batch(start: int, n: int) -> Transitions:
    """n transitions whose every field encodes its global index start..start+n-1."""
    ids = np.arange(start, start + n)
    return Transitions(
        obs=(ids[:, None].astype(np.float32).repeat(3, 1), ids[:, None, None, None].astype(np.float32) * np.ones((1, 4, 4, 2), np.float32)),
        next_obs=((ids + 1)[:, None].astype(np.float32).repeat(3, 1), np.zeros((n, 4, 4, 2), np.float32)),
        continuous_actions=ids[:, None].astype(np.float32).repeat(2, 1),
        discrete_actions=(ids[:, None] % np.array([3, 2])).astype(np.int32),
        rewards=ids.astype(np.float32),
        dones=(ids % 7 == 0).astype(np.float32),
        action_masks=(ids[:, None] % 5 == np.arange(5)).astype(bool),
        next_action_masks=((ids[:, None] + 1) % 5 == np.arange(5)).astype(bool),
    )


def new_buffer(capacity: int) -> ReplayBuffer:
    return ReplayBuffer(capacity, [(3,), (4, 4, 2)], continuous_size=2, num_branches=2, mask_size=5)


def test_wraparound_keeps_the_newest_in_order():
    buf = new_buffer(10)
    buf.add(make_batch(0, 4))
    assert buf.size == 4
    np.testing.assert_array_equal(buf.chronological().rewards, np.arange(4))
    buf.add(make_batch(4, 9))  # 13 added in all: wraps, the 3 oldest are gone
    assert buf.size == 10
    data = buf.chronological()
    np.testing.assert_array_equal(data.rewards, np.arange(3, 13))
    np.testing.assert_array_equal(data.obs[1][:, 2, 3, 1], np.arange(3, 13))
    np.testing.assert_array_equal(data.next_obs[0][:, 0], np.arange(4, 14))
    np.testing.assert_array_equal(data.action_masks, make_batch(3, 10).action_masks)
    buf.add(make_batch(13, 25))  # larger than the capacity at once
    np.testing.assert_array_equal(buf.chronological().rewards, np.arange(28, 38))


def test_sampling_is_uniform_reproducible_and_consistent():
    buf = new_buffer(50)
    buf.add(make_batch(100, 30))
    a = buf.sample(new_generator(3), 64, num_batches=4)
    b = buf.sample(new_generator(3), 64, num_batches=4)
    assert a.rewards.shape == (4, 64) and a.obs[1].shape == (4, 64, 4, 4, 2)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    # every field of a sampled row belongs to the same transition
    np.testing.assert_array_equal(a.obs[0][..., 0], a.rewards)
    np.testing.assert_array_equal(a.next_obs[0][..., 0], a.rewards + 1)
    np.testing.assert_array_equal(a.continuous_actions[..., 1], a.rewards)
    # only held transitions, each of them about equally often
    idx = buf.sample_indices(new_generator(4), (30000,))
    assert idx.min() == 0 and idx.max() == 29
    counts = np.bincount(idx, minlength=30)
    assert counts.min() > 800 and counts.max() < 1200


def test_sampler_state_resumes_the_exact_sequence():
    buf = new_buffer(50)
    buf.add(make_batch(0, 40))
    rng = new_generator(11)
    buf.sample(rng, 7)
    rng.random()  # leaves a half-used 64-bit word behind (has_uint32)
    rng.integers(0, 2**31, dtype=np.uint32)
    saved = generator_state(rng)
    assert saved.dtype == np.uint64 and saved.shape == (6,)
    resumed = generator_from_state(saved)
    for _ in range(3):
        np.testing.assert_array_equal(buf.sample(rng, 16, num_batches=2).rewards, buf.sample(resumed, 16, num_batches=2).rewards)
        assert rng.integers(0, 2**31, dtype=np.uint32) == resumed.integers(0, 2**31, dtype=np.uint32)
    with pytest.raises(ValueError, match="PCG64"):
        generator_state(np.random.Generator(np.random.MT19937(0)))


def test_bad_shapes_and_empty_sampling_are_clear_errors():
    buf = new_buffer(8)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(new_generator(0), 4)
    bad = make_batch(0, 3)._replace(dones=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="transitions.dones"):
        buf.add(bad)
    bad = make_batch(0, 3)._replace(obs=(np.zeros((3, 3), np.float32), np.zeros((3, 4, 4, 3), np.float32)))
    with pytest.raises(ValueError, match=r"transitions.obs\[1\]"):
        buf.add(bad)
    assert buf.size == 0


def test_save_load_round_trip(tmp_path):
    buf = new_buffer(10)
    buf.add(make_batch(0, 17))
    path = tmp_path / "run" / "last_replay_buffer.npz"
    buf.save(path)
    restored = new_buffer(10)
    restored.load(path)
    assert restored.size == 10
    for x, y in zip(jax.tree_util.tree_leaves(buf.chronological()), jax.tree_util.tree_leaves(restored.chronological())):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(buf.sample(new_generator(9), 32).rewards, restored.sample(new_generator(9), 32).rewards)
    # a smaller buffer keeps the newest transitions
    small = new_buffer(4)
    small.load(path)
    np.testing.assert_array_equal(small.chronological().rewards, np.arange(13, 17))
    assert not list(path.parent.glob("*.tmp"))


def test_load_rejects_other_shapes_and_garbage(tmp_path):
    buf = new_buffer(10)
    buf.add(make_batch(0, 5))
    path = tmp_path / "rb.npz"
    buf.save(path)
    other = ReplayBuffer(10, [(3,), (4, 4, 3)], continuous_size=2, num_branches=2, mask_size=5)
    with pytest.raises(ValueError, match=r"rb.npz: transitions.obs\[1\]"):
        other.load(path)
    fewer = ReplayBuffer(10, [(3,)], continuous_size=2, num_branches=2, mask_size=5)
    with pytest.raises(ValueError, match="more observations"):
        fewer.load(path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="garbage.npz"):
        buf.load(garbage)
    with pytest.raises(FileNotFoundError):
        buf.load(tmp_path / "missing.npz")
    assert buf.size == 5
