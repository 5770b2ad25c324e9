"""PPO with memory solves the stand-in's ``hallway`` task; the same PPO without memory cannot.

The task (``unity_standin/tasks/hallway.py``) shows a cue only at the first of an
episode's four decisions, and the goal picked at the last one pays +1 if it matches the
cue, -1 if not: a feed-forward policy sees the same last observation whatever the cue, so
its mean reward stays about 0. The loop is the gateway's actor loop in small, with its
real parts: the stand-in through mlagents-envs, ``StepBatch`` conversion, the per-agent
``AgentMemories`` (forgotten at terminal steps), ``TrajectoryBuilder`` recording the
memories each step acted from, and a ``NumpyPolicy`` built from every new snapshot.
Settings are ``configs/ppo/Hallway.yaml`` and ``Hallway_no_memory.yaml``, with the same
budget of agent steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlagents_envs.base_env import ActionTuple
from mlagents_envs.exception import UnityEnvironmentException, UnityWorkerInUseException

import unity_standin
from benchmarks.ports import free_base_port
from common.architecture import make_snapshot
from common.specs import from_mlagents
from gateway.actor.memories import AgentMemories
from gateway.actor.numpy_policy import NumpyPolicy
from gateway.actor.trajectories import TrajectoryBuilder
from gateway.env.steps import from_decision_steps, from_terminal_steps
from gateway.env.unity_environment import open_unity_environment
from trainer_server.config.loading import load_run_options
from trainer_server.learning.ppo import PPOLearner

HALLWAY = "Hallway?team=0"
CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "ppo"
#: agent steps each run may use (the memory run was at a mean of 0.9 by about 2k, 1.0 by 4k)
BUDGET = 8_000
SOLVED = 0.9


def train_hallway(config: str, budget: int, seed: int = 0) -> tuple[list[float], PPOLearner]:
    """Trains PPO with ``configs/ppo/<config>`` on the stand-in's hallway for ``budget`` agent steps.

    Returns:
        (every finished episode's return in order, the learner).
    """
    settings = load_run_options(CONFIGS / config).behaviors["Hallway"]
    for attempt in range(3):
        try:
            env = open_unity_environment(
                unity_standin.executable_path(), worker_id=0, base_port=free_base_port(), timeout_wait=30,
                additional_args=["--task", "hallway", "--seed", str(seed)],
            )
            break
        except UnityWorkerInUseException:
            if attempt == 2:
                raise
    try:
        env.reset()
        spec = from_mlagents(HALLWAY, env.behavior_specs[HALLWAY])
        learner = PPOLearner(spec, settings, seed=seed)
        arch = learner.architecture()
        policy = NumpyPolicy.from_snapshot(make_snapshot(HALLWAY, 0, arch, learner.policy_parameters()))
        builder = TrajectoryBuilder(spec, 0, settings.time_horizon, memory_size=arch.memory_size)
        memories = AgentMemories(arch.memory_size) if arch.memory_size else None
        rng = np.random.default_rng(seed)
        returns: list[float] = []
        while learner.step < budget:
            decision_steps, terminal_steps = env.get_steps(HALLWAY)
            dec, term = from_decision_steps(decision_steps, spec), from_terminal_steps(terminal_steps)
            for trajectory in builder.observe(dec, term):
                if trajectory.done:
                    returns.append(trajectory.episode_return)
                learner.process_trajectory(trajectory)
                if learner.ready():
                    learner.update()
                    learner.discard_buffered()
                    policy = NumpyPolicy.from_snapshot(
                        make_snapshot(HALLWAY, learner.update_count, arch, learner.policy_parameters())
                    )
            before = None
            if memories is not None:
                memories.forget(term.agent_ids)
                before = memories.take(dec.agent_ids)
            out = policy.act(dec.observations, dec.action_mask, rng, memories=before)
            if memories is not None:
                memories.keep(dec.agent_ids, out.memories)
            builder.record(dec, out.continuous, out.discrete, out.log_probs, learner.update_count, before)
            env.set_actions(HALLWAY, ActionTuple(discrete=out.discrete))
            env.step()
    finally:
        try:
            env.close()
        except UnityEnvironmentException:
            pass
    return returns, learner


@pytest.mark.slow
def test_ppo_with_memory_solves_the_hallway_and_without_memory_does_not():
    with_memory, learner = train_hallway("Hallway.yaml", BUDGET)
    assert learner.trace_counts["update"] == 1 and learner.trace_counts["process"] == 1
    without, _ = train_hallway("Hallway_no_memory.yaml", BUDGET)
    last = 200  # episodes: 800 agent steps
    assert np.mean(with_memory[-last:]) >= SOLVED, (np.mean(with_memory[:last]), np.mean(with_memory[-last:]))
    assert abs(np.mean(without[-last:])) < 0.3, np.mean(without[-last:])
