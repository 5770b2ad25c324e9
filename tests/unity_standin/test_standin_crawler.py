"""The crawler task: ML-Agents' Crawler spec (172 observations, 20 continuous actions), and a
policy that turns the target direction into the right joint speeds earns far more than random."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple

from unity_standin.tasks.crawler import JOINT_SPEED, TARGET_SPEED, Crawler
from unity_standin.tasks.base import TaskOptions

CRAWLER = "Crawler?team=0"


def _mean_reward(env, act, steps: int = 30) -> float:
    rewards = []
    for _ in range(steps):
        decision, terminal = env.get_steps(CRAWLER)
        rewards += [float(r) for r in decision.reward]
        env.set_actions(CRAWLER, ActionTuple(continuous=act(decision.obs[0]).astype(np.float32)))
        env.step()
    return float(np.mean(rewards))


def test_the_crawler_spec_is_ml_agents_and_walking_towards_the_target_pays(open_env):
    env = open_env("crawler", args=["--seed", "2"])
    env.reset()
    spec = env.behavior_specs[CRAWLER]
    assert [o.shape for o in spec.observation_specs] == [(172,)]
    assert spec.action_spec.continuous_size == 20 and spec.action_spec.discrete_size == 0
    gait = Crawler(TaskOptions(), None)._gait  # the fixed map from joint speeds to the body's velocity
    walk = np.linalg.pinv(gait.T * JOINT_SPEED)  # [2] wanted velocity -> [20] commands

    def towards_target(obs: np.ndarray) -> np.ndarray:
        target = obs[:, 103:105]  # q, dq, sin, cos, last action (100), velocity (3), then the target
        return np.clip((TARGET_SPEED * target) @ walk.T, -1.0, 1.0)

    rng = np.random.default_rng(0)
    random = _mean_reward(env, lambda obs: rng.uniform(-1, 1, (len(obs), 20)))
    walking = _mean_reward(env, towards_target)
    assert 0.0 <= random < 0.3 and walking > 0.6, (random, walking)
