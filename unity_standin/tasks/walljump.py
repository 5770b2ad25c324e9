"""``walljump``: climb a wall of a given height (behavior ``WallJump``), a task made for curricula.

Why: a curriculum matters where the final task's reward is too rare for a beginner to
find. Like ML-Agents' WallJump (whose wall height is the curriculum's parameter), the
agent must get over a wall, easy when it is low and hopeless for a beginner when it is
high: each climb action raises the agent one step and costs a little effort, any other
action drops it back to the ground, so a wall of height ``h`` needs ``h`` climbs in a row.
A uniformly random policy (1 in 3 climbs) clears a wall of 2 in most episodes and one of 10
in about one episode in a thousand, so on a high wall the effort is all a beginner learns
from and it learns to stop climbing (the trap of ML-Agents' WallJump); a policy that
learned on a low wall that climbing pays clears any height.

Per agent: the wall height ``ceil(wall_height)`` (environment parameter, read when its
episode begins; default 10, clipped to 1..16). Observations (``VectorSensor_size3``):
height / 16, wall height / 16, remaining height / 16. Actions: one discrete branch of 3
(0 rest, 1 climb, 2 step back). Rewards: -0.002 per step, -0.01 per climb, +1 and the
episode's end on reaching the top; episodes are interrupted after ``MAX_STEP`` (50)
decisions. So a clean climb over a wall of 10 scores 0.88, and an episode that never
reaches the top scores between -0.1 (resting) and -0.6 (climbing all the time).
Stats: ``Environment/Wall Height`` (AVERAGE of the heights episodes began with) and
``Environment/WallsCleared`` (SUM).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_AVERAGE, STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, Task, TaskOptions, agent_count, resolve_period, vector_behavior

BEHAVIOR = "WallJump?team=0"
PARAMETER = "wall_height"
DEFAULT_AGENTS = 12
DEFAULT_HEIGHT = 10.0
MAX_HEIGHT = 16
MAX_STEP = 50
STEP_PENALTY = 0.002
CLIMB_COST = 0.01
CLIMB = 1


class WallJump(Task):
    name = "walljump"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 1)
        self.behaviors = (vector_behavior(BEHAVIOR, 3, n, period, discrete_branches=(3,), max_decisions=MAX_STEP),)
        self.height = np.zeros(n, dtype=np.int64)
        self.wall = np.full(n, int(DEFAULT_HEIGHT), dtype=np.int64)
        self._cleared = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        if not len(idx):
            return
        wanted = np.ceil(self.parameters.get(PARAMETER, DEFAULT_HEIGHT, len(idx)))
        self.wall[idx] = np.clip(wanted, 1, MAX_HEIGHT).astype(np.int64)
        self.height[idx] = 0
        self.side_channels.add_stat("Environment/Wall Height", float(self.wall[idx].mean()), STATS_AVERAGE)

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        obs = np.empty((len(idx), 3), dtype=np.float32)
        obs[:, 0] = self.height[idx] / MAX_HEIGHT
        obs[:, 1] = self.wall[idx] / MAX_HEIGHT
        obs[:, 2] = (self.wall[idx] - self.height[idx]) / MAX_HEIGHT
        return [obs]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[BEHAVIOR]
        climb = discrete[:, 0] == CLIMB
        self.height = np.where(climb, self.height + 1, 0)
        top = self.height >= self.wall
        self._cleared += int(top.sum())
        reward = (np.where(top, 1.0, -STEP_PENALTY) - CLIMB_COST * climb).astype(np.float32)
        return {BEHAVIOR: ActResult(reward=reward, ended=top)}

    def before_output(self) -> None:
        if self._cleared:
            self.side_channels.add_stat("Environment/WallsCleared", float(self._cleared), STATS_SUM)
            self._cleared = 0
