"""``UnityEnv`` and ``UnityVectorEnv`` against gateways in front of the stand-in, with Gymnasium's own checks."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.passive_env_checker import env_render_passive_checker
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics

import tandem_envs
from tandem_envs.gymnasium_env import UnityEnv, UnityVectorEnv

GRID_STAY = np.array([0, 0])  # move: stay, dig: walk (never masked)


def test_check_env_passes_on_continuous_3dball(ball_one):
    env = gymnasium.make(tandem_envs.ENV_ID, address=ball_one.address, behavior="3DBall")
    try:
        # The render modes are checked on a second env, which cannot take the one Play
        # stream this env holds: render has its own test below.
        check_env(env.unwrapped, skip_render_check=True)
        assert env.observation_space == gymnasium.spaces.Box(-np.inf, np.inf, (8,), np.float32)
        assert env.action_space == gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    finally:
        env.close()


def test_check_env_passes_on_discrete_gridworld_with_masks_and_a_visual_observation(grid_one):
    env = gymnasium.make(tandem_envs.ENV_ID, address=grid_one.address)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        space = env.observation_space
        assert isinstance(space, gymnasium.spaces.Dict)
        assert space["CameraSensor"] == gymnasium.spaces.Box(0, 1, (3, 24, 24), np.float32)
        assert space["VectorSensor_size6"].shape == (6,)
        assert env.action_space == gymnasium.spaces.MultiDiscrete([5, 2])
        obs, info = env.reset()
        mask = info["action_mask"]
        assert mask.dtype == np.int8 and mask.shape == (7,)
        assert mask[5] == 1 and mask[6] in (0, 1)  # walking is always allowed, digging only on the goal
        np.testing.assert_array_equal(env.unwrapped.action_masks(), mask.astype(bool))
    finally:
        env.close()


def test_render_returns_the_agents_camera_as_rgb(grid_one):
    env = UnityEnv(grid_one.address, render_mode="rgb_array")
    try:
        env.reset(seed=3)
        env_render_passive_checker(env)
        frame = env.render()
        assert frame.shape == (24, 24, 3) and frame.dtype == np.uint8
    finally:
        env.close()


def test_a_behavior_without_a_visual_observation_has_no_render_mode(ball_one):
    with pytest.raises(ValueError, match="no visual observation"):
        UnityEnv(ball_one.address, render_mode="rgb_array")


def test_unknown_behavior_names_the_known_ones(ball_one):
    with pytest.raises(ValueError, match=r"'Nope' is not one of the gateway's behaviors \['3DBall\?team=0'\]"):
        UnityEnv(ball_one.address, behavior="Nope")


def test_max_step_truncates_and_the_next_episode_follows_without_a_scene_reset(grid_one):
    env = UnityEnv(grid_one.address)
    try:
        env.reset()
        for t in range(1, 200):  # standing still never reaches the goal or the pit: interrupted at 100 steps
            obs, reward, terminated, truncated, info = env.step(GRID_STAY)
            if terminated or truncated:
                break
        assert (t, terminated, truncated) == (100, False, True)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(GRID_STAY)  # the episode is over until reset
        obs, info = env.reset()
        assert obs in env.observation_space
        assert env.step(GRID_STAY)[3] is False  # a fresh episode: 100 steps to go
    finally:
        env.close()


def test_reaching_the_pit_or_the_goal_terminates(grid_one):
    env = UnityEnv(grid_one.address)
    env.action_space.seed(0)
    try:
        obs, info = env.reset()
        ends = []
        for _ in range(3000):
            move = env.np_random.choice(np.flatnonzero(info["action_mask"][:5]))
            obs, reward, terminated, truncated, info = env.step(np.array([move, 1 - info["action_mask"][6] == 0]))
            if terminated or truncated:
                ends.append((terminated, reward))
                obs, info = env.reset()
                if terminated:
                    break
        assert ends and ends[-1][0] and abs(ends[-1][1]) > 0.5  # +1 goal or -1 pit, minus step costs
    finally:
        env.close()


def test_one_agent_env_refuses_a_scene_with_several_agents(ball_two_instances):
    env = UnityEnv(ball_two_instances.address)
    try:
        with pytest.raises(ValueError, match="6 agents; UnityEnv drives exactly one"):
            env.reset()
    finally:
        env.close()


def test_vector_env_has_one_slot_per_agent_across_instances(ball_two_instances):
    env = UnityVectorEnv(ball_two_instances.address)
    try:
        assert env.num_envs == 6
        assert sorted({instance for instance, _ in env.agents}) == [0, 1]
        assert env.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        assert env.single_action_space == gymnasium.spaces.Box(-1, 1, (2,), np.float32)
        assert env.action_space.shape == (6, 2) and env.observation_space.shape == (6, 8)
        obs, info = env.reset(seed=1)
        assert obs in env.observation_space and info["decision_requested"].all()
        env.action_space.seed(1)
        for _ in range(20):
            obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
            assert obs in env.observation_space
            assert rewards.shape == terminated.shape == truncated.shape == (6,)
            assert rewards.dtype == np.float64 and terminated.dtype == truncated.dtype == np.bool_
            # 3DBall agents decide at the same period, but a dropped ball's end comes one Unity
            # step early (on its own): each step brings news for some slot
            assert (info["decision_requested"] | terminated | truncated).any()
    finally:
        env.close()


def test_vector_env_autoresets_in_the_same_step_with_the_final_observation_in_info(grid_four):
    env = RecordEpisodeStatistics(UnityVectorEnv(grid_four.address))
    try:
        obs, info = env.reset()
        stay = np.tile(GRID_STAY, (4, 1))
        for t in range(1, 101):
            obs, rewards, terminated, truncated, info = env.step(stay)
            if t < 100:
                assert not (terminated | truncated).any()
        assert truncated.all() and not terminated.any()
        assert info["_final_obs"].all()
        final = info["final_obs"][0]
        assert final["VectorSensor_size6"].shape == (6,)
        assert obs in env.observation_space  # the next episodes' first observations
        assert info["episode"]["l"].tolist() == [100] * 4  # RecordEpisodeStatistics reads SAME_STEP
        np.testing.assert_allclose(info["episode"]["r"], [-1.0] * 4, atol=1e-4)  # -0.01 per step
        assert info["action_mask"].shape == (4, 7)
    finally:
        env.close()


def test_vector_env_over_staggered_deciders_marks_the_slots_that_act(multibehavior):
    env = UnityVectorEnv(multibehavior.address, behavior="Runner")
    try:
        obs, info = env.reset()
        assert env.num_envs == 2 and env.single_action_space == gymnasium.spaces.Discrete(5)
        seen = []
        for _ in range(12):
            obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
            seen.append(info["decision_requested"].copy())
            assert info["decision_requested"].any() or (terminated | truncated).any()
        assert not all(row.all() for row in seen)  # runners decide every 3 steps, staggered
    finally:
        env.close()
