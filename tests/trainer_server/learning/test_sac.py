"""SAC learner: ML-Agents' settings and update ratio, the maths, compilation, learning, resume.

Experience is produced the way a gateway produces it: ``gateway.actor.numpy_policy.NumpyPolicy`` acts
with the learner's ``policy_parameters()`` and its raw samples go into ``Trajectory``
fragments that the learner consumes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gateway.actor.numpy_policy import NumpyPolicy
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from learning_helpers import trainer_settings
from trainer_server import checkpoints
from trainer_server.config import schema as s
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.config.support import unsupported_features
from trainer_server.learning.sac import REPLAY_BUFFER_FILE, SACLearner, learning_rate_at, soft_update, updates_due

SMALL = dict(hidden_units=32, num_layers=2, batch_size=32, buffer_size=4096)


def vector_spec(obs: int, continuous: int = 0, branches: tuple[int, ...] = ()) -> BehaviorSpec:
    return BehaviorSpec("Task?team=0", (ObservationSpec("vector", (obs,)),), ActionSpec(continuous, branches))


def fragment(obs, next_obs, cont, disc, rewards, masks=None, done=True, interrupted=False) -> Trajectory:
    t = len(rewards)
    spec_mask = 0 if masks is None else masks.shape[1]
    return Trajectory(
        instance=0,
        agent_id=1,
        observations=[np.asarray(o, np.float32) for o in obs],
        next_observations=[np.asarray(o, np.float32) for o in next_obs],
        continuous_actions=np.asarray(cont, np.float32).reshape(t, -1),
        discrete_actions=np.asarray(disc, np.int32).reshape(t, -1),
        log_probs=np.zeros(t, np.float32),
        rewards=np.asarray(rewards, np.float32),
        action_masks=np.zeros((t, spec_mask), bool) if masks is None else masks,
        policy_versions=np.zeros(t, np.int64),
        done=done,
        interrupted=interrupted,
    )


def random_fragments(learner: SACLearner, rng: np.random.Generator, n: int, t: int = 8) -> list[Trajectory]:
    spec = learner.spec
    a = spec.action_spec
    out = []
    for _ in range(n):
        obs = [rng.normal(size=(t, *o.shape)).astype(np.float32) for o in spec.observations]
        nxt = [rng.normal(size=o.shape).astype(np.float32) for o in spec.observations]
        disc = np.stack([rng.integers(0, b, t) for b in a.discrete_branches], 1) if a.num_branches else np.zeros((t, 0))
        out.append(
            fragment(obs, nxt, rng.normal(size=(t, a.continuous_size)), disc, rng.normal(size=t),
                     np.zeros((t, a.mask_size), bool), done=bool(rng.integers(2)))
        )
    return out


# ------------------------------------------------------------------------------ settings


def sac(**overrides) -> s.TrainerSettings:
    return trainer_settings("sac", **{**SMALL, **overrides})


def test_learner_reads_mlagents_settings_and_defaults():
    yaml_section = {
        "trainer_type": "sac",
        "hyperparameters": {"batch_size": 64, "buffer_size": 1000, "steps_per_update": 10.0, "init_entcoef": 0.5},
        "network_settings": {"normalize": True, "hidden_units": 64},
        "reward_signals": {"extrinsic": {"gamma": 0.95, "strength": 2.0}},
        "max_steps": 1000,
    }
    settings = trainer_settings_from_dict(yaml_section)
    learner = SACLearner(vector_spec(3, continuous=1), settings, seed=0)
    assert learner.replay_buffer.capacity == 1000
    arch = learner.architecture()
    assert (arch.hidden_units, arch.num_layers, arch.normalize, arch.continuous_distribution) == (64, 2, True, "tanh_gaussian")
    np.testing.assert_allclose(np.exp(learner._state.params["log_entcoef"]["continuous"]), [0.5], rtol=1e-6)
    learner.step = 95  # (95 - 0) / u > 10 for u = 1..9
    assert learner.update_steps == 9
    # omitted keys take ML-Agents' SAC defaults
    hp = trainer_settings_from_dict({"trainer_type": "sac", "hyperparameters": {"steps_per_update": 3}}).hyperparameters
    assert hp.batch_size == 128 and hp.buffer_size == 50000 and hp.tau == 0.005 and hp.init_entcoef == 1.0
    assert hp.learning_rate_schedule == "constant" and hp.reward_signal_steps_per_update == 3.0
    linear = trainer_settings("sac", learning_rate=1e-3, learning_rate_schedule="linear", max_steps=100)
    assert learning_rate_at(linear, 0) == pytest.approx(1e-3)
    assert learning_rate_at(linear, 50) == pytest.approx(5e-4)
    assert learning_rate_at(linear, 500) == pytest.approx(1e-10)
    assert learning_rate_at(trainer_settings("sac", learning_rate=1e-3, max_steps=100), 50) == 1e-3


def test_settings_checks_the_learner_no_longer_makes_happen_at_load():
    """SACConfig refused these; the loader and the support check do it once now."""
    with pytest.raises(s.ConfigError, match="tau"):
        trainer_settings("sac", tau=0.0)
    with pytest.raises(s.ConfigError, match="steps_per_update"):
        trainer_settings("sac", steps_per_update=0)
    assert unsupported_features(trainer_settings("sac", vis_encode_type="resnet")) == []  # every ML-Agents encoder


@pytest.mark.parametrize("spu", [0.1, 0.25, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("init", [0, 7])
def test_updates_due_follows_mlagents_loop(spu, init):
    def mlagents(step):  # ML-Agents' SACTrainer._update_sac_policy counting
        u = 1
        while (step - init) / u > spu:
            u += 1
        return u - 1

    for step in list(range(0, 120)) + [999, 1000, 1001, 12345]:
        assert updates_due(step, init, spu) == mlagents(step), step


# ------------------------------------------------------------------------------- the maths


def test_soft_update_is_polyak_averaging():
    target = {"a": jnp.ones((3,)), "b": {"c": jnp.full((2, 2), 4.0)}}
    online = {"a": jnp.zeros((3,)), "b": {"c": jnp.full((2, 2), 2.0)}}
    out = soft_update(target, online, 0.25)
    np.testing.assert_allclose(out["a"], 0.75)
    np.testing.assert_allclose(out["b"]["c"], 3.5)
    np.testing.assert_allclose(soft_update(target, online, 1.0)["b"]["c"], 2.0)


def test_process_trajectory_builds_transitions():
    spec = vector_spec(2, continuous=1, branches=(3,))
    learner = SACLearner(spec, sac(), seed=0)
    obs = np.arange(6, dtype=np.float32).reshape(3, 2)
    masks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    u = np.array([[0.5], [-2.0], [10.0]], np.float32)
    learner.process_trajectory(fragment([obs], [np.array([9.0, 9.0])], u, [[0], [2], [1]], [1, 2, 3], masks, done=True))
    learner.process_trajectory(
        fragment([obs[:1]], [np.array([7.0, 7.0])], u[:1], [[1]], [4], masks[1:2], done=True, interrupted=True)
    )
    learner.process_trajectory(fragment([obs[:2]], [np.array([5.0, 5.0])], u[:2], [[1], [1]], [5, 6], masks[:2], done=False))
    assert learner.step == 6
    data = learner.replay_buffer.chronological()
    np.testing.assert_array_equal(data.next_obs[0][:3], [[2, 3], [4, 5], [9, 9]])
    np.testing.assert_array_equal(data.next_obs[0][3], [7, 7])
    # true terminal only: interrupted episodes and time_horizon cuts bootstrap
    np.testing.assert_array_equal(data.dones, [0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(data.continuous_actions[:3, 0], np.tanh(u[:, 0]), rtol=1e-6)
    np.testing.assert_array_equal(data.next_action_masks[:3], np.concatenate([masks[1:], np.zeros((1, 3), bool)]))
    np.testing.assert_array_equal(data.rewards, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"obs\[0\]"):
        learner.process_trajectory(fragment([np.zeros((2, 3))], [np.zeros(3)], np.zeros((2, 1)), [[0], [0]], [0, 0], masks[:2]))
    assert learner.step == 6


def test_update_compiles_once_and_runs_every_due_step():
    spec = vector_spec(3, continuous=2, branches=(2, 3))
    learner = SACLearner(spec, sac(steps_per_update=0.5), seed=1, steps_per_call=8)
    rng = np.random.default_rng(0)
    for traj in random_fragments(learner, rng, 5):  # 40 steps -> 79 gradient steps due
        learner.process_trajectory(traj)
    target_before = learner._state.target
    critics_before = learner._state.params["critics"]
    metrics = learner.update()
    assert learner.update_steps == 79 and learner.pending_updates() == 0 and not learner.ready()
    for tag in ("Losses/Policy Loss", "Losses/Q1 Loss", "Losses/Q2 Loss", "Policy/Entropy Coefficient",
                "Policy/Learning Rate", "Policy/Entropy", "Policy/Extrinsic Value Estimate"):
        assert math.isfinite(metrics[tag]), tag
    assert learner.update() == {}
    for extra in (1, 3, 5):  # 2, 6, 10 more gradient steps: padded in the same compiled call
        for traj in random_fragments(learner, rng, 1, t=extra):
            learner.process_trajectory(traj)
        learner.update()
    assert learner.update_steps == 79 + 18
    assert learner.trace_counts["update"] == 1
    # one gradient step moves the target critics by exactly tau toward the new critics
    learner.process_trajectory(random_fragments(learner, rng, 1, t=1)[0])
    assert learner.pending_updates() == 2
    learner.update_steps += 1  # leave exactly one gradient step due
    before = learner._state
    learner.update()
    expected = soft_update(before.target, learner._state.params["critics"], learner.hyperparameters.tau)
    for e, got in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(learner._state.target)):
        np.testing.assert_allclose(got, e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(jax.tree_util.tree_leaves(learner._state.target)[0],
                           jax.tree_util.tree_leaves(target_before)[0])
    assert not np.allclose(jax.tree_util.tree_leaves(critics_before)[0],
                           jax.tree_util.tree_leaves(learner._state.params["critics"])[0])
    assert learner.trace_counts["update"] == 1


def test_buffer_init_steps_and_batch_size_gate_updates():
    spec = vector_spec(3, continuous=1)
    learner = SACLearner(spec, sac(batch_size=16, buffer_init_steps=20), seed=0)
    rng = np.random.default_rng(1)
    learner.process_trajectory(random_fragments(learner, rng, 1, t=12)[0])
    assert not learner.ready() and learner.update() == {}
    learner.process_trajectory(random_fragments(learner, rng, 1, t=12)[0])
    assert learner.ready() and learner.pending_updates() == 3  # (24 - 20) / u > 1 for u = 1..3


# ------------------------------------------------------------------ entropy and masks


def test_entropy_coefficients_move_toward_their_targets():
    # continuous: a fresh tanh-Gaussian's entropy is far above the target -c -> alpha falls;
    # discrete: one allowed action has entropy 0 < 0.2 log(4) -> alpha rises
    spec = vector_spec(2, continuous=2, branches=(4,))
    learner = SACLearner(spec, sac(init_entcoef=0.5, learning_rate=3e-3), seed=3)
    rng = np.random.default_rng(2)
    masks = np.tile(np.array([[False, True, True, True]]), (16, 1))
    for _ in range(8):
        learner.process_trajectory(
            fragment([rng.normal(size=(16, 2))], [rng.normal(size=2)], rng.normal(size=(16, 2)),
                     np.zeros((16, 1)), np.zeros(16), masks, done=False)
        )
    metrics = learner.update()
    coefs = np.exp(learner._state.params["log_entcoef"]["continuous"]), np.exp(learner._state.params["log_entcoef"]["discrete"])
    assert coefs[0][0] < 0.5 * 0.8, coefs
    assert coefs[1][0] > 0.5 * 1.2, coefs
    assert metrics["Policy/Continuous Entropy Coeff"] < 0.5 < metrics["Policy/Discrete Entropy Coeff"]


def test_masked_discrete_actions_get_zero_probability():
    spec = vector_spec(2, branches=(3, 2))
    learner = SACLearner(spec, sac(learning_rate=3e-3, steps_per_update=0.25), seed=4)
    rng = np.random.default_rng(3)
    # replayed experience says action 0 of branch 0 is the best by far
    for _ in range(6):
        disc = np.stack([rng.integers(0, 3, 16), rng.integers(0, 2, 16)], 1)
        learner.process_trajectory(
            fragment([rng.normal(size=(16, 2))], [rng.normal(size=2)], np.zeros((16, 0)), disc,
                     (disc[:, 0] == 0).astype(np.float32), np.zeros((16, 5), bool))
        )
    learner.update()
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    obs = [rng.normal(size=(512, 2)).astype(np.float32)]
    free = policy.act(obs, None, np.random.default_rng(0))
    assert np.mean(free.discrete[:, 0] == 0) > 0.5  # it learned to like action 0 ...
    mask = np.zeros((512, 5), bool)
    mask[:, 0] = True  # ... which is now forbidden
    mask[::2, 4] = True  # and branch 1's action 1 for half of the agents
    out = policy.act(obs, mask, np.random.default_rng(1))
    assert not np.any(out.discrete[:, 0] == 0)
    assert not np.any(out.discrete[::2, 1] == 1)
    # the JAX policy the losses use gives them probability exactly 0
    pi = learner._policy_fn(learner._state.params["actor"], (jnp.asarray(obs[0]),), jnp.asarray(mask), None,
                            jax.random.key(0))
    probs = np.asarray(pi.probs)
    assert np.all(probs[:, 0] == 0.0) and np.all(probs[::2, 4] == 0.0)
    np.testing.assert_allclose(probs[:, :3].sum(1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(pi.log_probs)))


# ------------------------------------------------------------------------------ learning


def test_learns_a_continuous_contextual_task():
    """Reward 1 - mean((tanh(u) - 0.8 x)^2): uniform actions get about 0.45, the untrained
    policy's mean (about 0) 0.79, the best 1.0."""
    spec = vector_spec(2, continuous=2)
    learner = SACLearner(spec, sac(batch_size=64, learning_rate=1e-3, gamma=0.5), seed=5)
    rng = np.random.default_rng(4)

    def play(deterministic: bool, n: int = 16) -> tuple[list[Trajectory], float]:
        policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
        x = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        out = policy.act([x], None, rng, deterministic=deterministic)
        reward = 1.0 - np.mean((out.env_continuous - 0.8 * x) ** 2, axis=1)
        trajs = [fragment([x[i : i + 1]], [x[i]], out.continuous[i : i + 1], np.zeros((1, 0)), reward[i : i + 1])
                 for i in range(n)]
        return trajs, float(np.mean(reward))

    _, before = play(True, 256)
    for _ in range(120):
        trajs, _ = play(False)
        for t in trajs:
            learner.process_trajectory(t)
        learner.update()
    _, after = play(True, 256)
    assert before < 0.85 and after > 0.97, (before, after)


def test_learns_a_discrete_corridor_with_masks():
    """Walk right along 5 cells to the goal (reward 1, terminal); left is masked at cell 0.

    Needs bootstrapping through the target critics: only the last step is rewarded.
    Episodes are cut after 12 steps (interrupted, not terminal).
    """
    spec = vector_spec(5, branches=(2,))
    learner = SACLearner(spec, sac(learning_rate=1e-3, gamma=0.9, init_entcoef=0.2), seed=6)
    rng = np.random.default_rng(5)
    eye = np.eye(5, dtype=np.float32)

    def episode(deterministic: bool):
        policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
        pos, obs, acts, masks, rewards = 0, [], [], [], []
        for _ in range(12):
            mask = np.array([[pos == 0, False]])
            a = int(policy.act([eye[pos][None]], mask, rng, deterministic=deterministic).discrete[0, 0])
            assert not (pos == 0 and a == 0), "a masked action was chosen"
            obs.append(eye[pos]); acts.append(a); masks.append(mask[0])
            pos = max(0, pos - 1) if a == 0 else pos + 1
            rewards.append(1.0 if pos == 4 else 0.0)
            if pos == 4:
                break
        done = pos == 4
        traj = fragment([np.stack(obs)], [eye[pos]], np.zeros((len(acts), 0)), np.array(acts)[:, None],
                        rewards, np.stack(masks), done=True, interrupted=not done)
        return traj, len(acts), done

    def p_right() -> np.ndarray:
        policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
        logits = policy.distribution([eye[:4]], np.array([[True, False]] + [[False, False]] * 3))["logits"]
        return np.exp(logits[:, 1]) / np.exp(logits).sum(1)

    assert np.all(np.abs(p_right()[1:] - 0.5) < 0.1)  # untrained: a coin flip
    for _ in range(60):
        traj, _, _ = episode(False)
        learner.process_trajectory(traj)
        learner.update()
    _, length, reached = episode(True)
    assert reached and length == 4
    assert np.all(p_right() > 0.85), p_right()


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_parameters_drive_numpy_policy_with_visual_and_hybrid_actions():
    spec = BehaviorSpec(
        "Visual?team=0",
        (ObservationSpec("camera", (1, 20, 20)), ObservationSpec("vector", (3,))),
        ActionSpec(1, (2,)),
    )
    learner = SACLearner(spec, sac(batch_size=8, normalize=True), seed=7)
    rng = np.random.default_rng(6)
    for traj in random_fragments(learner, rng, 2, t=6):
        learner.process_trajectory(traj)
    assert learner.update()["Policy/Learning Rate"] > 0
    arch = learner.architecture()
    assert arch.continuous_distribution == "tanh_gaussian" and arch.normalize and arch.hidden_units == 32
    assert arch.to_proto().behavior_spec.name == "Visual?team=0"
    params = learner.policy_parameters()
    assert "policy/log_std/kernel" in params and "normalizer/var/1" in params
    assert not any(name.startswith("critic") for name in params)
    policy = NumpyPolicy(arch, params)
    obs = [rng.uniform(size=(4, 1, 20, 20)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)]
    out = policy.act(obs, np.array([[True, False]] * 4), rng)
    assert np.all(np.abs(out.env_continuous) <= 1.0) and np.all(out.discrete == 1)


# -------------------------------------------------------------------------------- resume


def test_state_dict_round_trip_gives_the_identical_next_update(tmp_path):
    spec = vector_spec(4, continuous=2, branches=(3,))
    settings = sac(normalize=True, learning_rate_schedule="linear", max_steps=10000, save_replay_buffer=True)
    a = SACLearner(spec, settings, seed=8)
    rng = np.random.default_rng(7)
    for traj in random_fragments(a, rng, 6):
        a.process_trajectory(traj)
    a.update()
    # through the real checkpoint format and the replay buffer file
    state, _ = checkpoints.loads(checkpoints.dumps(a.state_dict(), {}))
    a.save_extra(tmp_path)
    assert (tmp_path / REPLAY_BUFFER_FILE).is_file()
    b = SACLearner(spec, settings, seed=99)
    b.load_state_dict(state)
    b.load_extra(tmp_path)
    assert len(b.replay_buffer) == len(a.replay_buffer)
    assert (b.step, b.update_steps) == (a.step, a.update_steps)
    more = random_fragments(a, rng, 2)
    for traj in more:
        a.process_trajectory(traj)
        b.process_trajectory(traj)
    ma, mb = a.update(), b.update()
    assert ma == mb
    pa, pb = a.policy_parameters(), b.policy_parameters()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    # a state of other network settings is refused with a clear message
    other = SACLearner(spec, sac(hidden_units=16), seed=0)
    with pytest.raises(ValueError, match="network"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="not a SAC"):
        other.load_state_dict({"algorithm": "ppo"})


def test_step_reset_assumes_past_updates_were_done():
    spec = vector_spec(2, continuous=1)
    learner = SACLearner(spec, sac(steps_per_update=4.0), seed=0)
    learner.step = 400  # e.g. a checkpoint's step, as ML-Agents assumes on load
    assert learner.pending_updates() == 0
    learner.step = 0  # --initialize-from: training starts over at step 0
    assert learner.update_steps == 0


def test_load_weights_starts_the_run_over(tmp_path):
    spec = vector_spec(3, continuous=1, branches=(2,))
    trained = SACLearner(spec, sac(normalize=True), seed=9)
    rng = np.random.default_rng(8)
    for traj in random_fragments(trained, rng, 6):
        trained.process_trajectory(traj)
    trained.update()
    assert trained.update_steps > 0
    state, _ = checkpoints.loads(checkpoints.dumps(trained.state_dict(), {}))
    fresh = SACLearner(spec, sac(normalize=True), seed=10)
    fresh.load_weights(state)
    assert (fresh.step, fresh.update_steps, len(fresh.replay_buffer)) == (0, 0, 0)
    a, b = trained.policy_parameters(), fresh.policy_parameters()
    assert set(a) == set(b) and "normalizer/mean/0" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for x, y in zip(jax.tree_util.tree_leaves(trained._state.target), jax.tree_util.tree_leaves(fresh._state.target)):
        np.testing.assert_array_equal(x, y)


def test_replay_buffer_file_only_with_save_replay_buffer(tmp_path):
    spec = vector_spec(2, continuous=1)
    rng = np.random.default_rng(9)
    off = SACLearner(spec, sac(), seed=0)
    off.process_trajectory(random_fragments(off, rng, 1)[0])
    off.save_extra(tmp_path)
    assert not list(tmp_path.iterdir())
    # --resume without a saved buffer file: a warning, and an empty buffer
    on = SACLearner(spec, sac(save_replay_buffer=True), seed=0)
    on.load_extra(tmp_path)
    assert len(on.replay_buffer) == 0


# ------------------------------------------------------------------ ML-Agents' policy and entropy losses


def test_discrete_policy_and_entropy_losses_follow_mlagents():
    """sac_policy_loss (against Q1 alone, summed over branches) and sac_entropy_loss (on
    log alpha: its gradient is H - target, averaged over branches), written plainly in numpy."""
    from trainer_server.learning import networks
    from trainer_server.learning.replay_buffer import Transitions
    from trainer_server.learning.sac import make_loss_fn

    branches = (3, 2)
    spec = vector_spec(4, branches=branches)
    learner = SACLearner(spec, sac(init_entcoef=0.3, normalize=False), seed=7)
    params, arch = learner._state.params, learner.policy_architecture
    # different critics, so that Q1 alone and min(Q1, Q2) differ
    params = {**params, "critics": jax.tree_util.tree_map(lambda x: x.at[1].multiply(0.5), params["critics"])}
    params["log_entcoef"] = {**params["log_entcoef"], "discrete": jnp.log(jnp.asarray([0.3, 0.7], jnp.float32))}
    rng = np.random.default_rng(7)
    n = 12
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    batch = Transitions(
        obs=(obs,), next_obs=(rng.normal(size=(n, 4)).astype(np.float32),),
        continuous_actions=np.zeros((n, 0), np.float32),
        discrete_actions=np.stack([rng.integers(0, b, n) for b in branches], 1).astype(np.int32),
        rewards=rng.normal(size=n).astype(np.float32), dones=np.zeros(n, np.float32),
        action_masks=np.zeros((n, 5), bool), next_action_masks=np.zeros((n, 5), bool),
    )
    losses = make_loss_fn(arch, learner.settings)
    (_, metrics), grads = jax.value_and_grad(losses, has_aux=True)(params, learner._state.target, None, batch, jax.random.key(0))

    logits = np.asarray(networks.actor_forward(params["actor"], arch, [obs], None).logits)
    q1 = np.asarray(networks.q_critic_forward(jax.tree_util.tree_map(lambda x: x[0], params["critics"]), arch, [obs], None, np.zeros((n, 0), np.float32)))
    alphas, targets = np.array([0.3, 0.7]), np.array([0.2 * math.log(3), 0.2 * math.log(2)])
    per_sample, entropies, lo = np.zeros(n), [], 0
    for b, size in enumerate(branches):
        z = logits[:, lo : lo + size] - logits[:, lo : lo + size].max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(log_p)
        per_sample += np.sum(p * (alphas[b] * log_p - q1[:, lo : lo + size]), axis=1)
        entropies.append(-np.sum(p * log_p, axis=1))
        lo += size
    np.testing.assert_allclose(float(metrics["Losses/Policy Loss"]), per_sample.mean(), rtol=1e-4, atol=1e-5)
    expected_grad = [(entropies[b] - targets[b]).mean() / len(branches) for b in range(len(branches))]
    np.testing.assert_allclose(np.asarray(grads["log_entcoef"]["discrete"]), expected_grad, rtol=1e-4, atol=1e-5)
