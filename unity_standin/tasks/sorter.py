"""``sorter``: visit numbered tiles in increasing order (behavior ``Sorter``), seen through a BufferSensor.

Why: ML-Agents' Sorter example observes a varying number of tiles through a BufferSensor,
a variable-length observation ``[max_entities, entity_size]`` whose unused rows are all
zero; the policy reads it with entity attention. This task gives the gateway and the
trainer the same observation, with the same curriculum parameter (``num_tiles``), on a
grid cheap enough for CI.

Per agent: a ``GRID`` x ``GRID`` grid with ``num_tiles`` tiles (environment parameter,
read when the episode begins; default 2, clipped to 1..``MAX_TILES``) numbered 1..num_tiles
at distinct random cells, none under the agent. Actions: one branch of 5 (0 stay, 1 up,
2 down, 3 left, 4 right; a move into the wall is ignored). Stepping on the lowest
unvisited tile marks it visited: +1; on another unvisited tile: -1 and the episode's end;
on a visited tile: nothing. -1/``MAX_STEP`` per step; the episode ends once every tile is
visited and is interrupted after ``MAX_STEP`` decisions. So a perfect episode scores about
num_tiles, a random one below 0.
Observations, in Unity's sensor order (sorted by name):
  - ``BufferSensor``: ``(MAX_TILES, MAX_TILES + 3)``: per tile, in a random order fixed for
    the episode, one-hot of its number (``MAX_TILES``), its row and column offset from the
    agent divided by ``GRID - 1``, and 1 if visited; rows past ``num_tiles`` are zero;
  - ``VectorSensor_size3``: agent row and column scaled to [0, 1], fraction of tiles visited.
Stats: ``Environment/TilesVisited`` (AVERAGE per finished episode) and
``Environment/Sorted`` (SUM of episodes that visited every tile in order).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_AVERAGE, STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, agent_count, resolve_period

BEHAVIOR = "Sorter?team=0"
PARAMETER = "num_tiles"
DEFAULT_AGENTS = 16
DEFAULT_TILES = 2.0
MAX_TILES = 20
GRID = 7
MAX_STEP = 60
ENTITY_SIZE = MAX_TILES + 3
# moves: row and column change of each action
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)


class Sorter(Task):
    name = "sorter"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 1)
        self.behaviors = (
            BehaviorDef(
                name=BEHAVIOR,
                observations=(
                    ObservationDef("BufferSensor", (MAX_TILES, ENTITY_SIZE)),
                    ObservationDef("VectorSensor_size3", (3,)),
                ),
                continuous_size=0,
                discrete_branches=(5,),
                num_agents=n,
                max_step=MAX_STEP * period,
                decision_period=period,
            ),
        )
        self.agent = np.zeros((n, 2), dtype=np.int64)
        #: per agent and tile slot (row of the buffer): cell, number (1-based, 0 = no tile), visited
        self.tiles = np.zeros((n, MAX_TILES, 2), dtype=np.int64)
        self.number = np.zeros((n, MAX_TILES), dtype=np.int64)
        self.visited = np.zeros((n, MAX_TILES), dtype=bool)
        self._visited_counts: list[float] = []
        self._sorted = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        counts = np.clip(np.rint(self.parameters.get(PARAMETER, DEFAULT_TILES, len(idx))), 1, MAX_TILES).astype(np.int64)
        for agent, count in zip(idx, counts):
            cells = self.rng.choice(GRID * GRID, size=count + 1, replace=False)
            rows, cols = np.divmod(cells, GRID)
            self.agent[agent] = (rows[0], cols[0])
            self.tiles[agent] = 0
            self.tiles[agent, :count, 0] = rows[1:]
            self.tiles[agent, :count, 1] = cols[1:]
            self.number[agent] = 0
            self.number[agent, :count] = self.rng.permutation(count) + 1  # rows in a random order
            self.visited[agent] = False

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        k = len(idx)
        number = self.number[idx]
        present = number > 0
        buffer = np.zeros((k, MAX_TILES, ENTITY_SIZE), dtype=np.float32)
        rows, slots = np.nonzero(present)
        buffer[rows, slots, number[rows, slots] - 1] = 1.0
        offsets = (self.tiles[idx] - self.agent[idx][:, None, :]) / (GRID - 1)
        buffer[:, :, MAX_TILES : MAX_TILES + 2] = np.where(present[:, :, None], offsets, 0.0)
        buffer[:, :, MAX_TILES + 2] = self.visited[idx]
        visited_fraction = self.visited[idx].sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        vector = np.concatenate([self.agent[idx] / (GRID - 1), visited_fraction[:, None]], axis=1).astype(np.float32)
        return [buffer, vector]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        _, discrete = actions[BEHAVIOR]
        n = len(self.agent)
        move = np.clip(discrete[:, 0].astype(np.int64), 0, 4)
        self.agent = np.clip(self.agent + _MOVES[move], 0, GRID - 1)
        reward = np.full(n, -1.0 / MAX_STEP, dtype=np.float32)
        on = np.all(self.tiles == self.agent[:, None, :], axis=2) & (self.number > 0) & ~self.visited  # [n, slots]
        stepped = on.any(axis=1)
        number_on = np.where(on, self.number, 0).max(axis=1)
        next_number = np.where((self.number > 0) & ~self.visited, self.number, MAX_TILES + 1).min(axis=1)
        right = stepped & (number_on == next_number)
        wrong = stepped & ~right
        self.visited |= on & right[:, None]
        reward[right] += 1.0
        reward[wrong] -= 1.0
        done = np.all(self.visited | (self.number == 0), axis=1)
        ended = wrong | done
        self._sorted += int(done.sum())
        self._visited_counts.extend(self.visited[ended].sum(axis=1).astype(float).tolist())
        return {BEHAVIOR: ActResult(reward=reward, ended=ended)}

    def before_output(self) -> None:
        for count in self._visited_counts:
            self.side_channels.add_stat("Environment/TilesVisited", count, STATS_AVERAGE)
        if self._sorted:
            self.side_channels.add_stat("Environment/Sorted", float(self._sorted), STATS_SUM)
        self._visited_counts = []
        self._sorted = 0
