"""``multibehavior``: a chaser and a runner per area, two behaviors of different specs.

Why: a scene where behaviors differ in observations and action spaces, end episodes
at different times (catches, two different max steps) and request decisions at
different rates, so consumers of ``UnityEnvironment`` see agents missing from steps,
terminal infos arriving between an agent's decisions, and interrupted episodes.

Each training area (4 by default; ``--num-agents`` sets the number of areas) is a
10 x 10 arena holding one agent of each behavior:
  - ``Chaser``: 2 continuous actions (velocity, 0.5 per step at most), 6 vector
    observations (own position / 5, runner offset / 5, own velocity); decides every
    academy step; -0.005 per step, +1 and the episode's end on a catch; interrupted
    after 150 steps.
  - ``Runner``: one discrete branch of 5 (stay, up, down, left, right; moves into the
    arena wall are masked), 4 vector observations (own position / 5, chaser offset / 5);
    decides every 3 academy steps (``--decision-period``), runners staggered so only a
    third of them decide in a given step, repeating their move in between; +0.005 per
    step, -1 and the episode's end when caught; interrupted after 400 steps. Runners
    belong to one multi-agent group per area (group id = area + 1) and receive a group
    reward of -1 when caught.
A catch (distance below ``catch_radius``, default 1.0) ends both episodes of the area;
an interruption ends only that agent's. Environment parameters: ``runner_speed``
(default 0.4 per step) and ``catch_radius``. Stats: ``Environment/Catches`` (SUM).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, agent_count, resolve_period

CHASER = "Chaser?team=0"
RUNNER = "Runner?team=0"
DEFAULT_AREAS = 4
HALF_SIZE = 5.0
CHASER_SPEED = 0.5
_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.float64)


class MultiBehavior(Task):
    name = "multibehavior"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AREAS)
        period = resolve_period(options, 3)
        self.behaviors = (
            BehaviorDef(
                name=CHASER,
                observations=(ObservationDef("VectorSensor_size6", (6,)),),
                continuous_size=2,
                discrete_branches=(),
                num_agents=n,
                max_step=150,
            ),
            BehaviorDef(
                name=RUNNER,
                observations=(ObservationDef("VectorSensor_size4", (4,)),),
                continuous_size=0,
                discrete_branches=(5,),
                num_agents=n,
                max_step=400,
                decision_period=period,
                decision_offsets=tuple(i % period for i in range(n)),
            ),
        )
        self.n = n
        self.chaser = np.zeros((n, 2))
        self.chaser_vel = np.zeros((n, 2))
        self.runner = np.zeros((n, 2))
        self.runner_speed = np.full(n, 0.4)
        self.catch_radius = np.ones(n)
        self._catches = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        k = len(idx)
        if behavior == CHASER:
            self.chaser[idx] = self.rng.uniform(-HALF_SIZE, HALF_SIZE, size=(k, 2))
            self.chaser_vel[idx] = 0.0
            self.catch_radius[idx] = np.maximum(self.parameters.get("catch_radius", 1.0, k), 0.0)
        else:
            self.runner[idx] = self.rng.uniform(-HALF_SIZE, HALF_SIZE, size=(k, 2))
            self.runner_speed[idx] = np.maximum(self.parameters.get("runner_speed", 0.4, k), 0.0)

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        if behavior == CHASER:
            obs = np.concatenate(
                [self.chaser[idx] / HALF_SIZE, (self.runner[idx] - self.chaser[idx]) / HALF_SIZE, self.chaser_vel[idx]],
                axis=1,
            )
        else:
            obs = np.concatenate(
                [self.runner[idx] / HALF_SIZE, (self.chaser[idx] - self.runner[idx]) / HALF_SIZE], axis=1
            )
        return [obs.astype(np.float32)]

    def action_masks(self, behavior: str, idx: np.ndarray) -> np.ndarray | None:
        if behavior != RUNNER:
            return None
        target = self.runner[idx][:, None, :] + _MOVES[None] * self.runner_speed[idx][:, None, None]
        return ~np.all(np.abs(target) <= HALF_SIZE, axis=2)

    def group_ids(self, behavior: str, idx: np.ndarray) -> np.ndarray | None:
        if behavior != RUNNER:
            return None
        return idx + 1

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        chase, _ = actions[CHASER]
        _, run = actions[RUNNER]
        self.chaser_vel = CHASER_SPEED * np.clip(chase.astype(np.float64), -1.0, 1.0)
        self.chaser = np.clip(self.chaser + self.chaser_vel, -HALF_SIZE, HALF_SIZE)
        move = _MOVES[np.clip(run[:, 0].astype(np.int64), 0, 4)] * self.runner_speed[:, None]
        target = self.runner + move
        inside = np.all(np.abs(target) <= HALF_SIZE, axis=1)  # masked moves are ignored
        self.runner = np.where(inside[:, None], target, self.runner)
        caught = np.linalg.norm(self.chaser - self.runner, axis=1) < self.catch_radius
        self._catches += int(caught.sum())
        chaser_reward = np.where(caught, 1.0, -0.005).astype(np.float32)
        runner_reward = np.where(caught, -1.0, 0.005).astype(np.float32)
        group_reward = np.where(caught, -1.0, 0.0).astype(np.float32)
        return {
            CHASER: ActResult(reward=chaser_reward, ended=caught),
            RUNNER: ActResult(reward=runner_reward, ended=caught.copy(), group_reward=group_reward),
        }

    def before_output(self) -> None:
        if self._catches:
            self.side_channels.add_stat("Environment/Catches", float(self._catches), STATS_SUM)
            self._catches = 0
