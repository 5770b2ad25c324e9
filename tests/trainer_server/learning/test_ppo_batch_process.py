"""PPO's batched per-fragment step (``process_trajectories``): the same buffer, normalizer,
per-agent state and step count as ``process_trajectory`` one fragment at a time, in a few
compiled calls."""

from __future__ import annotations

import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from learning_helpers import trainer_settings
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning import ppo
from trainer_server.learning.ppo import PPOLearner

#: a camera through the ``simple`` encoder, a normalized vector, continuous and masked discrete actions
VISUAL = BehaviorSpec(
    "Batch?team=0", (ObservationSpec("cam", (1, 20, 20)), ObservationSpec("v", (3,))), ActionSpec(1, (3, 2))
)
VECTOR = BehaviorSpec("BatchMem?team=0", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))
M = 8


def _fragment(spec: BehaviorSpec, rng, t: int, agent: int, end: str, memory: bool = False) -> Trajectory:
    """``t`` random steps of agent ``agent`` ending ``end``: "cut" (time_horizon), "done" or "interrupted"."""
    a = spec.action_spec
    observations = [rng.random((t, *o.shape)).astype(np.float32) * 4 - 1 for o in spec.observations]
    masks = rng.random((t, a.mask_size)) < 0.3
    return Trajectory(
        instance=agent % 2, agent_id=agent,
        observations=observations,
        next_observations=[rng.random(o.shape).astype(np.float32) for o in spec.observations],
        continuous_actions=rng.normal(size=(t, a.continuous_size)).astype(np.float32),
        discrete_actions=np.stack([rng.integers(0, b, t) for b in a.discrete_branches], axis=1).astype(np.int32),
        log_probs=rng.normal(-2, 0.3, t).astype(np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        action_masks=masks,
        policy_versions=np.zeros(t, np.int64),
        done=end != "cut", interrupted=end == "interrupted",
        memories=rng.normal(size=(t, M)).astype(np.float32) if memory else None,
        source="gw",
    )


def _fragments(spec: BehaviorSpec, seed: int, lengths: list[int], memory: bool = False) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    ends = ("cut", "done", "cut", "interrupted")
    # agents repeat (a chunk holds consecutive fragments of one agent): per-agent state carries over
    return [_fragment(spec, rng, t, agent=k % 3, end=ends[k % 4], memory=memory) for k, t in enumerate(lengths)]


def _assert_same_state(one: PPOLearner, batched: PPOLearner) -> None:
    a, b = one.rollout_buffer.state_dict(), batched.rollout_buffer.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        for x, y in (zip(a[name].values(), b[name].values()) if isinstance(a[name], dict) else [(a[name], b[name])]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)
    for x, y in zip(*(np.concatenate([np.ravel(v) for v in (*s.mean.values(), *s.m2.values(), s.count)])
                      for s in (one._state.normalizer, batched._state.normalizer))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg="normalizer")
    assert one.step == batched.step
    assert one.critic_memories.keys() == batched.critic_memories.keys()
    for agent, memory in one.critic_memories.items():
        np.testing.assert_allclose(memory, batched.critic_memories[agent], atol=1e-5)


def _one_by_one_and_batched(spec, settings, fragments, batches):
    one, batched = PPOLearner(spec, settings, seed=4), PPOLearner(spec, settings, seed=4)
    for fragment in fragments:
        one.process_trajectory(fragment)
    start = 0
    for size in batches:
        batched.process_trajectories(fragments[start : start + size])
        start += size
    return one, batched


def test_batches_give_the_one_by_one_values_advantages_returns_and_normalizer():
    settings = trainer_settings("ppo", batch_size=8, buffer_size=64, time_horizon=5, hidden_units=16, num_layers=1,
                                normalize=True, vis_encode_type="simple")
    fragments = _fragments(VISUAL, 1, [5, 5, 3, 5, 1, 5, 5, 4, 5, 2, 5, 5])
    one, batched = _one_by_one_and_batched(VISUAL, settings, fragments, [7, 5])
    _assert_same_state(one, batched)
    assert np.abs(batched.rollout_buffer.state_dict()["advantages"]).max() > 0.1
    assert batched.trace_counts["batch_process"] == 1  # 7 and 5 fragments: both padded to 8
    # the same shape again (other fragments, another count of one bucket): no recompilation
    batched.process_trajectories(_fragments(VISUAL, 2, [5, 5, 5, 5, 5, 5]))
    assert batched.trace_counts["batch_process"] == 1
    batched.process_trajectories(_fragments(VISUAL, 3, [5, 5, 5]))  # 4 fragments: one more shape
    batched.process_trajectories(_fragments(VISUAL, 4, [5, 2]))
    assert batched.trace_counts["batch_process"] == 2 and batched.trace_counts["process"] == 0


def test_fragments_of_other_padded_lengths_start_a_new_call():
    settings = trainer_settings("ppo", batch_size=8, buffer_size=256, time_horizon=64, hidden_units=8, num_layers=1,
                                normalize=True)
    lengths = [3, 20, 40, 64, 10, 12, 70, 2]  # 16, 32, 64, 64, 16, 16, 128, 16 rows
    fragments = _fragments(VECTOR, 5, lengths)
    one, batched = _one_by_one_and_batched(VECTOR, settings, fragments, [len(lengths)])
    _assert_same_state(one, batched)
    groups = [[len(f) for f in g] for g in batched._batch_groups(fragments)]
    assert groups == [[3], [20], [40, 64], [10, 12], [70], [2]]


def test_memory_batches_carry_the_critic_memory_across_an_agent_s_fragments():
    settings = trainer_settings("ppo", batch_size=6, buffer_size=64, time_horizon=8, hidden_units=8, num_layers=1,
                                normalize=True, memory={"memory_size": M, "sequence_length": 3})
    fragments = _fragments(VECTOR, 6, [8, 8, 5, 8, 8, 2, 8, 7], memory=True)
    one, batched = _one_by_one_and_batched(VECTOR, settings, fragments, [len(fragments)])
    _assert_same_state(one, batched)
    # agent 0 came back at the fourth fragment: a new call, from the memory its first fragment left
    assert [len(g) for g in batched._batch_groups(fragments)] == [3, 3, 2]
    assert batched.critic_memories and np.abs(next(iter(batched.critic_memories.values()))).max() > 1e-3


def test_learned_reward_signals_and_their_inputs_match():
    settings = trainer_settings_from_dict({
        "trainer_type": "ppo",
        "hyperparameters": {"batch_size": 8, "buffer_size": 64},
        "network_settings": {"hidden_units": 8, "num_layers": 1, "normalize": True},
        "time_horizon": 6,
        "reward_signals": {"extrinsic": {"gamma": 0.9}, "curiosity": {"encoding_size": 8, "gamma": 0.8},
                           "rnd": {"encoding_size": 8}},
    })
    fragments = _fragments(VECTOR, 7, [6, 6, 4, 6, 1, 6, 3])
    one, batched = _one_by_one_and_batched(VECTOR, settings, fragments, [3, 4])
    _assert_same_state(one, batched)  # per head values and returns, next observations, dones
    assert set(batched.rollout_buffer.state_dict()) >= {"next_observations", "dones"}
    report_one, report_batched = one._episode_rewards.report(), batched._episode_rewards.report()
    assert report_one.keys() == report_batched.keys() and report_one
    for tag, value in report_one.items():
        assert value == pytest.approx(report_batched[tag], rel=1e-5, abs=1e-6), tag


def test_a_refused_fragment_refuses_the_batch_before_anything_is_taken():
    settings = trainer_settings("ppo", batch_size=8, buffer_size=64, time_horizon=5, hidden_units=8, num_layers=1)
    fragments = _fragments(VECTOR, 8, [5, 5, 5])
    fragments[1].observations[0] = fragments[1].observations[0][:, :2]  # the wrong shape
    learner = PPOLearner(VECTOR, settings, seed=4)
    with pytest.raises(ValueError, match="observation 0"):
        learner.process_trajectories(fragments)
    assert learner.step == 0 and learner.rollout_buffer.size == 0


@pytest.mark.parametrize("count, size", [(1, 4), (4, 4), (5, 8), (64, 64), (65, 128), (128, 128)])
def test_batch_sizes_are_a_few_powers_of_two(count, size):
    assert ppo.batch_fragments(count) == size
