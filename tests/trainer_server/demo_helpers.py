"""Expert demonstrations for the trainer's tests: a known expert's episodes as a ``.demo`` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.demonstration_file import DemonstrationWriter, Record
from common.specs import BehaviorSpec

OBS = 4


def expert(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic expert: continuous ``tanh`` of a linear map, discrete argmax picks."""
    continuous = np.tanh(obs[:, :2] - 0.5 * obs[:, 2:]).astype(np.float32)
    discrete = np.stack([np.argmax(obs[:, :3], axis=1), (obs[:, 3] > 0).astype(np.int64)], axis=1).astype(np.int32)
    return continuous, discrete


def write_expert_demo(path: Path, spec: BehaviorSpec, episodes: int = 8, length: int = 25, seed: int = 0) -> Path:
    """Episodes of the expert in Unity's record layout (each record stores the previous action)."""
    rng = np.random.default_rng(seed)
    a = spec.action_spec
    with DemonstrationWriter(path, spec) as writer:
        for _ in range(episodes):
            obs = rng.normal(size=(length + 1, OBS)).astype(np.float32)
            continuous, discrete = expert(obs)
            continuous, discrete = continuous[:, : a.continuous_size], discrete[:, : a.num_branches]
            records = []
            for t in range(length + 1):
                records.append(
                    Record(
                        observations=(obs[t],),
                        reward=0.0 if t == 0 else 1.0,
                        done=t == length,
                        max_step_reached=False,
                        continuous_actions=continuous[t - 1] if t else np.zeros(a.continuous_size, np.float32),
                        discrete_actions=discrete[t - 1] if t else np.zeros(a.num_branches, np.int32),
                    )
                )
            writer.write_episode(records)
    return path
