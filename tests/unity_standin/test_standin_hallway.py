"""The hallway task: a cue shown only at the first decision decides which goal pays at the last one."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple

HALLWAY = "Hallway?team=0"


def _play(env, remember: bool, steps: int = 40) -> tuple[list[float], list[np.ndarray]]:
    """Plays ``steps`` academy steps; an agent that remembers picks its cue's goal. Returns
    the episode returns and every observation of the last decisions."""
    cues: dict[int, int] = {}
    returns, last_observations = [], []
    for _ in range(steps):
        decision, terminal = env.get_steps(HALLWAY)
        returns += [float(r) for r in terminal.reward]
        for agent in terminal.agent_id:
            cues.pop(int(agent), None)
        choice = np.zeros((len(decision), 1), np.int32)
        for row, agent in enumerate(decision.agent_id):
            obs = decision.obs[0][row]
            if obs[1] == 0.0:  # the first decision: the cue is visible
                cues[int(agent)] = int(obs[0])
            else:
                assert obs[0] == 0.0  # hidden after it
            if obs[2] == 1.0:
                last_observations.append(obs.copy())
                choice[row, 0] = int(cues[int(agent)] > 0) if remember else 0
        env.set_actions(HALLWAY, ActionTuple(discrete=choice))
        env.step()
    return returns, last_observations


def test_remembering_the_cue_pays_and_the_last_observation_does_not_show_it(open_env):
    env = open_env("hallway", args=["--seed", "3"])
    env.reset()
    spec = env.behavior_specs[HALLWAY]
    assert [o.shape for o in spec.observation_specs] == [(3,)]
    assert spec.action_spec.discrete_branches == (2,)
    returns, last = _play(env, remember=True)
    assert len(returns) >= 100 and set(returns) == {1.0}
    assert {tuple(o) for o in last} == {(0.0, 1.0, 1.0)}  # the same whatever the cue


def test_a_fixed_goal_is_right_half_of_the_time(open_env):
    env = open_env("hallway", args=["--seed", "4"])
    env.reset()
    returns, _ = _play(env, remember=False, steps=200)
    assert set(returns) == {1.0, -1.0}
    assert abs(np.mean(returns)) < 0.2
