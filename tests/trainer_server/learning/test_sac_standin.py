"""SAC learns the stand-in's 3DBall-like task through the real mlagents-envs client.

The learner is fed the way the trainer server feeds it: a ``NumpyPolicy`` built from
``policy_parameters()`` acts, every agent's decisions become ``Trajectory`` fragments
(cut at episode ends and at ``time_horizon``), ``update()`` runs whenever ``ready()``.
Hyperparameters are ML-Agents' 3DBall SAC example's (``configs/sac/3DBall.yaml``) except
a shorter ``time_horizon`` so that fresh experience arrives sooner in this short run.
"""

from __future__ import annotations


import numpy as np
import pytest
from mlagents_envs.base_env import ActionTuple
from mlagents_envs.exception import UnityEnvironmentException, UnityWorkerInUseException

import unity_standin
from gateway.actor.numpy_policy import NumpyPolicy
from common.specs import from_mlagents
from common.trajectory import Trajectory
from gateway.env.unity_environment import open_unity_environment
from learning_helpers import trainer_settings
from trainer_server.learning.sac import SACLearner
from benchmarks.ports import free_base_port

BALL = "3DBall?team=0"
#: mean episode reward of uniformly random actions on the stand-in's 3dball (about 1.3)
RANDOM_REWARD = 1.3  # this run: about 1.1 over its first 24 episodes, about 37 over its last 24
MAX_STEPS = 40_000


@pytest.fixture
def env():
    for attempt in range(3):
        try:
            opened = open_unity_environment(
                unity_standin.executable_path(),
                worker_id=0,
                base_port=free_base_port(),
                timeout_wait=30,
                additional_args=["--task", "3dball", "--seed", "1"],
            )
            break
        except UnityWorkerInUseException:
            if attempt == 2:
                raise
    yield opened
    try:
        opened.close()
    except UnityEnvironmentException:
        pass


class _Fragments:
    """Per-agent (obs, raw action, reward) rows, cut into Trajectory fragments."""

    def __init__(self, time_horizon: int) -> None:
        self.time_horizon = time_horizon
        self.rows: dict[int, list] = {}
        self.pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.returns: dict[int, float] = {}
        self.finished: list[float] = []

    def _fragment(self, agent: int, next_obs: np.ndarray, done: bool, interrupted: bool) -> Trajectory:
        rows = self.rows.pop(agent)
        t = len(rows)
        return Trajectory(
            instance=0,
            agent_id=agent,
            observations=[np.stack([r[0] for r in rows])],
            next_observations=[next_obs],
            continuous_actions=np.stack([r[1] for r in rows]),
            discrete_actions=np.zeros((t, 0), np.int32),
            log_probs=np.zeros(t, np.float32),
            rewards=np.asarray([r[2] for r in rows], np.float32),
            action_masks=np.zeros((t, 0), bool),
            policy_versions=np.zeros(t, np.int64),
            done=done,
            interrupted=interrupted,
        )

    def observe(self, decision, terminal) -> list[Trajectory]:
        out = []
        for i, agent in enumerate(terminal.agent_id):
            agent = int(agent)
            if agent in self.pending:
                obs, action = self.pending.pop(agent)
                self.rows.setdefault(agent, []).append((obs, action, float(terminal.reward[i])))
                out.append(self._fragment(agent, terminal.obs[0][i], True, bool(terminal.interrupted[i])))
            self.finished.append(self.returns.pop(agent, 0.0) + float(terminal.reward[i]))
        for i, agent in enumerate(decision.agent_id):
            agent = int(agent)
            self.returns[agent] = self.returns.get(agent, 0.0) + float(decision.reward[i])
            if agent in self.pending:
                obs, action = self.pending.pop(agent)
                self.rows.setdefault(agent, []).append((obs, action, float(decision.reward[i])))
                if len(self.rows[agent]) >= self.time_horizon:
                    out.append(self._fragment(agent, decision.obs[0][i], False, False))
        return out


@pytest.mark.slow
def test_sac_learns_standin_3dball_through_mlagents_envs(env):
    env.reset()
    spec = from_mlagents(BALL, env.behavior_specs[BALL])
    settings = trainer_settings(
        "sac", batch_size=64, buffer_size=200000, learning_rate=3e-4, buffer_init_steps=0, tau=0.005,
        steps_per_update=10.0, init_entcoef=0.5, normalize=True, hidden_units=64, num_layers=2,
        gamma=0.99, max_steps=200000, time_horizon=100,
    )
    learner = SACLearner(spec, settings, seed=0)
    fragments = _Fragments(settings.time_horizon)
    rng = np.random.default_rng(0)
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    while learner.step < MAX_STEPS:
        decision, terminal = env.get_steps(BALL)
        for trajectory in fragments.observe(decision, terminal):
            learner.process_trajectory(trajectory)
            if learner.ready():
                learner.update()
                policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
        if len(decision):
            out = policy.act([decision.obs[0]], None, rng)
            for i, agent in enumerate(decision.agent_id):
                fragments.pending[int(agent)] = (decision.obs[0][i], out.continuous[i])
            env.set_actions(BALL, ActionTuple(continuous=out.env_continuous))
        env.step()
    assert learner.trace_counts["update"] == 1
    last = fragments.finished[-24:]
    assert np.mean(last) > 8 * RANDOM_REWARD, (np.mean(fragments.finished[:24]), np.mean(last))
