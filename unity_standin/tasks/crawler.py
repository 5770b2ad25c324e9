"""``crawler``: a stand-in with the spec of ML-Agents' Crawler (behavior ``Crawler``).

Why: ML-Agents' Crawler configs (``ppo/``, ``sac/``, ``imitation/Crawler.yaml``: GAIL and
behavioral cloning) must train through the real processes on a task of their spec: one
vector observation of 172 floats and 20 continuous actions. The physics is not Unity's;
the task is a small continuous-control problem of that shape, learnable but not trivial:

  - 20 joints, each a wheel-like angle ``q`` in [-1, 1) (times pi, wrapping around) driven
    by its action (a velocity command, ``JOINT_SPEED`` per step); the body's velocity is a
    fixed linear map of the joint velocities (``_gait``, the same for every run and agent),
    so a policy that maps the target direction to the right joint speeds walks straight;
  - a target direction on the ground plane (unit vector, new each episode);
  - reward per step in [0, 1]: how well the body's velocity matches the target direction
    at ``TARGET_SPEED`` (ML-Agents' Crawler multiplies a speed match by a facing term;
    here ``speed match * max(0, cos(angle to target))``);
  - observations (172): ``q`` (20), joint velocities (20), sin and cos of ``q * pi`` (40),
    the previous actions (20), the body velocity and the target direction (3 + 3, the
    third coordinate zero), their product (3), the step within the episode (1), and
    zeros up to 172 (the many body-part sensors of the real scene);
  - episodes end after ``MAX_STEP`` decisions (interrupted, as Crawler's max step).
"""

from __future__ import annotations

import numpy as np

from unity_standin.side_channels import SideChannels
from unity_standin.tasks.base import ActResult, Task, TaskOptions, agent_count, resolve_period, vector_behavior

BEHAVIOR = "Crawler?team=0"
DEFAULT_AGENTS = 10
OBSERVATION_SIZE = 172
JOINTS = 20
JOINT_SPEED = 0.2
TARGET_SPEED = 1.0
MAX_STEP = 1000


class Crawler(Task):
    name = "crawler"

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        super().__init__(options, side_channels)
        n = agent_count(options, DEFAULT_AGENTS)
        period = resolve_period(options, 1)
        self.behaviors = (
            vector_behavior(BEHAVIOR, OBSERVATION_SIZE, n, period, continuous_size=JOINTS, max_decisions=MAX_STEP),
        )
        #: [JOINTS, 2]: how each joint's velocity moves the body on the ground plane
        self._gait = np.random.default_rng(1234).normal(0.0, 1.0 / np.sqrt(JOINTS), (JOINTS, 2)) / JOINT_SPEED
        self.q = np.zeros((n, JOINTS))
        self.dq = np.zeros((n, JOINTS))
        self.last_action = np.zeros((n, JOINTS))
        self.velocity = np.zeros((n, 2))
        self.target = np.zeros((n, 2))
        self.t = np.zeros(n, np.int64)

    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        angle = self.rng.uniform(0.0, 2.0 * np.pi, len(idx))
        self.target[idx] = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        self.q[idx] = self.rng.uniform(-0.5, 0.5, (len(idx), JOINTS))
        self.dq[idx] = 0.0
        self.last_action[idx] = 0.0
        self.velocity[idx] = 0.0
        self.t[idx] = 0

    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        obs = np.zeros((len(idx), OBSERVATION_SIZE), np.float32)
        q = self.q[idx]
        velocity = np.pad(self.velocity[idx], ((0, 0), (0, 1)))
        target = np.pad(self.target[idx], ((0, 0), (0, 1)))
        parts = [
            q, self.dq[idx] / JOINT_SPEED, np.sin(np.pi * q), np.cos(np.pi * q), self.last_action[idx],
            velocity, target, velocity * target, (self.t[idx] / MAX_STEP)[:, None],
        ]
        used = np.concatenate(parts, axis=1)
        obs[:, : used.shape[1]] = used
        return [obs]

    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        continuous, _ = actions[BEHAVIOR]
        command = np.clip(np.asarray(continuous, np.float64), -1.0, 1.0)
        self.dq = JOINT_SPEED * command
        self.q = (self.q + self.dq + 1.0) % 2.0 - 1.0
        self.last_action = command
        self.velocity = self.dq @ self._gait
        speed = np.linalg.norm(self.velocity, axis=1)
        facing = np.einsum("ij,ij->i", self.velocity, self.target) / np.maximum(speed, 1e-8)
        match = np.clip(1.0 - np.abs(speed - TARGET_SPEED) / TARGET_SPEED, 0.0, 1.0)
        reward = (match * np.maximum(facing, 0.0)).astype(np.float32)
        self.t = self.t + 1
        return {BEHAVIOR: ActResult(reward=reward, ended=np.zeros(len(reward), bool))}
