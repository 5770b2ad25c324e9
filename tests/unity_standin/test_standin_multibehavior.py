"""Two behaviors in one scene: different specs, decision rates and episode ends."""

from __future__ import annotations

import numpy as np
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
from mlagents_envs.side_channel.stats_side_channel import StatsSideChannel

CHASER = "Chaser?team=0"
RUNNER = "Runner?team=0"


def _random_step(env):
    steps = {}
    for name, spec in env.behavior_specs.items():
        decision, terminal = env.get_steps(name)
        steps[name] = (decision, terminal)
        env.set_actions(name, spec.action_spec.random_action(len(decision)))
    env.step()
    return steps


def test_two_behaviors_with_different_specs(open_env):
    env = open_env("multibehavior")
    env.reset()
    chaser, runner = env.behavior_specs[CHASER], env.behavior_specs[RUNNER]
    assert [o.shape for o in chaser.observation_specs] == [(6,)]
    assert chaser.action_spec.continuous_size == 2 and chaser.action_spec.discrete_branches == ()
    assert [o.shape for o in runner.observation_specs] == [(4,)]
    assert runner.action_spec.continuous_size == 0 and runner.action_spec.discrete_branches == (5,)
    chasers, _ = env.get_steps(CHASER)
    runners, _ = env.get_steps(RUNNER)
    assert len(chasers) == 4
    assert len(runners) == 2  # runners are staggered over 3 steps: agents 0 and 3 decide at step 0
    assert not set(chasers.agent_id) & set(runners.agent_id)
    assert np.all(np.asarray(runners.group_id) > 0) and np.all(np.asarray(chasers.group_id) == 0)


def test_runners_decide_every_third_step_in_turn(open_env):
    env = open_env("multibehavior")
    env.reset()
    appearances: dict[int, list[int]] = {}
    for step in range(30):
        steps = _random_step(env)
        decision, _ = steps[RUNNER]
        assert len(decision) < 4
        for agent_id in decision.agent_id:
            appearances.setdefault(int(agent_id), []).append(step)
        assert len(steps[CHASER][0]) == 4  # chasers decide every step
    assert len(appearances) == 4
    for steps_seen in appearances.values():
        gaps = np.diff(steps_seen)
        assert np.all(gaps == 3)


def test_interruptions_come_at_each_behaviors_own_max_step(open_env):
    never_caught = EnvironmentParametersChannel()
    never_caught.set_float_parameter("catch_radius", 0.0)
    env = open_env("multibehavior", side_channels=[never_caught])
    env.reset()
    ends: dict[str, list[tuple[int, bool]]] = {CHASER: [], RUNNER: []}
    for step in range(1, 402):
        steps = _random_step(env)
        for name in ends:
            _, terminal = steps[name]
            ends[name].extend((step, bool(i)) for i in terminal.interrupted)
    chaser_steps = sorted({s for s, _ in ends[CHASER]})
    # the reset output is academy step 1; an episode interrupted in academy step 150
    # is reported with the next step's output
    assert chaser_steps == [151, 301]
    assert all(interrupted for _, interrupted in ends[CHASER])
    assert len(ends[CHASER]) == 8
    assert {s for s, _ in ends[RUNNER]} == {401}
    assert len(ends[RUNNER]) == 4 and all(i for _, i in ends[RUNNER])


def test_catches_end_both_episodes_with_rewards_group_rewards_and_stats(open_env):
    always_caught = EnvironmentParametersChannel()
    always_caught.set_float_parameter("catch_radius", 100.0)
    stats = StatsSideChannel()
    env = open_env("multibehavior", side_channels=[always_caught, stats])
    env.reset()
    runner_ends_without_decision = 0
    for _ in range(5):
        steps = _random_step(env)
        chaser_decision, chaser_terminal = steps[CHASER]
        runner_decision, runner_terminal = steps[RUNNER]
        if len(chaser_terminal):
            assert np.all(chaser_terminal.reward == 1.0) and not chaser_terminal.interrupted.any()
            assert len(runner_terminal) == len(chaser_terminal)
            assert np.allclose(runner_terminal.reward, -1.0 + 0.0)
            assert np.all(runner_terminal.group_reward == -1.0)
            assert np.all(np.asarray(runner_terminal.group_id) > 0)
            runner_ends_without_decision += len(set(runner_terminal.agent_id) - set(runner_decision.agent_id))
    assert runner_ends_without_decision > 0  # runners end between their decisions
    catches = stats.get_and_reset_stats()["Environment/Catches"]
    assert sum(value for value, _ in catches) >= 16
