"""The sparse-reward task ``pyramids``: switch first, then the goal; nothing else pays."""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import SideChannels
from unity_standin.tasks import TaskOptions, make_task
from unity_standin.tasks.pyramids import BEHAVIOR, MAX_LENGTH, OBSERVATION_SIZE


def _task(num_agents: int = 4):
    task = make_task("pyramids", TaskOptions(seed=0, num_agents=num_agents), SideChannels())
    task.begin_episodes(BEHAVIOR, np.arange(num_agents))
    return task


def _step(task, moves: list[int]):
    actions = np.asarray(moves, np.int32)[:, None]
    return task.act({BEHAVIOR: (np.zeros((len(moves), 0), np.float32), actions)})[BEHAVIOR]


def test_observations_show_the_cell_the_switch_and_the_length() -> None:
    task = _task(2)
    obs = task.observe(BEHAVIOR, np.arange(2))[0]
    assert obs.shape == (2, OBSERVATION_SIZE) and obs.dtype == np.float32
    np.testing.assert_array_equal(np.argmax(obs[:, :MAX_LENGTH], axis=1), [7, 7])  # middle of 15 cells
    np.testing.assert_array_equal(obs[:, MAX_LENGTH], [0.0, 0.0])
    np.testing.assert_allclose(obs[:, MAX_LENGTH + 1], 15 / MAX_LENGTH)


def test_the_goal_pays_only_after_the_switch() -> None:
    task = _task(1)
    for _ in range(7):  # right to the goal first: nothing
        result = _step(task, [2])
    assert task.position[0] == 14 and result.reward[0] == 0.0 and not result.ended[0]
    for _ in range(14):  # left to the switch
        result = _step(task, [1])
    assert task.pressed[0] and result.reward[0] == 0.0
    for i in range(14):  # and back: +1 and the end on arrival
        result = _step(task, [2])
        assert result.ended[0] == (i == 13)
    assert result.reward[0] == 1.0


def test_a_random_walk_almost_never_scores_and_episodes_end_after_60_decisions() -> None:
    task = _task(64)
    rng = np.random.default_rng(0)
    wins = episodes = 0
    lengths = np.zeros(64, np.int64)
    for _ in range(600):
        result = _step(task, list(rng.integers(0, 3, 64)))
        lengths += 1
        ended = np.flatnonzero(result.ended)
        wins += int(result.reward.sum())
        episodes += len(ended)
        assert np.all(lengths[ended][result.reward[ended] == 0] == 60)
        lengths[ended] = 0
        task.begin_episodes(BEHAVIOR, ended)
    assert episodes >= 600 and wins <= episodes // 100
