"""A stand-in task stepped in process by a learner, without gateway or gRPC.

Why: the reward-signal benchmark and learning tests compare learners on the same task and
step budget; stepping the task's vectorized logic directly with ``learner.act`` measures the
learning alone (no processes, ports or snapshot pushes) and fits CI. Only single-behavior
tasks with vector observations are supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from unity_standin.side_channels import SideChannels
from unity_standin.tasks import TaskOptions, make_task


@dataclass
class _Pending:
    observations: list[np.ndarray] = field(default_factory=list)
    continuous: list[np.ndarray] = field(default_factory=list)
    discrete: list[np.ndarray] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    episode_return: float = 0.0
    episode_length: int = 0


def task_spec(task_name: str) -> BehaviorSpec:
    """The behavior spec of a single-behavior stand-in task (what the trainer would see)."""
    behavior = make_task(task_name, TaskOptions(), SideChannels()).behaviors[0]
    return BehaviorSpec(
        name=behavior.name,
        observations=tuple(ObservationSpec(name=o.name, shape=tuple(o.shape)) for o in behavior.observations),
        action_spec=ActionSpec(continuous_size=behavior.continuous_size, discrete_branches=tuple(behavior.discrete_branches)),
    )


class DirectRunner:
    """Steps ``task_name``'s agents with ``learner`` and trains it as the trainer would.

    Args:
        task_name: a stand-in task (one behavior, vector observations only).
        learner: a PPO or SAC learner for the task's behavior.
        time_horizon: fragment length (``time_horizon`` of the trainer settings).
        seed: the task's seed.
        num_agents: agents of the task (None: its default).
    """

    def __init__(self, task_name: str, learner: Any, time_horizon: int, seed: int = 0, num_agents: int | None = None):
        self.task = make_task(task_name, TaskOptions(seed=seed, num_agents=num_agents), SideChannels())
        self.behavior = self.task.behaviors[0]
        self.learner = learner
        self.time_horizon = time_horizon
        self.n = self.behavior.num_agents
        self.returns: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self.steps = 0
        self._rng = np.random.default_rng(seed)
        self._pending = [_Pending() for _ in range(self.n)]
        self.task.begin_episodes(self.behavior.name, np.arange(self.n))

    def _flush(self, agent: int, next_obs: np.ndarray, done: bool) -> None:
        p = self._pending[agent]
        if not p.rewards:
            return
        t = len(p.rewards)
        trajectory = Trajectory(
            instance=0,
            agent_id=agent,
            observations=[np.stack(p.observations)],
            next_observations=[next_obs],
            continuous_actions=np.stack(p.continuous).reshape(t, -1),
            discrete_actions=np.stack(p.discrete).reshape(t, -1).astype(np.int32),
            log_probs=np.asarray(p.log_probs, np.float32),
            rewards=np.asarray(p.rewards, np.float32),
            action_masks=np.stack(p.masks).reshape(t, -1),
            policy_versions=np.zeros(t, np.int64),
            done=done,
            episode_return=p.episode_return,
            episode_length=p.episode_length,
        )
        self._pending[agent] = _Pending(
            episode_return=0.0 if done else p.episode_return, episode_length=0 if done else p.episode_length
        )
        self.learner.process_trajectory(trajectory)
        if done:
            self.returns.append(p.episode_return)

    def _act(self, obs: np.ndarray, masks: np.ndarray | None):
        """The learner's current policy: its own ``act`` (PPO) or the gateway's numpy actor
        on its policy parameters (SAC has no JAX ``act``)."""
        if hasattr(self.learner, "act"):
            return self.learner.act([obs], masks)
        from gateway.actor.numpy_policy import NumpyPolicy

        policy = NumpyPolicy(self.learner.architecture(), self.learner.policy_parameters())
        return policy.act([obs], masks, self._rng)

    def run(self, steps: int) -> None:
        """Steps every agent until ``steps`` more agent steps are consumed, updating when ready."""
        name, idx = self.behavior.name, np.arange(self.n)
        target = self.steps + steps
        while self.steps < target:
            obs = self.task.observe(name, idx)[0].astype(np.float32)
            masks = self.task.action_masks(name, idx)
            masks = np.zeros((self.n, self.behavior.mask_size), bool) if masks is None else masks
            out = self._act(obs, masks if self.behavior.mask_size else None)
            result = self.task.act({name: (out.env_continuous, out.discrete)})[name]
            after = self.task.observe(name, idx)[0].astype(np.float32)
            for a in range(self.n):
                p = self._pending[a]
                p.observations.append(obs[a])
                p.continuous.append(out.continuous[a])
                p.discrete.append(out.discrete[a])
                p.log_probs.append(float(out.log_probs[a]))
                p.rewards.append(float(result.reward[a]))
                p.masks.append(masks[a])
                p.episode_return += float(result.reward[a])
                p.episode_length += 1
                if result.ended[a] or len(p.rewards) >= self.time_horizon:
                    self._flush(a, after[a], bool(result.ended[a]))
            ended = np.flatnonzero(result.ended)
            if len(ended):
                self.task.begin_episodes(name, ended)
            self.steps += self.n
            while self.learner.ready():
                self.last_metrics = self.learner.update() or self.last_metrics
                if self.learner.on_policy:
                    self.learner.discard_buffered()
                if not self.learner.on_policy:
                    break

    def mean_return(self, last: int = 100) -> float:
        """Mean return of the last ``last`` finished episodes (nan before any)."""
        return float(np.mean(self.returns[-last:])) if self.returns else float("nan")
