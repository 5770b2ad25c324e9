"""The interface every algorithm (PPO, SAC) offers to the trainer server.

Why: the server's orchestration (streams, results, checkpoints, TensorBoard) is the
same for every algorithm; only how trajectories become updates differs. The server
creates learners with ``trainer_server.learning.registry.make_learner`` and uses nothing
else of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.architecture import PolicyArchitecture
from common.trajectory import Trajectory


class Learner(Protocol):
    """One behavior's policy, optimizer state and experience buffer.

    Constructors take ``(spec: BehaviorSpec, settings: TrainerSettings, seed: int)``: the
    typed settings validated at load, read directly (no second configuration type).
    """

    #: total agent steps consumed (ML-Agents' "step"), drives schedules and max_steps
    step: int
    #: True: trains only on experience of its current policy (PPO). The trainer then grants
    #: collection per policy version and drops older experience (``trainer_server.collection``);
    #: False: off-policy (SAC), collection follows a window instead.
    on_policy: bool

    @property
    def buffered_steps(self) -> int:
        """On-policy: steps taken in and waiting for the next update; off-policy: 0."""

    def discard_buffered(self) -> int:
        """On-policy: drops the steps waiting for the next update (after an update they were
        collected by an older policy); returns how many. Off-policy: 0, nothing dropped."""

    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Adds one validated trajectory fragment to the learner's buffer.

        Raises:
            ValueError: when the fragment does not fit the behavior's spec.
        """

    def ready(self) -> bool:
        """True when an update can run now (PPO: buffer_size steps collected; SAC: gradient
        steps are due and a minibatch can be sampled)."""

    def update(self) -> dict[str, float]:
        """Runs one update; returns ML-Agents-named metrics (e.g. "Losses/Policy Loss")."""

    def architecture(self) -> PolicyArchitecture:
        """What the snapshot's parameters mean (``common.architecture``)."""

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat, float32 actor parameters (and normalizer) for ``gateway.actor.numpy_policy.NumpyPolicy``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: params, optimizer state, normalizer, step, PRNG state."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned (``--resume``).

        Raises:
            ValueError: naming the entry that does not fit this behavior's networks.
        """

    def load_weights(self, state: dict[str, Any]) -> None:
        """``init_path`` / ``--initialize-from``: the network weights (and optimizer state,
        normalizer) of a checkpoint's ``state_dict``, NOT its step or buffered experience:
        the new run counts from step 0."""

    def save_extra(self, folder: Path) -> None:
        """Writes the files kept beside the checkpoint in ``folder`` (SAC: the replay buffer
        when ``save_replay_buffer`` is true); a no-op for others."""

    def load_extra(self, folder: Path) -> None:
        """``--resume`` counterpart of ``save_extra``; logs a warning and starts empty when an
        expected file is missing."""


class BatchLearner(Learner, Protocol):
    """A learner that also takes several fragments at once (PPO): ``BehaviorRun`` then feeds
    it each chunk's fresh trajectories in batches instead of one call per fragment."""

    def process_trajectories(self, trajectories: list[Trajectory]) -> None:
        """``process_trajectory`` on each in order, with the same resulting state.

        Raises:
            ValueError: when a fragment does not fit the behavior's spec; then nothing of the
                batch was taken (the caller learns them one by one to skip the bad one).
        """

    def steps_until_ready(self) -> int:
        """Agent steps still to take before ``ready()`` is true (0 when it is)."""
