"""``hallway``: remember a cue shown only at the first step (behavior ``Hallway``), a memory task.

Why: a policy with memory (``network_settings.memory``, an LSTM) must be seen to carry
information across steps, which no feed-forward policy can. Like ML-Agents' Hallway (a
symbol seen at the start decides which goal pays), each episode shows a cue at its first
decision only; the agent then walks the hallway for ``LENGTH - 2`` blank steps and at the
last decision picks a goal. The observation of the last step is the same whatever the
cue, so a policy without memory picks right half of the time (mean reward 0), one that
remembers the cue scores 1.

Per agent, per episode: a cue, -1 or +1 with equal probability. Observations
(``VectorSensor_size3``): the cue at the first decision and 0 after it, the progress
``t / (LENGTH - 1)``, and 1 at the last decision (0 before). Actions: one discrete branch
of 2 (the goal: 0 for cue -1, 1 for cue +1), ignored before the last decision. Rewards: +1
for the right goal and -1 for the wrong one, at the last decision, which ends the episode
(no interruptions). Stats: ``Environment/RightGoals`` (SUM).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, Task, TaskOptions, agent_count, resolve_period, vector_behavior

BEHAVIOR = "Hallway?team=0"
DEFAULT_AGENTS = 16
#: decisions per episode: the cue, LENGTH - 2 blank steps, the choice
LENGTH = 4


class Hallway(Task):
    name = "hallway"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        self.behaviors = (vector_behavior(BEHAVIOR, 3, n, resolve_period(options, 1), discrete_branches=(2,)),)
        self.cue = np.ones(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self._right = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        self.cue[idx] = self.rng.choice(np.array([-1, 1]), size=len(idx))
        self.t[idx] = 0

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        t = self.t[idx]
        obs = np.empty((len(idx), 3), dtype=np.float32)
        obs[:, 0] = np.where(t == 0, self.cue[idx], 0)
        obs[:, 1] = t / (LENGTH - 1)
        obs[:, 2] = t == LENGTH - 1
        return [obs]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[BEHAVIOR]
        last = self.t == LENGTH - 1
        right = discrete[:, 0] == (self.cue > 0)
        self._right += int((last & right).sum())
        reward = np.where(last, np.where(right, 1.0, -1.0), 0.0).astype(np.float32)
        self.t = self.t + 1
        return {BEHAVIOR: ActResult(reward=reward, ended=last)}

    def before_output(self) -> None:
        if self._right:
            self.side_channels.add_stat("Environment/RightGoals", float(self._right), STATS_SUM)
            self._right = 0
