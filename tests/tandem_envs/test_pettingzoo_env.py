"""``UnityParallelEnv`` against a gateway in front of the multi-behavior stand-in, with PettingZoo's API test."""

from __future__ import annotations

import gymnasium
import numpy as np
from pettingzoo.test import parallel_api_test

from tandem_envs.pettingzoo_env import UnityParallelEnv

CHASER, RUNNER = "Chaser?team=0", "Runner?team=0"


def test_parallel_api_test_passes(multibehavior):
    env = UnityParallelEnv(multibehavior.address)
    try:
        parallel_api_test(env, num_cycles=1000)
    finally:
        env.close()


def test_agents_by_behavior_with_their_own_spaces(multibehavior):
    env = UnityParallelEnv(multibehavior.address)
    try:
        env.reset(seed=0)
        # after a reset every chaser decides, and the runners whose turn it is (staggered by area)
        behaviors = {env.behavior_of(a) for a in env.agents}
        assert CHASER in behaviors and RUNNER in behaviors
        chaser = next(a for a in env.agents if env.behavior_of(a) == CHASER)
        runner = next(a for a in env.agents if env.behavior_of(a) == RUNNER)
        assert chaser.startswith(CHASER + "/0/") and chaser.endswith("/0")
        assert env.action_space(chaser) == gymnasium.spaces.Box(-1, 1, (2,), np.float32)
        assert env.action_space(runner) == gymnasium.spaces.Discrete(5)
        assert env.observation_space(runner).shape == (4,)
        obs, rewards, terminated, truncated, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
        assert infos[runner]["action_mask"].dtype == np.int8 and infos[runner]["action_mask"].shape == (5,)
        assert infos[chaser]["decision_requested"]
    finally:
        env.close()


def test_an_agents_episode_end_removes_it_and_its_next_episode_is_a_new_agent(multibehavior):
    env = UnityParallelEnv(multibehavior.address)
    try:
        obs, infos = env.reset()
        finished, appeared = [], []
        for _ in range(400):  # chasers are interrupted after 150 steps at the latest
            before = set(env.agents)
            obs, rewards, terminated, truncated, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
            finished += [a for a in before if terminated[a] or truncated[a]]
            appeared += [a for a in env.agents if a not in before]
            if any(env.behavior_of(a) == CHASER for a in finished):
                break
        done = next(a for a in finished if env.behavior_of(a) == CHASER)
        assert done not in env.agents
        behavior, instance, agent_id, episode = done.rsplit("/", 3)
        assert f"{behavior}/{instance}/{agent_id}/{int(episode) + 1}" in env.agents + appeared
    finally:
        env.close()
