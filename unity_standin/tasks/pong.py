"""``pong``: a two-player paddle game for self-play (behaviors ``Pong?team=0`` and ``Pong?team=1``).

Why: self-play (``self_play``) needs an adversarial game where a better policy wins more
often, with one agent per team and a win/lose final reward, small enough to learn in a
CI test. Each training area (8 by default; ``--num-agents`` sets the number of areas) is
a 2 x 2 court with a paddle at each end:

  - team 0's paddle at x = -1, team 1's at x = +1, each moving along y in [-1, 1];
  - one discrete branch of 3 (stay, up, down; ``PADDLE_SPEED`` per step);
  - 6 vector observations **in the agent's own frame** (its paddle on the left, so one
    policy plays both sides): own paddle y, opponent paddle y, ball x and y, ball
    velocity x and y (scaled by 1 / ``BALL_SPEED``);
  - the ball starts at the centre towards a random side with a random slope, bounces off
    the long walls; at a paddle's end it bounces back when the paddle is within
    ``PADDLE_HALF`` of it (+0.1 to the hitter, the slope changes with where it hit),
    otherwise the game ends: -1 to the team that missed, +1 to the other (the final
    reward whose sign self-play's ELO reads);
  - a game still running after ``MAX_STEP`` steps is interrupted for both (a draw that
    does not count for ELO, as in ML-Agents).

Variants (same court, other behavior names, as the ML-Agents configs that need them):
``soccertwos`` names the teams ``SoccerTwos?team=0/1`` with SoccerTwos' three discrete
branches of 3 (the first moves the paddle, the others do nothing) and a group id per court
and team (a group of one player, where SoccerTwos has two), for the shipped
``poca/SoccerTwos.yaml``; ``pong_asymmetric`` is an asymmetric game in the way of
StrikersVsGoalie: ``Striker?team=0`` (6 observations) against ``Goalie?team=1`` (5: it
does not see the opponent's paddle), two behaviors and two config keys. Stats: ``Environment/Rallies`` (SUM of hits).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, BehaviorDef, ObservationDef, Task, TaskOptions, agent_count, resolve_period

DEFAULT_AREAS = 8
MAX_STEP = 200
BALL_SPEED = 0.2
PADDLE_SPEED = 0.2
PADDLE_HALF = 0.3
HIT_REWARD = 0.1
_MOVES = np.array([0.0, 1.0, -1.0])


class Pong(Task):
    name = "pong"
    #: the two teams' behavior names, their observation sizes and discrete branches
    team_names: tuple[str, str] = ("Pong?team=0", "Pong?team=1")
    observation_sizes: tuple[int, int] = (6, 6)
    branches: tuple[int, ...] = (3,)

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AREAS)
        period = resolve_period(options, 1)
        self.behaviors = tuple(
            BehaviorDef(
                name=name,
                observations=(ObservationDef(f"VectorSensor_size{size}", (size,)),),
                continuous_size=0,
                discrete_branches=self.branches,
                num_agents=n,
                max_step=MAX_STEP * period,
                decision_period=period,
            )
            for name, size in zip(self.team_names, self.observation_sizes)
        )
        self.n = n
        self.paddles = np.zeros((2, n))  # y of team 0's and team 1's paddle
        self.ball = np.zeros((n, 2))
        self.velocity = np.zeros((n, 2))
        self._rallies = 0

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        team = self.team_names.index(behavior)
        self.paddles[team, idx] = 0.0
        if team == 0:  # one serve per area, with the first team's new episode
            k = len(idx)
            self.ball[idx] = 0.0
            side = np.where(self.rng.random(k) < 0.5, -1.0, 1.0)
            self.velocity[idx, 0] = side * BALL_SPEED
            self.velocity[idx, 1] = self.rng.uniform(-0.75, 0.75, k) * BALL_SPEED

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        team = self.team_names.index(behavior)
        mirror = 1.0 if team == 0 else -1.0  # the agent's own paddle is on the left
        columns = [
            self.paddles[team, idx],
            self.paddles[1 - team, idx],
            mirror * self.ball[idx, 0],
            self.ball[idx, 1],
            mirror * self.velocity[idx, 0] / BALL_SPEED,
            self.velocity[idx, 1] / BALL_SPEED,
        ]
        if self.observation_sizes[team] == 5:
            del columns[1]  # the goalie does not see the striker's paddle
        return [np.stack(columns, axis=1).astype(np.float32)]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        for team, name in enumerate(self.team_names):
            _, discrete = actions[name]
            move = _MOVES[np.clip(discrete[:, 0].astype(np.int64), 0, 2)]
            self.paddles[team] = np.clip(self.paddles[team] + PADDLE_SPEED * move, -1.0, 1.0)
        self.ball += self.velocity
        high = self.ball[:, 1] > 1.0  # the long walls reflect the ball
        low = self.ball[:, 1] < -1.0
        self.ball[high, 1] = 2.0 - self.ball[high, 1]
        self.ball[low, 1] = -2.0 - self.ball[low, 1]
        self.velocity[high | low, 1] *= -1.0
        rewards = np.zeros((2, self.n), np.float32)
        missed = np.zeros((2, self.n), bool)
        for team, end in ((0, -1.0), (1, 1.0)):
            arrived = (self.ball[:, 0] * end >= 1.0) & (self.velocity[:, 0] * end > 0)
            offset = self.ball[:, 1] - self.paddles[team]
            hit = arrived & (np.abs(offset) <= PADDLE_HALF)
            self.ball[hit, 0] = 2.0 * end - self.ball[hit, 0]
            self.velocity[hit, 0] *= -1.0
            self.velocity[hit, 1] = np.clip(
                self.velocity[hit, 1] + 0.5 * BALL_SPEED * offset[hit] / PADDLE_HALF, -BALL_SPEED, BALL_SPEED
            )
            rewards[team, hit] += HIT_REWARD
            missed[team] = arrived & ~hit
            self._rallies += int(hit.sum())
        over = missed[0] | missed[1]
        rewards[0] = np.where(missed[0], -1.0, np.where(missed[1], 1.0, rewards[0]))
        rewards[1] = np.where(missed[1], -1.0, np.where(missed[0], 1.0, rewards[1]))
        return {
            name: ActResult(reward=rewards[team], ended=over.copy()) for team, name in enumerate(self.team_names)
        }

    def before_output(self) -> None:
        if self._rallies:
            self.side_channels.add_stat("Environment/Rallies", float(self._rallies), STATS_SUM)
            self._rallies = 0


class SoccerTwosCourt(Pong):
    """``soccertwos``: the pong court under SoccerTwos' names and action branches."""

    name = "soccertwos"
    team_names = ("SoccerTwos?team=0", "SoccerTwos?team=1")
    branches = (3, 3, 3)

    def group_ids(self, behavior: str, idx: np.ndarray) -> np.ndarray | None:
        """Each court's team is a group of its own (``2 * court + team + 1``), as SoccerTwos'
        teams are multi-agent groups (POCA's group critic); one player per team here."""
        return 2 * np.asarray(idx) + self.team_names.index(behavior) + 1


class PongAsymmetric(Pong):
    """``pong_asymmetric``: a striker and a goalie, two behaviors (StrikersVsGoalie's shape)."""

    name = "pong_asymmetric"
    team_names = ("Striker?team=0", "Goalie?team=1")
    observation_sizes = (6, 5)
