"""The cooperative tasks (POCA): only the group is rewarded, when its agents push together on
the goal's side; in ``dungeonescape`` one agent must leave first, and it sends nothing until
its group ends."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple

from unity_standin.tasks.coop_push import BLOCK_START, LEFT, MAX_GROUP_STEPS, RIGHT, STAY, WIDTH


def scripted(obs: np.ndarray) -> np.ndarray:
    """Each agent walks to the cell beside the block away from the goal, and pushes from there
    once the block is unlocked and a groupmate stands there too. ``[n, 1]``."""
    position = np.argmax(obs[:, :WIDTH], axis=1)
    side = obs[:, 3 * WIDTH].astype(np.int64)
    target = BLOCK_START - side
    mate_there = obs[np.arange(len(obs)), 2 * WIDTH + target] > 0
    push = (position == target) & mate_there & (obs[:, 3 * WIDTH + 1] > 0)
    walk = np.where(position < target, RIGHT, np.where(position > target, LEFT, STAY))
    return np.where(push, np.where(side > 0, RIGHT, LEFT), walk).astype(np.int32)[:, None]


def test_pushing_together_scores_for_the_group_and_alone_scores_nothing(open_env):
    env = open_env("pushblockcollab", args=["--seed", "2"])
    env.reset()
    behavior = "PushBlockCollab?team=0"
    spec = env.behavior_specs[behavior]
    assert [o.shape for o in spec.observation_specs] == [(3 * WIDTH + 2,)] and spec.action_spec.discrete_branches == (3,)
    rewards, interrupted = [], 0
    for _ in range(MAX_GROUP_STEPS + 1):  # one agent of each group pushes alone, the other stays away
        decision, terminal = env.get_steps(behavior)
        rewards += terminal.reward.tolist() + terminal.group_reward.tolist() + decision.reward.tolist()
        interrupted += int(np.sum(terminal.interrupted))
        assert sorted(set(np.asarray(decision.group_id).tolist())) == list(range(1, 9))
        obs = decision.obs[0].copy()
        obs[:, 2 * WIDTH : 3 * WIDTH] = 1.0  # pretends a mate is there: pushes alone
        choice = np.where(decision.agent_id[:, None] % 2 == 0, scripted(obs), STAY).astype(np.int32)
        env.set_actions(behavior, ActionTuple(discrete=choice))
        env.step()
    assert interrupted == 16 and not any(rewards)  # every group ran out of time unrewarded
    scored = np.zeros(16)
    for _ in range(MAX_GROUP_STEPS - 1):  # now both push together: every group scores, again and again
        decision, terminal = env.get_steps(behavior)
        assert len(terminal) == 0  # scoring ends no episode
        np.add.at(scored, decision.agent_id, decision.group_reward)
        env.set_actions(behavior, ActionTuple(discrete=scripted(decision.obs[0])))
        env.step()
    assert scored.min() >= 3 and set(np.unique(scored % 1)) == {0.0}


def test_dungeon_escape_removes_the_agent_that_enters_the_den_until_its_group_ends(open_env):
    env = open_env("dungeonescape", args=["--seed", "2"])
    env.reset()
    behavior = "DungeonEscape?team=0"
    decision, _ = env.get_steps(behavior)
    assert len(decision) == 24 and decision.obs[0][:, 3 * WIDTH + 1].max() == 0.0  # every block locked
    out: dict[int, int] = {}  # group -> its removed agent, until the group's episode ends
    removed, scored = set(), set()
    for _ in range(MAX_GROUP_STEPS - 1):
        decision, terminal = env.get_steps(behavior)
        for agent, interrupted in zip(terminal.agent_id.tolist(), terminal.interrupted.tolist()):
            assert not interrupted  # the episodes end only at MAX_GROUP_STEPS
            out[agent // 3] = agent
            removed.add(agent)
        assert not set(out.values()) & set(decision.agent_id.tolist())  # a removed agent sends nothing
        scored.update(decision.agent_id[decision.group_reward > 0].tolist())
        # agents whose id is a multiple of 3 head for the den; the others push
        choice = np.where(decision.agent_id[:, None] % 3 == 0, LEFT, scripted(decision.obs[0])).astype(np.int32)
        env.set_actions(behavior, ActionTuple(discrete=choice))
        env.step()
    assert removed == set(range(0, 24, 3)) and set(terminal.group_reward.tolist()) <= {0.0}  # one per group, no reward
    assert scored == {a for a in range(24) if a % 3}  # the two others scored after it left
    ended = []
    for _ in range(3):  # the groups' time runs out: the others are interrupted
        env.set_actions(behavior, ActionTuple(discrete=np.zeros((len(decision), 1), np.int32)))
        env.step()
        decision, terminal = env.get_steps(behavior)
        ended += terminal.agent_id[terminal.interrupted].tolist()
    assert sorted(ended) == sorted(scored)
