"""Behavioral cloning: the loss on known data, the update, PPO and SAC with ``behavioral_cloning``."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.learning import behavioral_cloning as bc_mod
from trainer_server.learning import networks, shared
from trainer_server.learning.ppo import PPOLearner
from trainer_server.learning.registry import make_learner
from tests.trainer_server.demo_helpers import OBS, expert, write_expert_demo
from tests.trainer_server.learning.learning_helpers import trainer_settings

CONTINUOUS = BehaviorSpec("Cont", (ObservationSpec("obs", (OBS,)),), ActionSpec(continuous_size=2))
DISCRETE = BehaviorSpec("Disc", (ObservationSpec("obs", (OBS,)),), ActionSpec(discrete_branches=(3, 2)))


def _arch(spec: BehaviorSpec, distribution: str = "gaussian"):
    settings = trainer_settings("ppo", hidden_units=8, num_layers=1)
    return shared.policy_architecture(spec, settings, distribution)


def test_loss_on_a_known_dataset() -> None:
    """Zero kernels: the heads output their biases, so the loss is known in closed form."""
    spec = BehaviorSpec("Hybrid", (ObservationSpec("obs", (OBS,)),), ActionSpec(continuous_size=2, discrete_branches=(3, 2)))
    arch = _arch(spec)
    params = {k: jnp.zeros_like(v) for k, v in networks.init_actor(jax.random.key(0), arch).items()}
    params["policy/mu/bias"] = jnp.array([1.5, -6.0])  # env action: 0.5 and clip(-6) / 3 = -1
    params["policy/log_std"] = jnp.full((2,), -30.0)  # no noise
    logits = np.array([0.0, 1.0, 2.0, 0.5, -0.5], np.float32)
    params["policy/logits/bias"] = jnp.asarray(logits)
    obs = np.random.default_rng(0).normal(size=(3, OBS)).astype(np.float32)
    expert_c = np.array([[0.5, -1.0], [0.0, 0.0], [1.0, -1.0]], np.float32)
    expert_d = np.array([[2, 0], [0, 1], [1, 1]], np.int32)
    batch = bc_mod.DemoBatch((jnp.asarray(obs),), jnp.asarray(expert_c), jnp.asarray(expert_d))
    got = float(bc_mod.bc_loss(params, arch, batch, None, jax.random.key(1)))
    mse = np.mean((np.array([0.5, -1.0]) - expert_c) ** 2)
    first = logits[:3] - math.log(np.exp(logits[:3]).sum())
    second = logits[3:] - math.log(np.exp(logits[3:]).sum())
    nll = np.mean([[-first[a], -second[b]] for a, b in expert_d])
    assert got == pytest.approx(mse + nll, rel=1e-5)
    # SAC's squashed actions: the env action is tanh(mu)
    sac_arch = _arch(spec, "tanh_gaussian")
    sac_params = {k: jnp.zeros_like(v) for k, v in networks.init_actor(jax.random.key(0), sac_arch).items()}
    sac_params["policy/mu/bias"] = jnp.array([0.5, -0.5])
    sac_params["policy/log_std/bias"] = jnp.full((2,), -20.0)
    only_c = bc_mod.DemoBatch((jnp.asarray(obs),), jnp.asarray(expert_c), jnp.zeros((3, 0), jnp.int32))
    sac_spec_arch = _arch(BehaviorSpec("C", spec.observations, ActionSpec(continuous_size=2)), "tanh_gaussian")
    sac_params = {k: v for k, v in sac_params.items() if not k.startswith("policy/logits")}
    got = float(bc_mod.bc_loss(sac_params, sac_spec_arch, only_c, None, jax.random.key(1)))
    assert got == pytest.approx(np.mean((np.tanh([0.5, -0.5]) - expert_c) ** 2), rel=1e-4)


@pytest.mark.parametrize("spec", [CONTINUOUS, DISCRETE], ids=["continuous", "discrete"])
def test_cloning_alone_learns_the_expert(tmp_path: Path, spec: BehaviorSpec) -> None:
    demo = write_expert_demo(tmp_path / "expert.demo", spec)
    settings = trainer_settings(
        "ppo", hidden_units=32, num_layers=2, batch_size=50, learning_rate=3e-3,
        behavioral_cloning={"demo_path": str(demo), "num_epoch": 5},
    )
    learner = PPOLearner(spec, settings, seed=0)
    bc = learner._bc
    assert bc.demonstrations.num_steps == 8 * 25 and bc.batch_size == 50 and bc.num_batches == 4 and bc.num_epoch == 5
    params = learner._state.params["actor"]
    before = bc.loss(params, None)
    for _ in range(40):
        params, metrics = bc.update(params, None, step=0)
    assert bc.trace_counts["bc_update"] == 1
    after = bc.loss(params, None)
    assert after < 0.2 * before, (before, after)
    # the cloned policy acts like the expert on new observations
    learner._state = learner._state._replace(params={**learner._state.params, "actor": params})
    obs = np.random.default_rng(9).normal(size=(200, OBS)).astype(np.float32)
    out = learner.act([obs], deterministic=True)
    want_c, want_d = expert(obs)
    if spec.action_spec.continuous_size:
        assert np.mean(np.abs(out.env_continuous - want_c)) < 0.15
    else:
        assert np.mean(out.discrete == want_d) > 0.85


def test_learning_rate_anneals_over_steps_then_stops(tmp_path: Path) -> None:
    demo = write_expert_demo(tmp_path / "expert.demo", CONTINUOUS, episodes=2, length=10)
    settings = trainer_settings(
        "ppo", hidden_units=8, learning_rate=1e-3, batch_size=8,
        behavioral_cloning={"demo_path": str(demo), "strength": 0.5, "steps": 1000, "samples_per_update": 8},
    )
    learner = PPOLearner(CONTINUOUS, settings, seed=0)
    bc = learner._bc
    assert bc.num_batches == 1  # samples_per_update // batch
    assert bc.learning_rate(0) == pytest.approx(5e-4)
    assert bc.learning_rate(500) == pytest.approx(2.5e-4, rel=1e-6)
    params = learner._state.params["actor"]
    new, metrics = bc.update(params, None, step=1000)
    assert metrics == {"Losses/Pretraining Loss": 0.0} and new is params and bc.update_count == 0
    constant = trainer_settings("ppo", hidden_units=8, behavioral_cloning={"demo_path": str(demo)})
    assert PPOLearner(CONTINUOUS, constant, seed=0)._bc.learning_rate(10**9) == pytest.approx(3e-4)


def _trajectory(spec: BehaviorSpec, t: int, rng: np.random.Generator) -> Trajectory:
    a = spec.action_spec
    return Trajectory(
        instance=0,
        agent_id=0,
        observations=[rng.normal(size=(t, OBS)).astype(np.float32)],
        next_observations=[rng.normal(size=(OBS,)).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, a.continuous_size)).astype(np.float32),
        discrete_actions=np.zeros((t, a.num_branches), np.int32),
        action_masks=np.zeros((t, a.mask_size), bool),
        log_probs=np.full((t,), -1.0, np.float32),
        rewards=np.ones((t,), np.float32),
        policy_versions=np.zeros((t,), np.int64),
        done=True,
        interrupted=False,
    )


@pytest.mark.parametrize(
    ("trainer_type", "spec"),
    [("ppo", CONTINUOUS), ("ppo", DISCRETE), ("sac", CONTINUOUS), ("sac", DISCRETE)],
    ids=["ppo-continuous", "ppo-discrete", "sac-continuous", "sac-discrete"],
)
def test_learners_clone_after_their_update_and_checkpoint_it(tmp_path: Path, trainer_type: str, spec: BehaviorSpec) -> None:
    demo = write_expert_demo(tmp_path / "expert.demo", spec, episodes=2, length=20)
    extra = {"buffer_size": 32, "batch_size": 16} if trainer_type == "ppo" else {"buffer_size": 200, "batch_size": 16, "buffer_init_steps": 0, "steps_per_update": 8}
    settings = trainer_settings(
        trainer_type, hidden_units=8, time_horizon=32, normalize=True,
        behavioral_cloning={"demo_path": str(demo), "steps": 10_000}, **extra,
    )
    learner = make_learner(spec, settings, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(2):
        learner.process_trajectory(_trajectory(spec, 32, rng))
    assert learner.ready()
    # PPO: one BC update per update; SAC: one per gradient step, as ML-Agents
    expected = 1 if trainer_type == "ppo" else learner.pending_updates()
    metrics = learner.update()
    assert metrics["Losses/Pretraining Loss"] > 0.0
    assert learner._bc.update_count == expected
    state = learner.state_dict()
    assert set(state["behavioral_cloning"]) == {"opt_state", "key", "update_count"}
    restored = make_learner(spec, settings, seed=5)
    restored.load_state_dict(state)
    assert restored._bc.update_count == learner._bc.update_count
    a = jax.tree.leaves(learner._bc.opt_state)
    b = jax.tree.leaves(restored._bc.opt_state)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    if trainer_type == "sac":
        return  # SAC's replay buffer is kept beside the checkpoint, not in it
    # same state, same next update
    for one in (learner, restored):
        one.process_trajectory(_trajectory(spec, 32, np.random.default_rng(3)))
        one.process_trajectory(_trajectory(spec, 32, np.random.default_rng(4)))
    m1, m2 = learner.update(), restored.update()
    assert m1["Losses/Pretraining Loss"] == pytest.approx(m2["Losses/Pretraining Loss"], rel=1e-5)


def test_a_demonstration_of_another_spec_is_refused(tmp_path: Path) -> None:
    demo = write_expert_demo(tmp_path / "expert.demo", DISCRETE, episodes=1, length=5)
    settings = trainer_settings("ppo", behavioral_cloning={"demo_path": str(demo)})
    with pytest.raises(ValueError, match=r"expert.demo: the demonstration's actions .* do not match behavior Cont"):
        PPOLearner(CONTINUOUS, settings, seed=0)
