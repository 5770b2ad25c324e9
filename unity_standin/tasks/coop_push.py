"""Cooperative group tasks where only the group's reward pays (``pushblockcollab``, ``dungeonescape``).

Why: POCA (``trainer_type: poca``) must be seen to learn what independent learners cannot:
like ML-Agents' PushBlockCollab, every reward here is a *group* reward (``AddGroupReward``),
which independent PPO ignores, and it comes only when agents act together. The
``dungeonescape`` variant also removes an agent mid-episode, as ML-Agents' DungeonEscape
does: the group is only rewarded after one of its agents left, so that agent's credit
must come through its group's value (ML-Agents' POCA bootstraps it).

Scene: ``GROUPS_PER_AREA * num_areas`` groups (``group_id`` 1, 2, ...), each of
``num_agents`` agents (default 2; ``dungeonescape`` 3) on a line of ``WIDTH`` cells with one
block in the middle and a goal on its left or its right (drawn per episode, observed). Each
decision an agent stays, steps left or steps right (agents may walk over the block's
cell). Agents next to the block on the side away from the goal that step towards it in the
same step push it, when there are at least ``PUSHERS`` of them (one alone steps onto the
block's cell); once it moves, every agent of the group gets a group reward of +1 and the
block is back in the middle (the pushers may push again), until ``MAX_GROUP_STEPS`` steps
end the group's episode (``GroupEpisodeInterrupted``). There is no individual reward, and
no episode ends early: an agent cannot shorten its episode by scoring (a learner without
the group reward would otherwise learn to score from its value estimates alone).
Agents start on random cells other than the block's; no single action solves it (the
pushers must reach the side the goal decides, together).

``dungeonescape``: the block is locked until one agent steps left off cell 0 (the
dragon's den): that agent is removed (its episode ends, done, and it sends nothing more
until its group's next episode) and the block unlocks for the others.

Observations (``VectorSensor_size{3 * WIDTH + 2}``): the agent's cell (one-hot), the
block's cell (one-hot), how many of its groupmates are on each cell (divided by the group
size), the goal's side (-1 left, +1 right) and 1 when the block is unlocked. Actions: one
discrete branch of 3 (stay, left, right). Stats: ``Environment/Goals`` (SUM): blocks pushed
to their goal.
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, resolve_period

WIDTH = 5
BLOCK_START = WIDTH // 2
#: agents that must push in the same step for the block to move
PUSHERS = 2
MAX_GROUP_STEPS = 20
GROUPS_PER_AREA = 8
STAY, LEFT, RIGHT = 0, 1, 2


class CoopPush(Task):
    """``pushblockcollab``: behavior ``PushBlockCollab``, groups of 2 pushing a heavy block."""

    name = "pushblockcollab"
    behavior = "PushBlockCollab?team=0"
    default_group_size = 2
    #: one agent must leave through the den before the block unlocks
    sacrifice = False

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        self.group_size = int(options.num_agents or self.default_group_size)
        needed = PUSHERS + int(self.sacrifice)
        if self.group_size < needed:
            raise ValueError(f"task {self.name}: groups need at least {needed} agents, --num-agents is {self.group_size}")
        self.groups = GROUPS_PER_AREA * max(1, options.num_areas)
        n = self.groups * self.group_size
        self.behaviors = (
            BehaviorDef(
                name=self.behavior,
                observations=(ObservationDef(f"VectorSensor_size{3 * WIDTH + 2}", (3 * WIDTH + 2,)),),
                continuous_size=0,
                discrete_branches=(3,),
                num_agents=n,
                max_step=0,
                decision_period=resolve_period(options, 1),
            ),
        )
        self.group_of = np.repeat(np.arange(self.groups), self.group_size)
        self.position = np.zeros(n, np.int64)
        self.is_active = np.zeros(n, bool)
        self.block = np.full(self.groups, BLOCK_START, np.int64)
        self.side = np.ones(self.groups, np.int64)  # the goal's side: -1 left, +1 right
        self.unlocked = np.ones(self.groups, bool)
        self.steps = np.zeros(self.groups, np.int64)
        self.over = np.ones(self.groups, bool)
        self._goals = 0

    # -- episodes ---------------------------------------------------------------------------
    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        """A group starts again once its episode is over (or all its agents reset together);
        an agent removed from a running group stays out until then."""
        counts = np.bincount(self.group_of[idx], minlength=self.groups)
        for g in np.flatnonzero(self.over | (counts == self.group_size)).tolist():
            members = self.group_of == g
            cells = self.rng.integers(0, WIDTH - 1, int(members.sum()))
            self.position[members] = np.where(cells >= BLOCK_START, cells + 1, cells)  # not on the block
            self.is_active[members] = True
            self.block[g] = BLOCK_START
            self.side[g] = self.rng.choice(np.array([-1, 1]))
            self.unlocked[g] = not self.sacrifice
            self.steps[g] = 0
            self.over[g] = False

    def active(self, behavior: str) -> np.ndarray:
        return self.is_active

    def group_ids(self, behavior: str, idx: np.ndarray) -> np.ndarray:
        return self.group_of[idx] + 1

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        k = len(idx)
        obs = np.zeros((k, 3 * WIDTH + 2), np.float32)
        rows = np.arange(k)
        groups = self.group_of[idx]
        obs[rows, self.position[idx]] = 1.0
        obs[rows, WIDTH + self.block[groups]] = 1.0
        occupancy = np.zeros((self.groups, WIDTH), np.float32)
        np.add.at(occupancy, (self.group_of[self.is_active], self.position[self.is_active]), 1.0)
        mates = occupancy[groups]
        mates[rows, self.position[idx]] -= self.is_active[idx]
        obs[:, 2 * WIDTH : 3 * WIDTH] = mates / self.group_size
        obs[:, 3 * WIDTH] = self.side[groups]
        obs[:, 3 * WIDTH + 1] = self.unlocked[groups]
        return [obs]

    # -- one step ---------------------------------------------------------------------------
    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[self.behavior]
        n = len(self.position)
        move = np.where(self.is_active, discrete[:, 0], STAY)
        block = self.block[self.group_of]
        ended = np.zeros(n, bool)
        # the den: stepping left off cell 0 while the block is locked removes the agent
        leaving = (move == LEFT) & (self.position == 0) & ~self.unlocked[self.group_of]
        for g in np.unique(self.group_of[leaving]).tolist():  # one agent per group (the first) is taken
            first = np.flatnonzero(leaving & (self.group_of == g))[0]
            leaving[(self.group_of == g) & (np.arange(n) != first)] = False
        side = self.side[self.group_of]
        towards = np.where(side > 0, RIGHT, LEFT)
        pushing = (move == towards) & (self.position == block - side) & self.unlocked[self.group_of] & ~leaving
        pushes = np.bincount(self.group_of[pushing], minlength=self.groups)
        pushed = (pushes >= PUSHERS)[self.group_of] & pushing  # they stay; a lone pusher steps over
        step = np.where(move == LEFT, -1, np.where(move == RIGHT, 1, 0))
        self.position = np.where(pushed | leaving, self.position, np.clip(self.position + step, 0, WIDTH - 1))
        if leaving.any():
            self.unlocked[np.unique(self.group_of[leaving])] = True
            self.is_active &= ~leaving
            ended |= leaving
        scored = (pushes >= PUSHERS) & ~self.over
        self._goals += int(scored.sum())
        self.steps += ~self.over
        timed_out = (self.steps >= MAX_GROUP_STEPS) & ~self.over
        group_reward = np.where(scored[self.group_of] & self.is_active, 1.0, 0.0).astype(np.float32)
        interrupted = timed_out[self.group_of] & self.is_active
        self.over |= timed_out
        return {
            self.behavior: ActResult(
                reward=np.zeros(n, np.float32), ended=ended, group_reward=group_reward, interrupted=interrupted
            )
        }

    def before_output(self) -> None:
        if self._goals:
            self.side_channels.add_stat("Environment/Goals", float(self._goals), STATS_SUM)
            self._goals = 0


class DungeonEscape(CoopPush):
    """``dungeonescape``: behavior ``DungeonEscape``, groups of 3 of which one must leave first."""

    name = "dungeonescape"
    behavior = "DungeonEscape?team=0"
    default_group_size = 3
    sacrifice = True
