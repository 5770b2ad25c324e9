"""TEMPORARY (reshape-app branch only): to be replaced by the learning helper's file.

The Learner protocol of issue 12's shared brief, so the app's code and tests run in this
worktree before the merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.architecture import PolicyArchitecture
from common.trajectory import Trajectory


class Learner(Protocol):
    """One behavior's policy, optimizer state and experience buffer."""

    step: int

    def process_trajectory(self, trajectory: Trajectory) -> None: ...

    def ready(self) -> bool: ...

    def update(self) -> dict[str, float]: ...

    def architecture(self) -> PolicyArchitecture: ...

    def policy_parameters(self) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def load_weights(self, state: dict[str, Any]) -> None: ...

    def save_extra(self, folder: Path) -> None: ...

    def load_extra(self, folder: Path) -> None: ...
