"""The interface every algorithm (PPO, SAC) offers to the trainer server.

Why: the server's orchestration (streams, results, checkpoints, TensorBoard) is the
same for every algorithm; only how trajectories become updates differs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from common.trajectory import Trajectory


class Learner(Protocol):
    """One behavior's policy, optimizer state and experience buffer."""

    #: total agent steps consumed (ML-Agents' "step"), drives schedules and max_steps
    step: int

    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Adds one validated trajectory fragment to the learner's buffer."""

    def ready(self) -> bool:
        """True when an update can run (PPO: buffer_size steps collected)."""

    def update(self) -> dict[str, float]:
        """Runs one update; returns ML-Agents-named metrics (e.g. "Losses/Policy Loss")."""

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat, float32 actor parameters (and normalizer) for ``gateway.numpy_policy.NumpyPolicy``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: params, optimizer state, normalizer, step, PRNG key."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""
