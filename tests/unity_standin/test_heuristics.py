"""The stand-in's scripted experts play their tasks (in process, the tasks' own code) as experts."""

from __future__ import annotations

import numpy as np
import pytest

from unity_standin.heuristics import heuristic_for
from unity_standin.side_channels import SideChannels
from unity_standin.tasks.ball3d import BEHAVIOR as BALL, Ball3D
from unity_standin.tasks.base import TaskOptions
from unity_standin.tasks.gridworld import BEHAVIOR as GRID, GridWorld


def test_3dball_expert_keeps_every_ball_up_for_whole_episodes() -> None:
    task = Ball3D(TaskOptions(seed=3, num_agents=16), SideChannels())
    n, period = task.n, task.behaviors[0].decision_period
    everyone = np.arange(n)
    task.begin_episodes(BALL, everyone)
    expert = heuristic_for(BALL)
    returns = np.zeros(n)
    for _ in range(1000):  # one whole episode: 1000 decisions
        continuous, discrete = expert(task.observe(BALL, everyone), None)
        assert continuous.shape == (n, 2) and discrete.shape == (n, 0) and np.all(np.abs(continuous) <= 1)
        for _ in range(period):
            result = task.act({BALL: (continuous, discrete)})[BALL]
            assert not result.ended.any()
        returns += result.reward
    assert returns.min() == pytest.approx(100.0)


def _shortest(size: int, start: tuple, goal: tuple, pit: tuple) -> int:
    """Moves of the shortest path around the pit (breadth-first search)."""
    frontier, seen, steps = [start], {start}, 0
    while frontier:
        if goal in frontier:
            return steps
        nxt = []
        for r, c in frontier:
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                cell = (r + dr, c + dc)
                if 0 <= cell[0] < size and 0 <= cell[1] < size and cell != pit and cell not in seen:
                    seen.add(cell)
                    nxt.append(cell)
        frontier, steps = nxt, steps + 1
    raise AssertionError("unreachable goal")


def test_gridworld_expert_walks_a_shortest_path_and_digs() -> None:
    task = GridWorld(TaskOptions(seed=5, num_agents=200), SideChannels())
    everyone = np.arange(len(task.agent))
    task.begin_episodes(GRID, everyone)
    shortest = [
        _shortest(int(task.size[i]), tuple(task.agent[i]), tuple(task.goal[i]), tuple(task.pit[i])) for i in everyone
    ]
    expert = heuristic_for(GRID)
    done_at = np.full(len(everyone), -1)
    for t in range(30):
        mask = task.action_masks(GRID, everyone)
        _, discrete = expert(task.observe(GRID, everyone), mask)
        chosen = np.stack([mask[everyone, discrete[:, 0]], mask[everyone, 5 + discrete[:, 1]]], axis=1)
        assert not chosen[done_at < 0].any(), "the expert chose a masked action"
        result = task.act({GRID: (np.zeros((len(everyone), 0), np.float32), discrete)})[GRID]
        assert not (result.reward[done_at < 0] < -0.5).any(), "the expert fell into the pit"
        newly = result.ended & (done_at < 0)
        done_at[newly] = t
        if (done_at >= 0).all():
            break
    # digging takes one step after the last move
    assert (done_at == np.asarray(shortest)).all()


def test_unknown_behavior_is_named() -> None:
    with pytest.raises(ValueError, match="'Walker' has no scripted heuristic .*3DBall, GridWorld"):
        heuristic_for("Walker?team=0")
