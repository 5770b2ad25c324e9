"""``gridworld``: walk to the goal and dig, avoid the pit (behavior ``GridWorld``).

Why: a discrete task with several action branches, action masks and a visual
observation, so the discrete and visual paths of the gateway and trainer are exercised
the way an ML-Agents scene exercises them.

Each agent has its own square grid (``gridSize`` cells a side, environment parameter,
default 5, 3 to 8) with a goal (green) and a pit (red) at random cells.
Actions, two branches:
  - move (5): 0 stay, 1 up, 2 down, 3 left, 4 right; moves into a wall are masked;
  - dig (2): 0 walk, 1 dig; digging is masked unless the agent stands on the goal.
A masked action sent anyway is ignored (the agent stays / does not dig); digging on
the goal ends the episode before any move, as an agent
script that checks its walls would do; ``Environment/MaskedActionsIgnored`` counts them.
Rewards: -0.01 per step, +1 and the episode's end for digging on the goal, -1 and the
end for stepping into the pit; episodes are interrupted after 100 steps.
Observations, in Unity's sensor order (sorted by name):
  - ``CameraSensor``: RGB image (3, 24, 24) channels-first (84x84 in ``gridworld84``),
    sent PNG-compressed;
  - ``VectorSensor_size6``: agent row and column scaled to [0, 1], goal and pit offsets
    from the agent divided by the grid size.
Stats: ``Environment/GoalsReached`` and ``Environment/PitFalls`` (SUM).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, agent_count, resolve_period

BEHAVIOR = "GridWorld?team=0"
DEFAULT_AGENTS = 4
IMAGE_SIZE = 24
MAX_STEP = 100
MIN_GRID, MAX_GRID = 3, 8
# move branch: row and column change of each action
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
_BACKGROUND = (30, 30, 30)
_FLOOR = (170, 170, 170)
_AGENT = (40, 80, 230)
_GOAL = (40, 200, 60)
_PIT = (220, 40, 40)


class GridWorld(Task):
    name = "gridworld"
    #: side of the camera image in pixels
    image_size = IMAGE_SIZE

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 1)
        self.behaviors = (
            BehaviorDef(
                name=BEHAVIOR,
                observations=(
                    ObservationDef("CameraSensor", (3, self.image_size, self.image_size), compressed=True),
                    ObservationDef("VectorSensor_size6", (6,)),
                ),
                continuous_size=0,
                discrete_branches=(5, 2),
                num_agents=n,
                max_step=MAX_STEP * period,
                decision_period=period,
            ),
        )
        self.size = np.full(n, 5, dtype=np.int64)
        self.agent = np.zeros((n, 2), dtype=np.int64)
        self.goal = np.zeros((n, 2), dtype=np.int64)
        self.pit = np.zeros((n, 2), dtype=np.int64)
        self._goals = 0
        self._pits = 0
        self._ignored = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        sizes = np.clip(np.rint(self.parameters.get("gridSize", 5.0, len(idx))), MIN_GRID, MAX_GRID)
        for agent, size in zip(idx, sizes.astype(np.int64)):
            cells = self.rng.choice(size * size, size=3, replace=False)
            rows, cols = np.divmod(cells, size)
            self.size[agent] = size
            self.agent[agent] = (rows[0], cols[0])
            self.goal[agent] = (rows[1], cols[1])
            self.pit[agent] = (rows[2], cols[2])

    def _move_allowed(self, idx: np.ndarray) -> np.ndarray:
        """bool [k, 5]: which moves stay inside the grid."""
        target = self.agent[idx][:, None, :] + _MOVES[None, :, :]
        size = self.size[idx][:, None, None]
        return np.all((target >= 0) & (target < size), axis=2)

    def action_masks(self, behavior: str, idx: np.ndarray) -> np.ndarray:
        on_goal = np.all(self.agent[idx] == self.goal[idx], axis=1)
        masks = np.zeros((len(idx), 7), dtype=bool)
        masks[:, :5] = ~self._move_allowed(idx)
        masks[:, 6] = ~on_goal
        return masks

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        size = self.size[idx].astype(np.float32)[:, None]
        agent = self.agent[idx].astype(np.float32)
        vector = np.concatenate(
            [
                agent / np.maximum(size - 1, 1),
                (self.goal[idx] - self.agent[idx]) / size,
                (self.pit[idx] - self.agent[idx]) / size,
            ],
            axis=1,
        ).astype(np.float32)
        return [self._render(idx), vector]

    def _render(self, idx: np.ndarray) -> np.ndarray:
        """uint8 [k, S, S, 3] (S = ``image_size``): the grid seen from above, one square block per cell."""
        side = self.image_size
        images = np.empty((len(idx), side, side, 3), dtype=np.uint8)
        images[:] = _BACKGROUND
        for row, agent in enumerate(idx):
            size = int(self.size[agent])
            cell = side // size
            margin = (side - cell * size) // 2
            image = images[row]
            image[margin : margin + cell * size, margin : margin + cell * size] = _FLOOR
            for (r, c), color in ((self.goal[agent], _GOAL), (self.pit[agent], _PIT), (self.agent[agent], _AGENT)):
                top, left = margin + r * cell, margin + c * cell
                image[top + 1 : top + cell, left + 1 : left + cell] = color
        return images

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[BEHAVIOR]
        n = len(self.agent)
        everyone = np.arange(n)
        move = np.clip(discrete[:, 0].astype(np.int64), 0, 4)
        dig = discrete[:, 1].astype(np.int64) == 1
        allowed = self._move_allowed(everyone)[everyone, move]
        on_goal = np.all(self.agent == self.goal, axis=1)
        self._ignored += int((~allowed).sum() + (dig & ~on_goal).sum())
        dug = dig & on_goal  # digging on the goal ends the episode before any move
        walks = allowed & ~dug
        self.agent = self.agent + np.where(walks[:, None], _MOVES[move], 0)
        fell = ~dug & np.all(self.agent == self.pit, axis=1)
        reward = np.full(n, -0.01, dtype=np.float32)
        reward[dug] += 1.0
        reward[fell] -= 1.0
        ended = dug | fell
        self._goals += int(dug.sum())
        self._pits += int(fell.sum())
        return {BEHAVIOR: ActResult(reward=reward, ended=ended)}

    def before_output(self) -> None:
        if self._goals:
            self.side_channels.add_stat("Environment/GoalsReached", float(self._goals), STATS_SUM)
        if self._pits:
            self.side_channels.add_stat("Environment/PitFalls", float(self._pits), STATS_SUM)
        if self._ignored:
            self.side_channels.add_stat("Environment/MaskedActionsIgnored", float(self._ignored), STATS_SUM)
        self._goals = self._pits = self._ignored = 0


class GridWorld84(GridWorld):
    """``gridworld84``: the same task and behavior (``GridWorld``) seen through an 84x84 camera,
    the size ML-Agents' bigger encoders (``nature_cnn`` needs 36x36, ``resnet``) are made for.
    Rendering stays a few block fills per agent."""

    name = "gridworld84"
    image_size = 84
