"""The 3dball task through the real mlagents-envs client over real sockets."""

from __future__ import annotations

import time

import numpy as np
from mlagents_envs.base_env import ActionTuple
from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
from mlagents_envs.side_channel.stats_side_channel import StatsAggregationMethod, StatsSideChannel
from standin_helpers import EpisodeTracker, balancing_actions

BALL = "3DBall?team=0"


def test_behavior_spec_arrives_with_the_first_observations(open_env):
    env = open_env("3dball")
    # Like a Unity build: brain parameters come with the first agent infos, after reset.
    assert dict(env.behavior_specs) == {}
    env.reset()
    spec = env.behavior_specs[BALL]
    assert [o.shape for o in spec.observation_specs] == [(8,)]
    assert spec.observation_specs[0].name == "VectorSensor_size8"
    assert spec.action_spec.continuous_size == 2
    assert spec.action_spec.discrete_branches == ()
    decision, terminal = env.get_steps(BALL)
    assert len(decision) == 12 and len(terminal) == 0
    assert sorted(decision.agent_id.tolist()) == list(range(12))
    assert np.all(decision.reward == 0)
    assert decision.obs[0].dtype == np.float32 and np.all(np.isfinite(decision.obs[0]))


def test_random_policy_drops_and_the_agent_restarts_under_the_same_id(open_env):
    env = open_env("3dball")
    env.reset()
    spec = env.behavior_specs[BALL]
    tracker = EpisodeTracker()
    restarted_same_step = only_terminal_steps = 0
    for _ in range(150):
        decision, terminal = env.get_steps(BALL)
        tracker.update(decision, terminal)
        # Agents decide every 5 physics steps; a ball that drops in between is reported
        # at the next physics step on its own, like Unity's NotifyAgentDone does.
        assert len(decision) in (0, 12)
        if len(decision) == 0:
            assert len(terminal) > 0
            only_terminal_steps += 1
        if len(terminal):
            assert np.all(terminal.reward == -1.0)
            assert not terminal.interrupted.any()
            # Unity keeps an agent's id for its life: a drop just before a decision step
            # shows the same id in the terminal and the decision steps.
            restarted_same_step += len(set(terminal.agent_id) & set(decision.agent_id))
        env.set_actions(BALL, spec.action_spec.random_action(len(decision)))
        env.step()
    dropped = [reward for _, reward, _ in tracker.finished]
    assert len(dropped) >= 20
    assert restarted_same_step > 0 and only_terminal_steps > 0
    assert {agent for agent, _, _ in tracker.finished} <= set(range(12))
    # +0.1 per decision, -1 at the drop: a random policy drops quickly.
    assert 0.0 < np.mean(dropped) < 3.0


def test_balancing_controller_reaches_the_max_step_and_is_interrupted(open_env):
    env = open_env("3dball", args=["--decision-period", "1"])
    env.reset()
    tracker = EpisodeTracker()
    for _ in range(1001):
        decision, terminal = env.get_steps(BALL)
        tracker.update(decision, terminal)
        env.set_actions(BALL, balancing_actions(decision.obs[0]))
        env.step()
    assert len(tracker.finished) == 12
    assert all(interrupted for _, _, interrupted in tracker.finished)
    assert all(abs(total - 100.0) < 0.05 for _, total, _ in tracker.finished)


def test_per_episode_ids_give_a_new_agent_id_after_an_episode_ends(open_env):
    env = open_env("3dball", args=["--agent-ids", "per-episode"])
    env.reset()
    spec = env.behavior_specs[BALL]
    ended: set[int] = set()
    seen: set[int] = set()
    for _ in range(80):
        decision, terminal = env.get_steps(BALL)
        ids = set(decision.agent_id.tolist())
        assert len(ids) in (0, 12)
        assert not ids & ended  # an id never comes back once its episode ended
        assert set(terminal.agent_id.tolist()) <= seen
        ended |= set(terminal.agent_id.tolist())
        seen |= ids
        env.set_actions(BALL, spec.action_spec.random_action(len(decision)))
        env.step()
    assert len(ended) > 0
    assert seen - set(range(12))  # new episodes came with new ids


def _rollout(env, steps: int, action_seed: int) -> list[np.ndarray]:
    env.reset()
    rng = np.random.default_rng(action_seed)
    observations = []
    for _ in range(steps):
        decision, terminal = env.get_steps(BALL)
        observations.append(np.concatenate([decision.obs[0].ravel(), terminal.obs[0].ravel(), terminal.reward]))
        actions = rng.uniform(-1, 1, size=(len(decision), 2)).astype(np.float32)
        env.set_actions(BALL, ActionTuple(continuous=actions))
        env.step()
    return observations


def test_same_seed_same_episodes_other_seed_other_episodes(open_env):
    first = _rollout(open_env("3dball", seed=7), 40, action_seed=1)
    second = _rollout(open_env("3dball", seed=7), 40, action_seed=1)
    other = _rollout(open_env("3dball", seed=8), 40, action_seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other[0])


def test_seed_argument_overrides_the_trainer_seed(open_env):
    first = _rollout(open_env("3dball", seed=1, args=["--seed", "5"]), 3, action_seed=0)
    second = _rollout(open_env("3dball", seed=2, args=["--seed", "5"]), 3, action_seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def _drops_with_still_platforms(env, steps: int) -> int:
    env.reset()
    drops = 0
    for _ in range(steps):
        decision, terminal = env.get_steps(BALL)
        drops += len(terminal)
        env.set_actions(BALL, ActionTuple(continuous=np.zeros((len(decision), 2), dtype=np.float32)))
        env.step()
    return drops


def test_environment_parameters_change_gravity_and_scale(open_env):
    baseline = _drops_with_still_platforms(open_env("3dball", seed=3), 40)
    heavy = EnvironmentParametersChannel()
    heavy.set_float_parameter("gravity", 40.0)
    harder = _drops_with_still_platforms(open_env("3dball", seed=3, side_channels=[heavy]), 40)
    assert harder > baseline + 5

    scaled = EnvironmentParametersChannel()
    scaled.set_float_parameter("scale", 3.0)
    env = open_env("3dball", seed=3, side_channels=[scaled])
    env.reset()
    height = env.get_steps(BALL)[0].obs[0][:, 3]  # ball height above the platform
    assert 1.0 < float(np.mean(height)) < 2.0


def test_sampled_parameter_and_stats_arrive_on_the_stats_channel(open_env):
    params = EnvironmentParametersChannel()
    params.set_uniform_sampler_parameters("gravity", 20.0, 30.0, seed=4)
    stats = StatsSideChannel()
    env = open_env("3dball", side_channels=[params, stats])
    env.reset()
    spec = env.behavior_specs[BALL]
    received: dict[str, list] = {}
    for _ in range(40):
        decision, _ = env.get_steps(BALL)
        env.set_actions(BALL, spec.action_spec.random_action(len(decision)))
        env.step()
        for key, values in stats.get_and_reset_stats().items():
            received.setdefault(key, []).extend(values)
    drops = received["Environment/Drops"]
    assert all(method == StatsAggregationMethod.SUM for _, method in drops)
    assert sum(value for value, _ in drops) >= 5
    gravities = [value for value, _ in received["Environment/Gravity"]]
    assert gravities and all(20.0 <= g <= 30.0 for g in gravities)
    assert len(set(gravities)) > 1  # a fresh draw per episode


def test_target_frame_rate_paces_steps_and_default_does_not(open_env):
    engine = EngineConfigurationChannel()
    engine.set_configuration_parameters(time_scale=1.0, target_frame_rate=20)
    paced = open_env("3dball", args=["--decision-period", "1"], side_channels=[engine])
    fast = open_env("3dball", args=["--decision-period", "1"])
    durations = []
    for env in (paced, fast):
        env.reset()
        start = time.monotonic()
        for _ in range(20):
            env.step()
        durations.append(time.monotonic() - start)
    assert durations[0] >= 20 / 20 * 0.8
    assert durations[1] < durations[0]


def test_num_areas_and_num_agents_multiply_agents(open_env):
    env = open_env("3dball", args=["--num-agents", "5"], num_areas=3)
    env.reset()
    decision, _ = env.get_steps(BALL)
    assert len(decision) == 15
    assert len(set(decision.agent_id.tolist())) == 15


def test_reset_mid_run_begins_new_episodes_without_terminal_steps(open_env):
    env = open_env("3dball", args=["--decision-period", "1"])
    env.reset()
    spec = env.behavior_specs[BALL]
    for _ in range(30):
        decision, _ = env.get_steps(BALL)
        env.set_actions(BALL, spec.action_spec.random_action(len(decision)))
        env.step()
    before = env.get_steps(BALL)[0].obs[0]
    env.reset()
    decision, terminal = env.get_steps(BALL)
    assert len(terminal) == 0 and len(decision) == 12
    assert np.all(decision.reward == 0)
    assert sorted(decision.agent_id.tolist()) == list(range(12))  # Unity keeps agent ids
    assert not np.array_equal(before, decision.obs[0])
    assert np.all(np.abs(decision.obs[0][:, 5:]) < 1e-6)  # the balls start at rest
