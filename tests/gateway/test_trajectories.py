"""TrajectoryBuilder: rewards aligned with actions, cuts at episode end and time_horizon."""

from __future__ import annotations

import numpy as np
import pytest

from common import trajectory as trajectory_mod
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.env.steps import StepBatch
from gateway.actor.trajectories import TrajectoryBuilder

SPEC = BehaviorSpec(
    name="Test?team=0",
    observations=(ObservationSpec("vec", (2,)),),
    action_spec=ActionSpec(continuous_size=1, discrete_branches=(3,)),
)


def decisions(ids, obs_value, rewards=None):
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    return StepBatch(
        observations=[np.stack([np.full(2, obs_value(a), np.float32) for a in ids]) if n else np.zeros((0, 2), np.float32)],
        rewards=np.asarray(rewards if rewards is not None else np.zeros(n), np.float32),
        agent_ids=ids,
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.zeros(n, np.float32),
        action_mask=np.zeros((n, 3), bool),
    )


def terminals(ids, obs_value, rewards, interrupted):
    d = decisions(ids, obs_value, rewards)
    d.action_mask = None
    d.interrupted = np.asarray(interrupted, bool)
    return d


def empty_terminals():
    return terminals([], lambda a: 0, [], [])


def act(builder, dec, version=1):
    n = len(dec)
    # action values encode the agent and its step's observation, so alignment is checkable
    cont = dec.observations[0][:, :1].copy()
    disc = (dec.agent_ids[:, None] % 3).astype(np.int32)
    builder.record(dec, cont, disc, -cont[:, 0], version)


def test_rewards_follow_the_action_they_reward_and_episode_end_is_done():
    b = TrajectoryBuilder(SPEC, instance=3, time_horizon=100)
    out = []
    # agent 7 sees obs 0,1,2 then ends at obs 3 with reward 5; rewards r_t arrive with step t+1
    for t in range(3):
        dec = decisions([7], lambda a: t, rewards=[10.0 * t])
        out += b.observe(dec, empty_terminals())
        act(b, dec, version=t)
    out += b.observe(decisions([], lambda a: 0), terminals([7], lambda a: 3, [5.0], [False]))
    [traj] = out
    assert traj.instance == 3 and traj.agent_id == 7 and len(traj) == 3
    np.testing.assert_array_equal(traj.observations[0][:, 0], [0, 1, 2])
    np.testing.assert_array_equal(traj.continuous_actions[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(traj.rewards, [10.0, 20.0, 5.0])  # r_0 came with step 1, ...
    np.testing.assert_array_equal(traj.policy_versions, [0, 1, 2])
    np.testing.assert_array_equal(traj.next_observations[0], [3, 3])
    assert traj.done and not traj.interrupted
    assert traj.episode_return == pytest.approx(35.0) and traj.episode_length == 3
    assert b.open_agents == 0
    trajectory_mod.from_proto(trajectory_mod.to_proto(traj), SPEC)  # valid on the wire


def test_time_horizon_cuts_with_bootstrap_observation_and_episode_totals_at_the_end():
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=4)
    out = []
    for t in range(10):
        dec = decisions([1, 2], lambda a: 100 * a + t, rewards=[1.0, 2.0])
        out += b.observe(dec, empty_terminals())
        act(b, dec)
    out += b.observe(decisions([], lambda a: 0), terminals([1, 2], lambda a: 100 * a + 10, [1.0, 2.0], [True, True]))
    by_agent = {1: [], 2: []}
    for traj in out:
        by_agent[traj.agent_id].append(traj)
    for agent, trajs in by_agent.items():
        assert [len(t) for t in trajs] == [4, 4, 2]
        assert [t.done for t in trajs] == [False, False, True]
        assert trajs[-1].interrupted
        # the cut's next observation is the first observation of the next fragment
        np.testing.assert_array_equal(trajs[0].next_observations[0], trajs[1].observations[0][0])
        obs = np.concatenate([t.observations[0][:, 0] for t in trajs])
        np.testing.assert_array_equal(obs, 100 * agent + np.arange(10))
        assert trajs[-1].episode_length == 10
        assert trajs[-1].episode_return == pytest.approx(10.0 * agent)
        assert trajs[0].episode_return == 0.0  # totals only on the final fragment


def test_agents_skipping_steps_and_reused_ids_in_the_same_step():
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=50, capacity=1)
    out = []
    dec = decisions([1, 2], lambda a: 0)
    out += b.observe(dec, empty_terminals())
    act(b, dec)
    # agent 2 does not decide this step; agent 1 does
    dec = decisions([1], lambda a: 1, rewards=[0.5])
    out += b.observe(dec, empty_terminals())
    act(b, dec)
    # agent 2 ends between its decisions; agent 1 ends and starts again under the same id
    term = terminals([2, 1], lambda a: 9, [-1.0, 2.0], [False, False])
    dec = decisions([1], lambda a: 20)
    out += b.observe(dec, term)
    act(b, dec)
    by_agent = {t.agent_id: t for t in out}
    assert len(by_agent[2]) == 1 and by_agent[2].rewards.tolist() == [-1.0]
    assert len(by_agent[1]) == 2 and by_agent[1].rewards.tolist() == [0.5, 2.0]
    assert b.open_agents == 1  # agent 1's new episode


def test_interrupt_all_drops_the_step_awaiting_its_reward():
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=50)
    for t in range(3):
        dec = decisions([4], lambda a: t, rewards=[1.0])
        b.observe(dec, empty_terminals())
        act(b, dec)
    [traj] = b.interrupt_all()
    assert len(traj) == 2 and traj.done and traj.interrupted
    np.testing.assert_array_equal(traj.next_observations[0], [2, 2])  # the dropped step's observation
    assert traj.episode_length == 2 and traj.episode_return == pytest.approx(2.0)
    assert b.open_agents == 0 and b.interrupt_all() == []


def test_growing_capacity_and_horizon_keep_open_trajectories():
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=2, capacity=1)
    dec = decisions([1], lambda a: 0)
    b.observe(dec, empty_terminals())
    act(b, dec)
    b.set_time_horizon(5)
    dec = decisions(list(range(1, 40)), lambda a: 1)
    assert b.observe(dec, empty_terminals()) == []  # horizon 5 now: no cut at 1 step
    act(b, dec)
    [traj] = b.interrupt_all()[:1]
    assert traj.agent_id == 1 and len(traj) == 1
    with pytest.raises(ValueError, match="time_horizon"):
        TrajectoryBuilder(SPEC, 0, 0)


def test_chunks_assembled_from_bytes_equal_the_protobuf_serialization():
    from gateway.actor import wire
    from tandem.v1 import trainer_pb2

    b = TrajectoryBuilder(SPEC, instance=1, time_horizon=3)
    trajectories = []
    for t in range(7):
        dec = decisions([5, 300], lambda a: a + t, rewards=[0.25, -1.0])
        trajectories += b.observe(dec, empty_terminals())
        act(b, dec)
    raw = [trajectory_mod.to_proto(t).SerializeToString() for t in trajectories]
    stats = [trainer_pb2.StatSample(key="Environment/Drops", value=2.0, aggregation="sum")]
    for sequence in (1, 127, 128, 300_000, 2**40):
        message = wire.chunk_message(sequence, "Test?team=0", wire.chunk_body(raw, stats))
        expected = trainer_pb2.GatewayMessage(
            chunk=trainer_pb2.ExperienceChunk(
                sequence=sequence,
                behavior="Test?team=0",
                trajectories=[trajectory_mod.to_proto(t) for t in trajectories],
                stats=stats,
            )
        )
        assert message == expected.SerializeToString()
        assert trainer_pb2.GatewayMessage.FromString(message) == expected
    assert wire.varint(0) == b"\x00" and wire.varint(300) == b"\xac\x02"


def test_cut_all_ends_every_fragment_where_collection_pauses():
    """Out of credit: agents deciding now end with their current observation as the bootstrap;
    an agent whose step waits for its reward loses that step (counted) and the reward that
    comes later still counts in its episode return."""
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=100)
    for t in range(2):  # agents 1 and 2 act on obs t
        dec = decisions([1, 2], lambda a: 10 * a + t, rewards=[1.0, 1.0] if t else None)
        b.observe(dec, empty_terminals())
        act(b, dec)
    # step 2: only agent 1 decides (agent 2 decides less often: its step 1 waits for its reward)
    dec = decisions([1], lambda a: 10 * a + 2, rewards=[1.0])
    assert b.observe(dec, empty_terminals()) == []
    out, cut_off = b.cut_all(dec)
    assert cut_off == 1
    by_agent = {t.agent_id: t for t in out}
    assert len(by_agent[1]) == 2 and not by_agent[1].done
    np.testing.assert_array_equal(by_agent[1].next_observations[0], [12, 12])  # its current observation
    np.testing.assert_array_equal(by_agent[1].rewards, [1.0, 1.0])
    assert len(by_agent[2]) == 1 and not by_agent[2].done  # step 1 cut off
    np.testing.assert_array_equal(by_agent[2].next_observations[0], [21, 21])  # the cut step's observation
    # both go on in their episodes: new fragments; agent 2's late reward counts in its return only
    act(b, dec)
    late = decisions([2], lambda a: 23, rewards=[4.0])
    b.observe(late, empty_terminals())
    act(b, late)
    final = b.observe(decisions([], lambda a: 0), terminals([1, 2], lambda a: 9, [1.0, 1.0], [False, False]))
    finished = {t.agent_id: t for t in final}
    assert len(finished[1]) == 1 and finished[1].episode_return == pytest.approx(3.0)  # rewards of its 3 steps
    assert len(finished[2]) == 1 and finished[2].episode_return == pytest.approx(6.0)  # 1, 4 (cut-off step), 1
    assert finished[2].episode_length == 3 and b.pending_steps == 0


def test_cut_all_with_nobody_deciding_cuts_only_steps_waiting_for_rewards():
    b = TrajectoryBuilder(SPEC, instance=0, time_horizon=100)
    dec = decisions([5], lambda a: 1)
    b.observe(dec, empty_terminals())
    act(b, dec)
    assert b.pending_steps == 1
    out, cut_off = b.cut_all(None)
    assert out == [] and cut_off == 1 and b.pending_steps == 0
