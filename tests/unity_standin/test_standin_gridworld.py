"""The gridworld task: discrete branches, action masks and a PNG camera observation."""

from __future__ import annotations

import numpy as np
from mlagents_envs.base_env import ActionTuple
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
from mlagents_envs.side_channel.stats_side_channel import StatsSideChannel

GRID = "GridWorld?team=0"
AGENT_COLOR = np.array([40, 80, 230]) / 255.0
MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}


def _cells(vector: np.ndarray, size: int) -> np.ndarray:
    """Agent (row, col) from the vector observation (scaled by size - 1)."""
    return np.rint(vector[:, :2] * (size - 1)).astype(int)


def test_spec_has_a_visual_and_a_vector_observation_and_two_branches(open_env):
    env = open_env("gridworld")
    env.reset()
    spec = env.behavior_specs[GRID]
    camera, vector = spec.observation_specs
    assert camera.name == "CameraSensor" and camera.shape == (3, 24, 24)
    assert vector.name == "VectorSensor_size6" and vector.shape == (6,)
    assert spec.action_spec.continuous_size == 0
    assert spec.action_spec.discrete_branches == (5, 2)
    decision, _ = env.get_steps(GRID)
    assert len(decision) == 4


def test_visual_observation_decodes_channels_first_in_unit_range(open_env):
    env = open_env("gridworld")
    env.reset()
    decision, _ = env.get_steps(GRID)
    image = decision.obs[0]
    assert image.shape == (4, 3, 24, 24) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    cells = _cells(decision.obs[1], 5)
    for agent in range(4):
        # default 5 x 5 grid: 4-pixel cells, 2-pixel margin; the agent's block is blue.
        row, col = cells[agent]
        pixel = image[agent, :, 2 + row * 4 + 2, 2 + col * 4 + 2]
        assert np.allclose(pixel, AGENT_COLOR, atol=1e-6)


def test_masks_follow_walls_and_unmasked_moves_are_taken(open_env):
    env = open_env("gridworld", seed=5)
    env.reset()
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(120):
        decision, terminal = env.get_steps(GRID)
        move_mask, dig_mask = decision.action_mask
        cells = _cells(decision.obs[1], 5)
        goal_offset = decision.obs[1][:, 2:4]
        for agent in range(len(decision)):
            row, col = cells[agent]
            expected = [False, row == 0, row == 4, col == 0, col == 4]
            assert move_mask[agent].tolist() == expected
            on_goal = np.allclose(goal_offset[agent], 0)
            assert dig_mask[agent].tolist() == [False, not on_goal]
        # choose among allowed moves only, never dig
        moves = np.array([rng.choice(np.flatnonzero(~m)) for m in move_mask], dtype=np.int32)
        env.set_actions(GRID, ActionTuple(discrete=np.stack([moves, np.zeros_like(moves)], axis=1)))
        before = {int(i): cells[k] for k, i in enumerate(decision.agent_id)}
        env.step()
        after_decision, after_terminal = env.get_steps(GRID)
        ended = set(after_terminal.agent_id.tolist())
        after_cells = _cells(after_decision.obs[1], 5)
        for k, agent_id in enumerate(after_decision.agent_id):
            if int(agent_id) in ended:
                continue  # a new episode started elsewhere
            move = moves[list(decision.agent_id).index(agent_id)]
            delta = MOVES.get(int(move), (0, 0))
            assert tuple(after_cells[k] - before[int(agent_id)]) == delta
            checked += 1
    assert checked > 300


def test_masked_actions_are_ignored_and_counted(open_env):
    stats = StatsSideChannel()
    env = open_env("gridworld", side_channels=[stats])
    env.reset()
    ignored = 0
    for _ in range(20):
        decision, terminal = env.get_steps(GRID)
        move_mask, _ = decision.action_mask
        cells = _cells(decision.obs[1], 5)
        blocked = [np.flatnonzero(m)[0] if m.any() else 0 for m in move_mask]
        env.set_actions(GRID, ActionTuple(discrete=np.stack([blocked, np.ones(len(blocked))], axis=1).astype(np.int32)))
        env.step()
        after, after_terminal = env.get_steps(GRID)
        ended = set(after_terminal.agent_id.tolist())
        after_cells = _cells(after.obs[1], 5)
        for k, agent_id in enumerate(after.agent_id):
            j = list(decision.agent_id).index(agent_id)
            if int(agent_id) not in ended:
                assert tuple(after_cells[k]) == tuple(cells[j])  # blocked move and dig: stays
        ignored += sum(value for value, _ in stats.get_and_reset_stats().get("Environment/MaskedActionsIgnored", []))
    assert ignored >= 20 * 4  # every step at least the masked dig of each agent not on its goal


def test_grid_size_parameter_changes_the_grid(open_env):
    params = EnvironmentParametersChannel()
    params.set_float_parameter("gridSize", 3)
    env = open_env("gridworld", side_channels=[params])
    env.reset()
    decision, _ = env.get_steps(GRID)
    assert set(np.unique(decision.obs[1][:, :2])) <= {0.0, 0.5, 1.0}
    move_mask, _ = decision.action_mask
    cells = _cells(decision.obs[1], 3)
    for agent in range(len(decision)):
        row, col = cells[agent]
        assert move_mask[agent].tolist() == [False, row == 0, row == 2, col == 0, col == 2]


def test_reaching_the_goal_ends_the_episode_with_a_reward(open_env):
    env = open_env("gridworld", seed=2)
    env.reset()
    rewards = []
    for _ in range(60):
        decision, terminal = env.get_steps(GRID)
        rewards.extend(terminal.reward.tolist())
        offsets = np.rint(decision.obs[1][:, 2:4] * 5).astype(int)  # goal - agent, in cells
        pit = np.rint(decision.obs[1][:, 4:6] * 5).astype(int)
        move_mask, dig_mask = decision.action_mask
        actions = []
        for agent in range(len(decision)):
            dr, dc = offsets[agent]
            if dr == 0 and dc == 0:
                actions.append((0, 1))
                continue
            options = [m for m, (r, c) in MOVES.items() if not move_mask[agent][m]
                       and (np.sign(dr) == r != 0 or np.sign(dc) == c != 0)
                       and not (r == pit[agent][0] and c == pit[agent][1])]
            actions.append((options[0] if options else 0, 0))
        env.set_actions(GRID, ActionTuple(discrete=np.array(actions, dtype=np.int32)))
        env.step()
    assert sum(1 for r in rewards if r > 0.9) >= 8
