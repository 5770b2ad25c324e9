"""Groupmates in trajectories (POCA): what the gateway records for a group's critic, and its
round trip through ``tandem.v1.Trajectory``."""

from __future__ import annotations

import numpy as np
import pytest

from common import tensor
from common import trajectory as trajectory_mod
from common.architecture import PolicyArchitecture
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor.trajectories import TrajectoryBuilder
from gateway.env.steps import StepBatch
from tandem.v1 import trainer_pb2

SPEC = BehaviorSpec("Team?team=0", (ObservationSpec("vec", (2,)),), ActionSpec(1, (3,)))


def batch(ids, step, group_rewards=0.0, rewards=0.0, terminal=False):
    """Agents ``ids`` (all in group 7) observing ``[agent, step]``."""
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    return StepBatch(
        observations=[np.stack([[float(a), float(step)] for a in ids]).astype(np.float32) if n else np.zeros((0, 2), np.float32)],
        rewards=np.full(n, rewards, np.float32),
        agent_ids=ids,
        group_ids=np.full(n, 7, np.int32),
        group_rewards=np.full(n, group_rewards, np.float32),
        action_mask=None if terminal else np.zeros((n, 3), bool),
        interrupted=np.zeros(n, bool) if terminal else None,
    )


def act(builder, dec, version=1):
    """Each agent's action encodes it: continuous = 10 * agent + step, discrete = agent % 3."""
    cont = (10 * dec.observations[0][:, :1] + dec.observations[0][:, 1:]).astype(np.float32)
    builder.record(dec, cont, (dec.agent_ids[:, None] % 3).astype(np.int32), np.zeros(len(dec), np.float32), version)


def test_an_agent_removed_early_is_done_with_its_group_going_on_and_the_others_see_it_leave():
    builder = TrajectoryBuilder(SPEC, 0, time_horizon=10, groupmates=True)
    empty = batch([], 0, terminal=True)
    act(builder, batch([0, 1, 2], 0))
    assert builder.observe(batch([0, 1, 2], 1, rewards=0.5), empty) == []
    act(builder, batch([0, 1, 2], 1))
    # step 2: agent 2 is removed (terminal), agents 0 and 1 go on
    [left] = builder.observe(batch([0, 1], 2), batch([2], 2, terminal=True))
    assert left.done and left.group_continues and left.group_id == 7
    assert left.groupmates.present.all() and left.groupmates.present.shape == (2, 2)
    np.testing.assert_array_equal(left.groupmates.observations[0][0], [[0, 0], [1, 0]])  # what the mates acted on
    np.testing.assert_array_equal(left.groupmates.continuous_actions[1, :, 0], [1, 11])
    np.testing.assert_array_equal(left.groupmates.rewards[0], [0.5, 0.5])
    np.testing.assert_array_equal(left.groupmates.next_observations[0], [[0, 2], [1, 2]])
    act(builder, batch([0, 1], 2))
    # step 3: the group scores and ends; both get the group reward
    out = builder.observe(batch([], 3), batch([0, 1], 3, group_rewards=1.0, terminal=True))
    assert [t.agent_id for t in out] == [0, 1]
    for trajectory in out:
        assert trajectory.done and not trajectory.group_continues
        np.testing.assert_array_equal(trajectory.group_rewards, [0, 0, 1])
        # step 1: both mates present; step 2: agent 2 is gone, one mate
        assert trajectory.groupmates.present.sum(axis=1).tolist() == [2, 2, 1]
        assert trajectory.groupmates.done[1].tolist() == [False, True]  # agent 2 left at step 2
    assert builder.groups._status == {}


def test_an_agent_ending_and_restarting_in_one_step_reports_its_terminal_status():
    builder = TrajectoryBuilder(SPEC, 0, time_horizon=10, groupmates=True)
    act(builder, batch([0, 1], 0))
    out = builder.observe(batch([0, 1], 1), batch([0, 1], 1, group_rewards=1.0, terminal=True))
    assert [t.group_rewards.tolist() for t in out] == [[1.0], [1.0]]
    assert all(t.done and not t.group_continues and t.groupmates.done.all() for t in out)


def test_without_groupmates_trajectories_carry_no_group_fields():
    builder = TrajectoryBuilder(SPEC, 0, time_horizon=10)
    act(builder, batch([0, 1], 0))
    [first, _] = builder.observe(batch([], 1), batch([0, 1], 1, group_rewards=1.0, terminal=True))
    assert first.groupmates is None and first.group_rewards is None
    assert not trajectory_mod.to_proto(first).HasField("groupmates")


def test_group_fields_round_trip_through_the_proto_and_are_validated():
    builder = TrajectoryBuilder(SPEC, 0, time_horizon=10, groupmates=True)
    act(builder, batch([0, 1, 2], 0))
    assert builder.observe(batch([0, 1, 2], 1), batch([], 1, terminal=True)) == []
    act(builder, batch([0, 1, 2], 1))
    [left] = builder.observe(batch([0, 1], 2), batch([2], 2, terminal=True))
    msg = trainer_pb2.Trajectory.FromString(trajectory_mod.to_proto(left).SerializeToString())
    back = trajectory_mod.from_proto(msg, SPEC)
    assert back.group_id == 7 and back.group_continues
    np.testing.assert_array_equal(back.group_rewards, left.group_rewards)
    for name in ("continuous_actions", "discrete_actions", "rewards", "present", "done"):
        np.testing.assert_array_equal(getattr(back.groupmates, name), getattr(left.groupmates, name))
    np.testing.assert_array_equal(back.groupmates.observations[0], left.groupmates.observations[0])
    np.testing.assert_array_equal(back.groupmates.next_observations[0], left.groupmates.next_observations[0])
    assert back.tail(1).groupmates.present.shape == (1, 2)
    msg.groupmates.discrete_actions.data = np.full(4, 5, np.int32).tobytes()
    with pytest.raises(tensor.TensorError, match=r"trajectory.groupmates.discrete_actions: values out of the branch sizes"):
        trajectory_mod.from_proto(msg, SPEC)


def test_the_architecture_tells_the_gateway_to_collect_groupmates():
    arch = PolicyArchitecture(SPEC, hidden_units=8, num_layers=1, collect_groupmates=True)
    assert PolicyArchitecture.from_proto(arch.to_proto()).collect_groupmates
    assert not PolicyArchitecture.from_proto(PolicyArchitecture(SPEC, 8, 1).to_proto()).collect_groupmates
