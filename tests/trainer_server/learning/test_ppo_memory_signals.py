"""PPO with memory together with learned reward signals (curiosity, RND, GAIL) and
behavioral cloning: the signals see observations (never memories) and get a value head on
the critic's LSTM; BC runs the policy over whole demonstration sequences from zero memories."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from tests.trainer_server.demo_helpers import OBS, write_expert_demo
from gateway.actor.numpy_policy import NumpyPolicy
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning import behavioral_cloning, networks
from trainer_server.learning.ppo import PPOLearner

SPEC = BehaviorSpec("MemSignals?team=0", (ObservationSpec("v", (OBS,)),), ActionSpec(2, (3, 2)))
M, L = 8, 4


def _settings(demo: Path, learning_rate: float = 3e-4):
    return trainer_settings_from_dict({
        "trainer_type": "ppo",
        "hyperparameters": {"batch_size": 8, "buffer_size": 16, "learning_rate": learning_rate},
        "network_settings": {"hidden_units": 16, "num_layers": 1, "memory": {"memory_size": M, "sequence_length": L}},
        "time_horizon": 8,
        "reward_signals": {
            "extrinsic": {},
            "curiosity": {"encoding_size": 8},
            "rnd": {"encoding_size": 8},
            "gail": {"encoding_size": 8, "demo_path": str(demo)},
        },
        "behavioral_cloning": {"demo_path": str(demo), "strength": 1.0, "batch_size": 8},
    })


def _acted(learner: PPOLearner, t: int, agent: int, seed: int, done: bool) -> Trajectory:
    rng = np.random.default_rng(seed)
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    obs = rng.standard_normal((t, OBS)).astype(np.float32)
    mem, rows = np.zeros((1, M), np.float32), []
    for i in range(t):
        out = policy.act([obs[i : i + 1]], None, rng, memories=mem)
        rows.append((mem[0], out))
        mem = out.memories
    return Trajectory(
        instance=0, agent_id=agent, observations=[obs], next_observations=[rng.standard_normal(OBS).astype(np.float32)],
        continuous_actions=np.concatenate([o.continuous for _, o in rows]),
        discrete_actions=np.concatenate([o.discrete for _, o in rows]),
        log_probs=np.concatenate([o.log_probs for _, o in rows]),
        rewards=rng.standard_normal(t).astype(np.float32), action_masks=np.zeros((t, 5), bool),
        policy_versions=np.zeros(t, np.int64), done=done, memories=np.stack([m for m, _ in rows]),
    )


def test_memory_trains_with_every_learned_signal_and_behavioral_cloning(tmp_path):
    demo = write_expert_demo(tmp_path / "expert.demo", SPEC, episodes=4, length=10)
    learner = PPOLearner(SPEC, _settings(demo), seed=1)
    assert learner.signals.names == ("extrinsic", "curiosity", "rnd", "gail")
    first = _acted(learner, 6, agent=0, seed=0, done=False)
    learner.process_trajectory(first)
    data = learner.rollout_buffer.chronological()
    assert data["values"].shape == (8, 4) and data["returns"].shape == (8, 4)  # a value per signal, rows of 2 sequences
    assert data["next_observations"][0].shape == (8, OBS) and not data["next_observations"][0][6:].any()
    # every head reads the critic's LSTM along the fragment (values of the real rows)
    params = learner._state.params
    values, _ = networks.critic_trace(
        params["actor"], params["critic"], learner.policy_architecture, [jnp.asarray(first.observations[0])], None, False,
        jnp.zeros(M), learner.signals.names,
    )
    np.testing.assert_allclose(data["values"][:6], np.asarray(values), atol=1e-5)
    for k in range(1, 6):
        learner.process_trajectory(_acted(learner, 3 + k % 4, agent=k, seed=k, done=k % 2 == 0))
        while learner.ready():
            metrics = learner.update()
            assert np.isfinite(list(metrics.values())).all(), metrics
            for name in ("Losses/Curiosity Forward Loss", "Losses/RND Loss", "Losses/GAIL Loss", "Losses/Pretraining Loss"):
                assert name in metrics, sorted(metrics)
    assert learner.update_count >= 1
    second = learner.update_count
    for k in range(6, 12):
        learner.process_trajectory(_acted(learner, 3 + k % 4, agent=k, seed=k, done=k % 2 == 0))
        while learner.ready():
            learner.update()
    assert learner.update_count > second and learner.trace_counts["update"] <= 2  # buckets of sequences, not per update


def test_behavioral_cloning_with_memory_runs_the_policy_over_demonstration_sequences(tmp_path):
    demo = write_expert_demo(tmp_path / "expert.demo", SPEC, episodes=3, length=10)
    learner = PPOLearner(SPEC, _settings(demo, learning_rate=3e-3), seed=2)
    bc = learner._bc
    data = bc._data
    # 3 episodes of 10 steps: 3 sequences each (4, 4, 2 + 2 padding rows)
    assert data.discrete_actions.shape == (36, 2)
    np.testing.assert_array_equal(np.asarray(data.loss_masks).reshape(9, L).sum(1), [4, 4, 2] * 3)
    assert bc.batch_size == 2  # sequences per minibatch: batch_size 8 // sequence_length 4
    # the loss ignores padding rows (their content never matters)
    noisy = data._replace(observations=(jnp.where(data.loss_masks[:, None] > 0, data.observations[0], 9.0),))
    key = jax.random.PRNGKey(0)
    actor = learner._state.params["actor"]
    arch = learner.policy_architecture
    assert float(behavioral_cloning.bc_loss(actor, arch, data, None, key)) == float(
        behavioral_cloning.bc_loss(actor, arch, noisy, None, key)
    )
    before = bc.loss(actor, None)
    for step in range(30):
        actor, _ = bc.update(actor, None, step)
    assert bc.loss(actor, None) < 0.8 * before and bc.trace_counts["bc_update"] == 1
