"""PPO pads a fragment to a few fixed lengths: short fragments cost little, results do not change."""

from __future__ import annotations

import numpy as np
import pytest

from learning_helpers import trainer_settings
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.learning import ppo
from trainer_server.learning.ppo import PPOLearner, padded_length

SPEC = BehaviorSpec("Pad?team=0", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))


@pytest.mark.parametrize(
    "steps, horizon, rows",
    [(1, 1000, 16), (16, 1000, 16), (17, 1000, 32), (25, 1000, 32), (511, 1000, 512), (513, 1000, 1000),
     (1000, 1000, 1000), (1001, 1000, 2000), (3, 10, 10), (10, 10, 10), (5, 5, 5), (11, 10, 20), (40, 64, 64)],
)
def test_padded_lengths(steps, horizon, rows):
    assert padded_length(steps, horizon) == rows


def _fragment(rng, t):
    return Trajectory(
        instance=0, agent_id=0,
        observations=[rng.normal(size=(t, 3)).astype(np.float32)],
        next_observations=[rng.normal(size=3).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, 1)).astype(np.float32),
        discrete_actions=rng.integers(0, 2, (t, 1)).astype(np.int32),
        log_probs=rng.normal(-2, 0.3, t).astype(np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        action_masks=np.zeros((t, 2), bool),
        policy_versions=np.zeros(t, np.int64),
        done=False, interrupted=False,
    )


def test_short_padding_gives_the_full_horizon_results_with_few_compilations(monkeypatch):
    settings = trainer_settings("ppo", batch_size=16, buffer_size=64, time_horizon=64, hidden_units=8, num_layers=1, normalize=True)
    lengths = [1, 5, 16, 17, 30, 33, 64, 2, 40]
    short, full = PPOLearner(SPEC, settings, seed=2), PPOLearner(SPEC, settings, seed=2)
    rng_short, rng_full = np.random.default_rng(5), np.random.default_rng(5)
    for t in lengths:
        short.process_trajectory(_fragment(rng_short, t))
    monkeypatch.setattr(ppo, "padded_length", lambda steps, horizon: horizon)  # the former single length
    for t in lengths:
        full.process_trajectory(_fragment(rng_full, t))
    a, b = short.rollout_buffer.state_dict(), full.rollout_buffer.state_dict()
    for name in ("values", "advantages", "returns", "log_probs"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert short.trace_counts["process"] == 3  # 16, 32 and 64 rows
    assert full.trace_counts["process"] == 1
