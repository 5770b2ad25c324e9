"""Small helpers shared by the stand-in tests (policies, episode bookkeeping)."""

from __future__ import annotations


import numpy as np
from mlagents_envs.base_env import ActionTuple
from benchmarks.ports import free_base_port as free_port  # noqa: F401 (re-exported for the stand-in tests)


def balancing_actions(obs: np.ndarray) -> ActionTuple:
    """A hand-written PD controller for 3dball: tilts the platform against the ball.

    Args:
        obs: float32 [n, 8] 3dball vector observations.
    """
    tilt_z = np.degrees(2 * np.arcsin(obs[:, 0]))
    tilt_x = np.degrees(2 * np.arcsin(obs[:, 1]))
    target_z = 8 * (obs[:, 2] + 0.5 * obs[:, 5])
    target_x = -8 * (obs[:, 4] + 0.5 * obs[:, 7])
    actions = np.stack([np.clip((target_z - tilt_z) / 10, -1, 1), np.clip((target_x - tilt_x) / 10, -1, 1)], axis=1)
    return ActionTuple(continuous=actions.astype(np.float32))


class EpisodeTracker:
    """Sums rewards per agent id and records finished episodes (reward, interrupted)."""

    def __init__(self) -> None:
        self.running: dict[int, float] = {}
        self.finished: list[tuple[int, float, bool]] = []

    def update(self, decision_steps, terminal_steps) -> None:
        # Terminal first: an agent that ended and restarted appears in both.
        for agent_id, reward, interrupted in zip(
            terminal_steps.agent_id, terminal_steps.reward, terminal_steps.interrupted
        ):
            total = self.running.pop(int(agent_id), 0.0) + float(reward)
            self.finished.append((int(agent_id), total, bool(interrupted)))
        for agent_id, reward in zip(decision_steps.agent_id, decision_steps.reward):
            self.running[int(agent_id)] = self.running.get(int(agent_id), 0.0) + float(reward)
