"""``pyramids``: press a switch, then reach the goal it reveals (behavior ``Pyramids``): sparse reward.

Why: exploration bonuses (curiosity, RND) matter where the reward is too rare for random
exploration to find. Like ML-Agents' Pyramids (press a switch, a pyramid appears, knock
it over and reach the gold brick), the only reward comes after two steps in order, far
apart: a random walk almost never does both before its episode is interrupted, while an
agent rewarded for unfamiliar states walks to the corridor's ends and finds it.

Per agent: a corridor of ``length`` cells (environment parameter ``corridor_length``,
default 15, clipped to 5..31, read when its episode begins); the agent starts in the middle
cell, the switch is the left end (cell 0), the goal the right end. Stepping on the switch
presses it; reaching the goal after the switch gives +1 and ends the episode; nothing else
is rewarded. Episodes end (EndEpisode, no reward) after 4 x length decisions (at least 40)
decisions (60 with the default): a random walk scores in about one episode in a thousand,
and PPO on the extrinsic reward alone does not learn it in 80k agent steps
(``benchmarks/results/bench_reward_signals.md``).
Observations (``VectorSensor_size33``): the agent's cell one-hot over 31 cells, whether the
switch is pressed, and the corridor length / 31. Actions: one discrete branch of 3
(0 stay, 1 left, 2 right). Stats: ``Environment/SwitchesPressed`` and
``Environment/GoalsReached`` (SUM).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, agent_count, resolve_period

BEHAVIOR = "Pyramids?team=0"
PARAMETER = "corridor_length"
DEFAULT_AGENTS = 16
DEFAULT_LENGTH = 15
MIN_LENGTH, MAX_LENGTH = 5, 31
OBSERVATION_SIZE = MAX_LENGTH + 2
_MOVES = np.array([0, -1, 1], dtype=np.int64)


def max_step(length: int) -> int:
    """Decisions before an episode in a corridor of ``length`` is interrupted."""
    return max(40, 4 * length)


class Pyramids(Task):
    name = "pyramids"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 1)
        self.behaviors = (
            BehaviorDef(
                name=BEHAVIOR,
                observations=(ObservationDef(f"VectorSensor_size{OBSERVATION_SIZE}", (OBSERVATION_SIZE,)),),
                continuous_size=0,
                discrete_branches=(3,),
                num_agents=n,
                max_step=max_step(MAX_LENGTH) * period,
                decision_period=period,
            ),
        )
        self.length = np.full(n, DEFAULT_LENGTH, dtype=np.int64)
        self.position = np.zeros(n, dtype=np.int64)
        self.pressed = np.zeros(n, dtype=bool)
        self.steps = np.zeros(n, dtype=np.int64)
        self._switches = 0
        self._goals = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        lengths = np.clip(np.rint(self.parameters.get(PARAMETER, float(DEFAULT_LENGTH), len(idx))), MIN_LENGTH, MAX_LENGTH)
        self.length[idx] = lengths.astype(np.int64)
        self.position[idx] = self.length[idx] // 2
        self.pressed[idx] = False
        self.steps[idx] = 0

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        obs = np.zeros((len(idx), OBSERVATION_SIZE), np.float32)
        obs[np.arange(len(idx)), self.position[idx]] = 1.0
        obs[:, MAX_LENGTH] = self.pressed[idx]
        obs[:, MAX_LENGTH + 1] = self.length[idx] / MAX_LENGTH
        return [obs]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[BEHAVIOR]
        move = _MOVES[np.clip(discrete[:, 0].astype(np.int64), 0, 2)]
        self.position = np.clip(self.position + move, 0, self.length - 1)
        newly = ~self.pressed & (self.position == 0)
        self.pressed |= newly
        reached = self.pressed & (self.position == self.length - 1)
        self.steps += 1
        # the task's own limit (by corridor length), below the behavior's max_step
        timeout = ~reached & (self.steps >= np.maximum(40, 4 * self.length))
        self._switches += int(newly.sum())
        self._goals += int(reached.sum())
        reward = reached.astype(np.float32)
        return {BEHAVIOR: ActResult(reward=reward, ended=reached | timeout)}

    def before_output(self) -> None:
        if self._switches:
            self.side_channels.add_stat("Environment/SwitchesPressed", float(self._switches), STATS_SUM)
        if self._goals:
            self.side_channels.add_stat("Environment/GoalsReached", float(self._goals), STATS_SUM)
        self._switches = self._goals = 0
