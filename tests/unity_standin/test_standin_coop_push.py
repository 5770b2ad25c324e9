"""The cooperative tasks (POCA): only the group is rewarded, when its agents push together;
in ``dungeonescape`` one agent must leave first, and it sends nothing until its group ends."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple

from unity_standin.tasks.coop_push import BLOCK_START, LEFT, RIGHT, WIDTH


def _position(obs: np.ndarray) -> int:
    return int(np.argmax(obs[:WIDTH]))


def test_pushing_together_scores_for_the_group_and_alone_scores_nothing(open_env):
    env = open_env("pushblockcollab", args=["--seed", "2"])
    env.reset()
    behavior = "PushBlockCollab?team=0"
    spec = env.behavior_specs[behavior]
    assert [o.shape for o in spec.observation_specs] == [(3 * WIDTH + 1,)] and spec.action_spec.discrete_branches == (3,)
    group_rewards, rewards, ends = [], [], 0
    for _ in range(3 * BLOCK_START):
        decision, terminal = env.get_steps(behavior)
        group_rewards += terminal.group_reward.tolist()
        rewards += terminal.reward.tolist() + decision.reward.tolist()
        ends += len(terminal)
        # only the even agent of each group (ids 0, 2, ...) pushes: the block never moves
        choice = np.where(decision.agent_id % 2 == 0, RIGHT, LEFT).astype(np.int32)[:, None]
        assert sorted(set(np.asarray(decision.group_id).tolist())) == list(range(1, 9))
        env.set_actions(behavior, ActionTuple(discrete=choice))
        env.step()
    assert ends == 0 and not any(rewards)
    for _ in range(2 * BLOCK_START):  # now everyone pushes: every group scores once
        decision, terminal = env.get_steps(behavior)
        group_rewards += terminal.group_reward.tolist()
        env.set_actions(behavior, ActionTuple(discrete=np.full((len(decision), 1), RIGHT, np.int32)))
        env.step()
    assert len(group_rewards) >= 16 and set(group_rewards) == {1.0}  # every agent of every group, at least once


def test_dungeon_escape_removes_the_agent_that_enters_the_den_until_its_group_ends(open_env):
    env = open_env("dungeonescape", args=["--seed", "2"])
    env.reset()
    behavior = "DungeonEscape?team=0"
    decision, _ = env.get_steps(behavior)
    assert len(decision) == 24 and decision.obs[0][:, 3 * WIDTH].max() == 0.0  # every block locked
    out: dict[int, int] = {}  # group -> its removed agent, until the group scores
    removed, scored = set(), []
    for _ in range(4 * WIDTH):
        decision, terminal = env.get_steps(behavior)
        for agent, reward in zip(terminal.agent_id.tolist(), terminal.group_reward.tolist()):
            if reward:
                scored.append(agent)
                out.pop(agent // 3, None)
            else:
                out[agent // 3] = agent
                removed.add(agent)
        assert not set(out.values()) & set(decision.agent_id.tolist())  # a removed agent sends nothing
        if len(scored) == 16:
            break
        # agents whose id is a multiple of 3 head for the den; the others push
        choice = np.where(decision.agent_id % 3 == 0, LEFT, RIGHT).astype(np.int32)[:, None]
        env.set_actions(behavior, ActionTuple(discrete=choice))
        env.step()
    assert removed == set(range(0, 24, 3))  # one per group, removed with no reward
    assert sorted(scored) == sorted(a for a in range(24) if a % 3)  # the two others scored after it left
