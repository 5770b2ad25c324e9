"""``AgentSlots``: a behavior's agents as fixed rows, on hand-made steps (no Unity)."""

from __future__ import annotations

import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.env.steps import StepBatch
from gateway.remote.agent_slots import AgentSlots, NoAgents, any_decision, discover, step_until
from gateway.remote.client import BehaviorStepsView

SPEC = BehaviorSpec("B?team=0", (ObservationSpec("v", (2,)),), ActionSpec(continuous_size=1, discrete_branches=(3,)))


def batch(ids, value=0.0, reward=0.0, interrupted=None, terminal=False) -> StepBatch:
    n = len(ids)
    return StepBatch(
        observations=[np.full((n, 2), value, np.float32)],
        rewards=np.full(n, reward, np.float32),
        agent_ids=np.asarray(ids, np.int32),
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.zeros(n, np.float32),
        action_mask=None if terminal else np.zeros((n, 3), bool),
        interrupted=np.asarray(interrupted if interrupted is not None else [False] * n) if terminal else None,
    )


def view(instance=0, decisions=(), terminals=(), value=0.0, reward=0.0, interrupted=None) -> BehaviorStepsView:
    return BehaviorStepsView(
        instance, SPEC.name, batch(decisions, value, reward),
        batch(terminals, -value, reward, interrupted, terminal=True),
    )


def test_rows_follow_instance_then_agent_order_and_hold_until_the_agent_decides_again():
    slots = AgentSlots(SPEC)
    first = slots.start([view(1, [7]), view(0, [5, 3])])
    assert slots.keys == [(0, 3), (0, 5), (1, 7)] and first.decided.all()
    step = slots.absorb([view(0, [5], value=2.0, reward=0.5)])
    assert step.decided.tolist() == [False, True, False]
    assert step.observations[0][:, 0].tolist() == [0.0, 2.0, 0.0] and step.rewards.tolist() == [0.0, 0.5, 0.0]
    ids, cont, disc = slots.pending_actions(np.arange(3, dtype=np.float32)[:, None], np.ones((3, 1), np.int32))[0]
    assert ids.tolist() == [5] and cont.tolist() == [[1.0]] and disc.tolist() == [[1]]


def test_an_episode_end_is_terminated_or_truncated_and_the_next_episode_follows_in_the_same_step():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1])])
    step = slots.absorb([view(0, decisions=[0, 1], terminals=[0, 1], value=1.0, reward=1.0, interrupted=[True, False])])
    assert step.truncated.tolist() == [True, False] and step.terminated.tolist() == [False, True]
    assert step.final_observations[0][:, 0].tolist() == [-1.0, -1.0]  # the ended episodes' last observations
    assert step.observations[0][:, 0].tolist() == [1.0, 1.0]  # the next episodes' first ones
    assert step.rewards.tolist() == [1.0, 1.0]  # the terminal reward; the new decision's opens the next episode
    assert slots.absorb([view(0, [0, 1], reward=0.25)]).rewards.tolist() == [1.25, 1.25]


def test_new_agent_ids_take_the_rows_of_agents_that_ended_and_extra_ones_are_left_out():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1])])
    slots.absorb([view(0, terminals=[1])])
    step = slots.absorb([view(0, decisions=[0, 9, 10])])  # 9 replaces 1; 10 has no free row
    assert slots.keys == [(0, 0), (0, 9)] and slots.dropped == 1
    assert step.decided.all()
    ids, _, _ = slots.pending_actions(None, None)[0]
    assert ids.tolist() == [0, 9]


def test_a_row_taken_by_another_instance_s_new_agent_is_not_reused_from_a_remembered_id_list():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1]), view(1, [5])])
    slots.absorb([view(0, [0, 1])])  # instance 0's usual id list, remembered with its rows
    slots.absorb([view(0, terminals=[1])])
    slots.absorb([view(1, decisions=[9], value=2.0)])  # a new agent of instance 1 takes agent (0, 1)'s row
    assert slots.keys == [(0, 0), (1, 9), (1, 5)]
    step = slots.absorb([view(0, [0, 1], value=7.0)])  # (0, 1) is back: no row is free for it
    assert step.observations[0][:, 0].tolist() == [7.0, 2.0, 0.0] and slots.dropped == 1
    assert step.decided.tolist() == [True, False, False]


def test_the_rows_of_every_agent_in_order_are_a_slice_and_act_like_index_rows():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [1, 0])])  # rows follow agent ids: [1, 0] is not "in order"
    slots.absorb([view(0, [1, 0], value=1.0)])
    ids, cont, _ = slots.pending_actions(np.array([[10.0], [20.0]], np.float32), None)[0]
    assert ids.tolist() == [1, 0] and cont.tolist() == [[20.0], [10.0]]
    slots.start([view(0, [0, 1])])
    for value in (1.0, 2.0):  # the second time from the remembered rows
        step = slots.absorb([view(0, [0, 1], value=value, reward=0.5)])
        assert step.observations[0][:, 0].tolist() == [value, value] and step.rewards.tolist() == [0.5, 0.5]
        ids, cont, disc = slots.pending_actions(np.array([[10.0], [20.0]], np.float32), None)[0]
        assert ids.tolist() == [0, 1] and cont.tolist() == [[10.0], [20.0]] and disc.shape == (2, 1)


def test_step_until_merges_quiet_steps_and_gives_up_after_the_limit():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0])])
    answers = iter([[view(0, terminals=[0], reward=1.0)], [], [view(0, [0], value=3.0, reward=0.5)]])
    step = step_until(slots, lambda actions: next(answers), (None, None), lambda s: bool(s.decided[0]))
    assert step.terminated.tolist() == [True] and step.decided.tolist() == [True]
    assert step.final_observations[0][:, 0].tolist() == [-0.0] and step.observations[0][:, 0].tolist() == [3.0]
    assert step.rewards.tolist() == [1.0]  # the end's; the next episode's first decision's 0.5 comes next
    assert slots.absorb([view(0, [0], reward=0.25)]).rewards.tolist() == [0.75]
    with pytest.raises(RuntimeError, match="no decision after 3 environment steps"):
        step_until(slots, lambda actions: [], (None, None), any_decision, max_quiet_steps=3)


def test_step_until_keeps_each_row_s_episodes_apart_across_merged_responses():
    """Ends without a decision merge into the step of the next decision (``any_decision``); what a row
    receives after its end is its next episode's, and a second end waits for the next step."""
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1, 2])])
    calls = []
    answers = iter([
        [view(0, terminals=[0], value=1.0, reward=-1.0)],  # row 0 ends between decisions
        [view(0, decisions=[0], value=2.0, reward=0.5)],  # ... and its next episode's first decision: not "any"
        [view(0, terminals=[0], value=3.0, reward=-2.0)],  # row 0 ends again: held for the next step
        [view(0, decisions=[1, 2], value=4.0, reward=0.25)],
    ])

    def step_once(actions):
        calls.append(actions)
        return next(answers)

    first = step_until(slots, step_once, ("act", None), lambda s: bool(s.decided[1:].any()))
    assert calls == [("act", None), None, None]
    assert first.terminated.tolist() == [True, False, False] and not first.decided.any()  # Unity went on without an action
    assert first.final_observations[0][0, 0] == -1.0 and first.rewards.tolist() == [-1.0, 0.0, 0.0]
    second = step_until(slots, step_once, ("not used", None), lambda s: bool(s.decided[1:].any()))
    assert calls == [("act", None), None, None, None]  # the held response first, then one more step
    assert second.terminated.tolist() == [True, False, False] and second.final_observations[0][0, 0] == -3.0
    assert second.rewards.tolist() == [0.5 - 2.0, 0.25, 0.25]  # the second episode: its first decision and its end
    assert second.decided.tolist() == [False, True, True]


def test_merged_responses_keep_a_carried_first_reward_with_the_next_episode():
    """A row that ends and decides in one response, merged with later responses, pays its new
    episode's rewards in the step after (not in the one that reports its end)."""
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1])])
    answers = iter([
        [view(0, decisions=[0], terminals=[0], value=1.0, reward=2.0)],
        [view(0, decisions=[0], value=1.0, reward=0.5)],
        [view(0, decisions=[1], value=1.0, reward=0.125)],
    ])
    step = step_until(slots, lambda actions: next(answers), (None, None), lambda s: bool(s.decided[1]))
    assert step.terminated.tolist() == [True, False] and step.rewards.tolist() == [2.0, 0.125]
    assert slots.absorb([view(0, [0, 1], reward=0.0)]).rewards.tolist() == [2.5, 0.0]


def test_step_until_gives_up_with_the_ends_it_has():
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1])])
    answers = iter([[view(0, terminals=[1], reward=-1.0)]] + [[]] * 3)
    step = step_until(slots, lambda actions: next(answers), (None, None), any_decision, max_quiet_steps=3)
    assert step.terminated.tolist() == [False, True] and step.rewards.tolist() == [0.0, -1.0]


def test_ends_wait_a_bounded_number_of_steps_for_a_decision():
    """A scene whose agents left after their ends: they are reported after ``max_end_wait_steps``."""
    slots = AgentSlots(SPEC)
    slots.start([view(0, [0, 1])])
    calls = []

    def step_once(actions):
        calls.append(actions)
        return [view(0, terminals=[0, 1], reward=-1.0)] if len(calls) == 1 else []

    step = step_until(slots, step_once, (None, None), any_decision, max_end_wait_steps=5)
    assert step.terminated.all() and len(calls) == 6  # the ends' response, then 5 more steps


def test_discover_watches_one_decision_period_for_staggered_agents():
    answers = iter([[view(0, [4])], [view(0, [0, 2])], [view(0, [1])], [view(0, [5])]])
    found = discover(SPEC.name, lambda: [view(0, [1, 3])], lambda: next(answers))
    assert found == {(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)}  # stopped when agent 1 decided again: 5 is unseen
    answers = iter([[view(0, [0])], [view(0, [1])]])
    assert discover(SPEC.name, lambda: [view(0, [1])], lambda: next(answers)) == {(0, 0), (0, 1)}


def test_no_agent_after_a_reset_is_an_error():
    with pytest.raises(NoAgents, match="no agent requested a decision"):
        AgentSlots(SPEC).start([view(0, [])])
