"""The sorter task (a BufferSensor's variable-length observation) and gridworld84 (an 84x84 camera),
through the real mlagents-envs client."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple, DimensionProperty
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel

from common.specs import from_mlagents

SORTER = "Sorter?team=0"
MAX_TILES, GRID = 20, 7
MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}


def test_sorter_spec_is_a_buffer_sensor_and_a_vector(open_env):
    env = open_env("sorter")
    env.reset()
    spec = env.behavior_specs[SORTER]
    buffer, vector = spec.observation_specs
    assert buffer.name == "BufferSensor" and buffer.shape == (MAX_TILES, MAX_TILES + 3)
    assert buffer.dimension_property == (DimensionProperty.VARIABLE_SIZE, DimensionProperty.NONE)
    assert vector.shape == (3,)
    assert spec.action_spec.discrete_branches == (5,)
    assert from_mlagents(SORTER, spec).observations[0].shape == (MAX_TILES, MAX_TILES + 3)


def test_num_tiles_sets_the_real_entities_and_the_rest_is_zero_padding(open_env):
    channel = EnvironmentParametersChannel()
    env = open_env("sorter", side_channels=[channel])
    channel.set_float_parameter("num_tiles", 5.0)
    env.reset()
    decision, _ = env.get_steps(SORTER)
    buffer = decision.obs[0]
    real = np.sum(buffer * buffer, axis=2) >= 0.01
    assert (real.sum(axis=1) == 5).all()
    assert np.all(buffer[~real] == 0.0)
    # each real row: the one-hot of a distinct number 1..5, an offset, not visited yet
    numbers = np.sort(np.argmax(buffer[:, :, :MAX_TILES], axis=2)[real].reshape(len(decision), 5), axis=1)
    assert (numbers == np.arange(5)).all()
    assert np.all(buffer[real][:, MAX_TILES + 2] == 0.0)


def _walk_towards(buffer: np.ndarray) -> np.ndarray:
    """The move toward the lowest unvisited tile of each agent, around the other unvisited
    tiles when it can (a scripted expert)."""
    moves = np.zeros(len(buffer), np.int32)
    for a, rows in enumerate(buffer):
        real = (rows * rows).sum(axis=1) >= 0.01
        open_ = real & (rows[:, MAX_TILES + 2] == 0)
        offsets = np.rint(rows[:, MAX_TILES : MAX_TILES + 2] * (GRID - 1)).astype(int)
        target = np.flatnonzero(open_)[np.argmin(np.argmax(rows[open_, :MAX_TILES], axis=1))]
        dr, dc = offsets[target]
        blocked = {tuple(o) for o in offsets[open_ & (np.arange(len(rows)) != target)]}
        toward = [m for m, ok in ((2, dr > 0), (1, dr < 0), (4, dc > 0), (3, dc < 0)) if ok]
        free = [m for m in toward if MOVES[m] not in blocked]
        moves[a] = (free or toward)[0]
    return moves


def test_visiting_in_order_pays_and_ends_the_episode_sorted(open_env):
    channel = EnvironmentParametersChannel()
    env = open_env("sorter", side_channels=[channel], args=["--seed", "3"])
    channel.set_float_parameter("num_tiles", 3.0)
    env.reset()
    returns = np.zeros(16)
    finished = []
    for _ in range(40):
        decision, terminal = env.get_steps(SORTER)
        for agent, reward in zip(terminal.agent_id, terminal.reward):
            finished.append(returns[agent] + reward)
            returns[agent] = 0.0
        returns[decision.agent_id] += decision.reward
        if len(finished) >= 16:
            break
        env.set_actions(SORTER, ActionTuple(discrete=_walk_towards(decision.obs[0])[:, None]))
        env.step()
    assert len(finished) >= 16
    # three tiles in order, a few steps' penalty; the expert cannot always get around a tile in its way
    assert sum(r > 2.5 for r in finished) >= 12, finished
    assert all(r > 2.5 or r < 0.0 for r in finished), finished  # else a wrong tile: -1 and the end


def test_gridworld84_is_gridworld_with_an_84x84_camera(open_env):
    env = open_env("gridworld84")
    env.reset()
    spec = env.behavior_specs["GridWorld?team=0"]
    assert spec.observation_specs[0].shape == (3, 84, 84)
    decision, _ = env.get_steps("GridWorld?team=0")
    image = decision.obs[0]
    assert image.shape == (4, 3, 84, 84) and 0.0 <= image.min() and image.max() <= 1.0
    # the agent's block (blue) is drawn: 84 // 5 = 16-pixel cells
    assert (np.abs(image[:, :, :, :] - (np.array([40, 80, 230]) / 255.0)[None, :, None, None]).max(axis=1) < 1e-6).sum(axis=(1, 2)).min() > 100
