"""``3dball``: balance a ball on a tilting platform (behavior ``3DBall``).

Why: the continuous-control task every ML-Agents user knows; the trainer's first target.
Like the example scene: each agent tilts its platform around z and x (2 continuous
actions, 2 degrees per physics step at most, clamped near +-29 degrees), observes 8
values (platform rotation z and x as quaternion components, ball position relative to
the platform (3), ball velocity (3)), gets +0.1 per decision while the ball stays on
and -1 with the episode's end when it falls off (|x| or |z| beyond the edge). A decision
is requested every 5 physics steps of 0.02 s; an episode is interrupted after 1000
decisions (``max_step_reached``), so the best episode reward is about 100.

Physics: a rolling ball on an incline (acceleration 5/7 g sin(tilt)) with a little
rolling friction that a heavier ball feels less. Environment parameters, read when an
agent's episode begins (like the example's ``SetResetParameters``):
``gravity`` (default 9.81), ``mass`` (1.0; heavier: less friction, harder to stop),
``scale`` (1.0; ball scale: the ball falls when its center passes 2.5 + 0.5 * scale).
Stats: ``Environment/Drops`` (SUM) when balls fall, ``Environment/Gravity``
(MOST_RECENT) when an episode begins with a new gravity, ``Environment/Mass`` and
``Environment/Scale`` (AVERAGE of the values episodes began with; the stats channel
shows what the environment parameters made of them, samplers included).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import STATS_MOST_RECENT, STATS_SUM, SideChannels
from unity_standin.tasks.base import ActResult, Task, TaskOptions, agent_count, resolve_period, vector_behavior

BEHAVIOR = "3DBall?team=0"
DEFAULT_AGENTS = 12
DECISIONS_PER_EPISODE = 1000
PHYSICS_DT = 0.02
MAX_TILT_DEG = 28.96  # quaternion component 0.25
ROTATION_PER_STEP_DEG = 2.0
FRICTION = 0.4


class Ball3D(Task):
    name = "3dball"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 5)
        self.behaviors = (
            vector_behavior(
                BEHAVIOR, 8, n, period, continuous_size=2, max_decisions=DECISIONS_PER_EPISODE, overwrite_reward=True
            ),
        )
        self.n = n
        self.rot = np.zeros((n, 2))  # degrees around z, x
        self.pos = np.zeros((n, 2))  # ball x, z relative to the platform
        self.vel = np.zeros((n, 2))
        self.gravity = np.full(n, 9.81)
        self.mass = np.ones(n)
        self.scale = np.ones(n)
        self._drops = 0
        self._last_gravity: float | None = None

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        k = len(idx)
        self.rot[idx] = self.rng.uniform(-10.0, 10.0, size=(k, 2))
        self.pos[idx] = self.rng.uniform(-1.5, 1.5, size=(k, 2))
        self.vel[idx] = 0.0
        self.gravity[idx] = self.parameters.get("gravity", 9.81, k)
        self.mass[idx] = np.maximum(self.parameters.get("mass", 1.0, k), 1e-3)
        self.scale[idx] = np.maximum(self.parameters.get("scale", 1.0, k), 1e-3)
        if k:
            self.side_channels.add_stat("Environment/Mass", float(self.mass[idx].mean()))
            self.side_channels.add_stat("Environment/Scale", float(self.scale[idx].mean()))
        gravity = float(self.gravity[idx[-1]]) if k else None
        if gravity is not None and gravity != self._last_gravity:
            self._last_gravity = gravity
            self.side_channels.add_stat("Environment/Gravity", gravity, STATS_MOST_RECENT)

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        rot = np.radians(self.rot[idx])
        pos = self.pos[idx]
        vel = self.vel[idx]
        obs = np.empty((len(idx), 8), dtype=np.float32)
        obs[:, 0] = np.sin(rot[:, 0] / 2)  # rotation.z (quaternion component)
        obs[:, 1] = np.sin(rot[:, 1] / 2)  # rotation.x
        obs[:, 2] = pos[:, 0]
        # height of the ball's center above the platform's center, on the tilted surface
        obs[:, 3] = 0.5 * self.scale[idx] - pos[:, 0] * np.sin(rot[:, 0]) + pos[:, 1] * np.sin(rot[:, 1])
        obs[:, 4] = pos[:, 1]
        obs[:, 5] = vel[:, 0]
        obs[:, 6] = -vel[:, 0] * np.sin(rot[:, 0]) + vel[:, 1] * np.sin(rot[:, 1])
        obs[:, 7] = vel[:, 1]
        return [obs]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        continuous, _ = actions[BEHAVIOR]
        turn = ROTATION_PER_STEP_DEG * np.clip(continuous.astype(np.float64), -1.0, 1.0)
        # Like the example: rotate only while the tilt stays inside the limit in that direction.
        allowed = ((self.rot < MAX_TILT_DEG) & (turn > 0)) | ((self.rot > -MAX_TILT_DEG) & (turn < 0))
        self.rot = np.where(allowed, self.rot + turn, self.rot)
        rad = np.radians(self.rot)
        g = self.gravity[:, None]
        accel = np.stack([-np.sin(rad[:, 0]), np.sin(rad[:, 1])], axis=1) * g * (5.0 / 7.0)
        accel -= (FRICTION / self.mass)[:, None] * self.vel
        self.vel = self.vel + accel * PHYSICS_DT
        self.pos = self.pos + self.vel * PHYSICS_DT
        edge = 2.5 + 0.5 * self.scale
        dropped = np.any(np.abs(self.pos) > edge[:, None], axis=1)
        reward = np.where(dropped, -1.0, 0.1).astype(np.float32)
        self._drops += int(dropped.sum())
        return {BEHAVIOR: ActResult(reward=reward, ended=dropped)}

    def before_output(self) -> None:
        if self._drops:
            self.side_channels.add_stat("Environment/Drops", float(self._drops), STATS_SUM)
            self._drops = 0
