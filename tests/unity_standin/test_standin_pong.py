"""The two-player ``pong`` game for self-play: its teams through the real mlagents-envs client,
and the game itself (a ball-tracking paddle beats a random one; win/lose final rewards)."""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import SideChannels
from unity_standin.tasks import make_task
from unity_standin.tasks.base import TaskOptions

TEAM0, TEAM1 = "Pong?team=0", "Pong?team=1"


def test_two_teams_of_one_behavior_with_the_same_spec(open_env):
    env = open_env("pong")
    env.reset()
    assert set(env.behavior_specs) == {TEAM0, TEAM1}
    for name in (TEAM0, TEAM1):
        spec = env.behavior_specs[name]
        assert [o.shape for o in spec.observation_specs] == [(6,)]
        assert spec.action_spec.discrete_branches == (3,) and spec.action_spec.continuous_size == 0
    decisions0, _ = env.get_steps(TEAM0)
    decisions1, _ = env.get_steps(TEAM1)
    assert len(decisions0) == len(decisions1) == 8  # one agent per team on each of 8 courts
    # each agent sees the court from its own side: the ball's x is mirrored for team 1
    np.testing.assert_allclose(decisions0.obs[0][:, 2], -decisions1.obs[0][:, 2])


def _play(task, policies, games: int) -> tuple[list[int], int, list[float]]:
    """Plays ``games`` games; returns wins per team, draws, and the final rewards of team 0."""
    names = [b.name for b in task.behaviors]
    every = np.arange(task.n)
    for name in names:
        task.begin_episodes(name, every)
    wins, draws, finals, steps, played = [0, 0], 0, [], np.zeros(task.n, int), 0
    while played < games:
        actions = {n: (None, p(task.observe(n, every)[0])[:, None]) for n, p in zip(names, policies)}
        results = task.act(actions)
        steps += 1
        ended = results[names[0]].ended
        assert np.array_equal(ended, results[names[1]].ended)  # a game ends for both teams
        interrupted = ~ended & (steps >= 200)
        for i in np.flatnonzero(ended | interrupted):
            played += 1
            if interrupted[i]:
                draws += 1
                continue
            r0, r1 = results[names[0]].reward[i], results[names[1]].reward[i]
            assert {float(r0), float(r1)} == {1.0, -1.0}
            finals.append(float(r0))
            wins[0 if r0 > 0 else 1] += 1
        finished = np.flatnonzero(ended | interrupted)
        steps[finished] = 0
        for name in names:
            task.begin_episodes(name, finished)
    return wins, draws, finals


def _tracker(obs: np.ndarray) -> np.ndarray:
    """Moves the own paddle (obs 0) towards the ball's y (obs 3)."""
    gap = obs[:, 3] - obs[:, 0]
    return np.where(gap > 0.1, 1, np.where(gap < -0.1, 2, 0))


def test_a_paddle_that_follows_the_ball_beats_a_random_one_on_either_side():
    rng = np.random.default_rng(0)

    def random_policy(obs):
        return rng.integers(0, 3, len(obs))

    task = make_task("pong", TaskOptions(seed=1), SideChannels())
    wins, _, finals = _play(task, (_tracker, random_policy), 200)
    assert wins[0] >= 190 and set(finals) == {1.0} | ({-1.0} if wins[1] else set())
    task = make_task("pong", TaskOptions(seed=2), SideChannels())
    wins, _, _ = _play(task, (random_policy, _tracker), 200)
    assert wins[1] >= 190  # the mirrored observations make one policy fit both sides
    task = make_task("pong", TaskOptions(seed=3), SideChannels())
    wins, draws, _ = _play(task, (_tracker, _tracker), 16)
    assert draws == 16  # two good players: every game runs to the draw


def test_variants_name_their_behaviors_as_the_configs_that_need_them():
    soccer = make_task("soccertwos", TaskOptions(), SideChannels())
    assert [(b.name, b.discrete_branches) for b in soccer.behaviors] == [
        ("SoccerTwos?team=0", (3, 3, 3)), ("SoccerTwos?team=1", (3, 3, 3)),
    ]
    asymmetric = make_task("pong_asymmetric", TaskOptions(), SideChannels())
    assert [(b.name, b.observations[0].shape) for b in asymmetric.behaviors] == [
        ("Striker?team=0", (6,)), ("Goalie?team=1", (5,)),
    ]
