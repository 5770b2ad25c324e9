"""PPO: GAE, schedules, compile-once update, learning on tiny tasks, exact resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from gateway.actor.numpy_policy import NumpyPolicy
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from learning_helpers import trainer_settings
from trainer_server.config import schema as s
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.config.support import unsupported_features
from trainer_server.learning import distributions, networks, ppo, shared
from trainer_server.learning.ppo import PPOLearner


def _trajectory(spec, obs, out, rewards, next_obs, done=False, interrupted=False, masks=None):
    t = len(rewards)
    return Trajectory(
        instance=0,
        agent_id=0,
        observations=obs,
        next_observations=next_obs,
        continuous_actions=out.continuous,
        discrete_actions=out.discrete,
        log_probs=out.log_probs,
        rewards=np.asarray(rewards, np.float32),
        action_masks=np.zeros((t, spec.action_spec.mask_size), bool) if masks is None else masks,
        policy_versions=np.zeros(t, np.int64),
        done=done,
        interrupted=interrupted,
    )


# -- GAE ---------------------------------------------------------------------------------
def _gae_loop(rewards, values, bootstrap, gamma, lambd):
    advantages = np.zeros(len(rewards))
    last = 0.0
    for t in reversed(range(len(rewards))):
        next_value = bootstrap if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lambd * last
        advantages[t] = last
    return advantages, advantages + values


@pytest.mark.parametrize("length", [1, 5, 16])
def test_gae_matches_a_python_loop_with_padding(length):
    rng = np.random.default_rng(length)
    padded = 16
    rewards = rng.standard_normal(padded).astype(np.float32)
    values = rng.standard_normal(padded).astype(np.float32)
    mask = np.arange(padded) < length
    for bootstrap in (0.0, 2.5):  # terminal (0) and cut-off / interrupted (critic's value)
        adv, ret = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.float32(bootstrap), jnp.asarray(mask), 0.9, 0.8)
        ref_adv, ref_ret = _gae_loop(rewards[:length], values[:length], bootstrap, 0.9, 0.8)
        np.testing.assert_allclose(np.asarray(adv)[:length], ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret)[:length], ref_ret, rtol=1e-5, atol=1e-5)
        assert not np.asarray(adv)[length:].any()


def test_learner_bootstraps_on_cut_offs_and_interruptions_but_not_on_terminals():
    spec = BehaviorSpec("G", (ObservationSpec("v", (2,)),), ActionSpec(1))
    settings = trainer_settings("ppo", batch_size=4, buffer_size=8, time_horizon=8, hidden_units=8, num_layers=1, gamma=0.9, lambd=0.8)
    learner = PPOLearner(spec, settings, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((5, 2)).astype(np.float32)
    nxt = rng.standard_normal(2).astype(np.float32)
    out = learner.act([obs])
    rewards = rng.standard_normal(5).astype(np.float32)
    arch = learner.policy_architecture
    params = learner._state.params
    values = np.asarray(networks.critic_forward(params["actor"], params["critic"], arch, [jnp.asarray(np.vstack([obs, nxt]))], None))
    cases = {
        "cut": dict(done=False, interrupted=False, bootstrap=values[5]),
        "interrupted": dict(done=True, interrupted=True, bootstrap=values[5]),
        "terminal": dict(done=True, interrupted=False, bootstrap=0.0),
    }
    for name, case in cases.items():
        learner.process_trajectory(_trajectory(spec, [obs], out, rewards, [nxt], case["done"], case["interrupted"]))
        chunk = learner.rollout_buffer.chronological()
        ref_adv, ref_ret = _gae_loop(rewards, values[:5], case["bootstrap"], 0.9, 0.8)
        np.testing.assert_allclose(chunk["values"][-5:], values[:5], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(chunk["advantages"][-5:], ref_adv, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(chunk["returns"][-5:], ref_ret, rtol=1e-4, atol=1e-5, err_msg=name)
    assert learner.step == 15


# -- schedules and settings ------------------------------------------------------------------
def test_schedules_decay_linearly_to_ml_agents_floors():
    settings = trainer_settings("ppo", learning_rate=1e-3, beta=1e-2, epsilon=0.3, max_steps=1000)
    assert ppo.schedules(settings, 0) == pytest.approx((1e-3, 0.3, 1e-2))
    lr, eps, beta = ppo.schedules(settings, 500)
    assert lr == pytest.approx((1e-3 - 1e-10) * 0.5 + 1e-10)
    assert eps == pytest.approx(0.2) and beta == pytest.approx((1e-2 - 1e-5) * 0.5 + 1e-5)
    assert ppo.schedules(settings, 5000) == pytest.approx((1e-10, 0.1, 1e-5))
    constant = trainer_settings(
        "ppo", learning_rate_schedule="constant", beta_schedule="constant", epsilon_schedule="linear", max_steps=1000
    )
    lr, eps, beta = ppo.schedules(constant, 1000)
    assert lr == constant.hyperparameters.learning_rate and beta == constant.hyperparameters.beta
    assert eps == pytest.approx(0.1)
    # the jitted form (inside the update) agrees
    jitted = jax.jit(lambda step: ppo.schedules(settings, step))(jnp.int32(500))
    assert [float(x) for x in jitted] == pytest.approx(ppo.schedules(settings, 500))


def test_learner_reads_ml_agents_settings():
    trainer = s.TrainerSettings(
        hyperparameters=s.PPOSettings(batch_size=64, buffer_size=1200, learning_rate_schedule="constant", beta_schedule="linear"),
        network_settings=s.NetworkSettings(hidden_units=32, num_layers=3, normalize=True),
        reward_signals={"extrinsic": s.RewardSignalSettings(gamma=0.95, strength=2.0)},
        max_steps=1000,
        time_horizon=100,
    )
    spec = BehaviorSpec("M", (ObservationSpec("v", (3,)),), ActionSpec(1))
    learner = PPOLearner(spec, trainer, seed=0)
    arch = learner.architecture()
    assert (arch.hidden_units, arch.num_layers, arch.normalize, arch.continuous_distribution) == (32, 3, True, "gaussian")
    assert "normalizer/mean/0" in learner.policy_parameters()
    lr, _, beta = ppo.schedules(trainer, 1000)
    assert lr == 3e-4 and beta == pytest.approx(1e-5)  # constant learning rate, linear beta
    # the extrinsic strength scales the rewards (a terminal one-step fragment: return = strength * r)
    obs = np.zeros((1, 3), np.float32)
    out = learner.act([obs])
    learner.process_trajectory(_trajectory(spec, [obs], out, [1.5], [obs[0]], done=True))
    assert learner.rollout_buffer.chronological()["returns"][0] == pytest.approx(3.0)


def test_settings_checks_the_learner_no_longer_makes_happen_at_load():
    """PPOConfig refused these; the loader and the support check do it once now."""
    with pytest.raises(s.ConfigError, match="batch_size"):
        trainer_settings("ppo", batch_size=10, buffer_size=5)
    with pytest.raises(s.ConfigError, match="learning_rate_schedule"):
        trainer_settings("ppo", learning_rate_schedule="cosine")
    assert unsupported_features(trainer_settings("ppo", vis_encode_type="resnet")) == []  # every ML-Agents encoder
    curious = trainer_settings_from_dict({"reward_signals": {"extrinsic": {}, "curiosity": {}}})
    assert unsupported_features(curious) == []  # curiosity trains beside the extrinsic signal


# -- compile once --------------------------------------------------------------------------
def test_update_and_value_estimation_compile_once():
    spec = BehaviorSpec(
        "C?team=0", (ObservationSpec("v", (4,)), ObservationSpec("cam", (1, 20, 20))), ActionSpec(2, (3, 2))
    )
    settings = trainer_settings("ppo", batch_size=16, buffer_size=48, num_epoch=2, time_horizon=10, hidden_units=8, num_layers=1, normalize=True)
    learner = PPOLearner(spec, settings, seed=1)
    rng = np.random.default_rng(1)
    lengths = iter([10, 3, 7, 1, 10, 9, 4, 10, 2, 8, 5, 6, 10, 10, 10, 10, 10, 10])
    for _ in range(2):
        while not learner.ready():
            t = next(lengths)
            obs = [rng.standard_normal((t, 4)).astype(np.float32), rng.random((t, 1, 20, 20)).astype(np.float32)]
            masks = rng.random((t, 5)) < 0.3
            masks[:, 0] = masks[:, 3] = False
            # act as the gateway does: numpy, with the learner's snapshot (no JAX compile per length)
            policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
            out = policy.act(obs, masks, rng)
            assert not np.take_along_axis(masks[:, :3], out.discrete[:, :1], axis=1).any()
            nxt = [o[-1] for o in obs]
            learner.process_trajectory(_trajectory(spec, obs, out, rng.standard_normal(t), nxt, done=t < 10, masks=masks))
        metrics = learner.update()
        assert all(np.isfinite(v) for v in metrics.values())
    assert learner.update_count == 2
    assert learner.trace_counts["update"] == 1, learner.trace_counts
    assert learner.trace_counts["process"] == 1, learner.trace_counts
    # excess steps beyond buffer_size stay for the next update
    assert learner.buffered_steps == learner.step - 2 * settings.hyperparameters.buffer_size
    for name in ("Losses/Policy Loss", "Losses/Value Loss", "Policy/Entropy", "Policy/Learning Rate",
                 "Policy/Epsilon", "Policy/Beta", "Policy/Extrinsic Value Estimate"):
        assert name in metrics
    # the snapshot drives the numpy actor to the same distribution as the JAX actor
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    obs = [rng.standard_normal((6, 4)).astype(np.float32), rng.random((6, 1, 20, 20)).astype(np.float32)]
    out = learner.act(obs)
    np.testing.assert_allclose(policy.log_prob(obs, None, out.continuous, out.discrete), out.log_probs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="observation 0 has shape"):
        learner.process_trajectory(_trajectory(spec, [obs[0][:, :3], obs[1]], out, np.zeros(6), [obs[0][0, :3], obs[1][0]]))


# -- the loss has the right sign -------------------------------------------------------------
def test_update_improves_the_surrogate_on_a_toy_batch():
    spec = BehaviorSpec("S", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))
    settings = trainer_settings("ppo", batch_size=32, buffer_size=128, num_epoch=3, beta=0.0, hidden_units=16, num_layers=1, learning_rate=3e-3)
    learner = PPOLearner(spec, settings, seed=2)
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((128, 3)).astype(np.float32)
    out = learner.act([obs])
    dist = networks.actor_forward(learner._state.params["actor"], learner.policy_architecture, [obs], None)
    batch = ppo.Batch(
        observations=(obs,),
        continuous_actions=out.continuous,
        discrete_actions=out.discrete,
        action_masks=np.zeros((128, 2), bool),
        log_probs=distributions.log_prob_parts(dist, out.continuous, out.discrete, (2,)),
        values=np.zeros(128, np.float32),
        advantages=rng.standard_normal(128).astype(np.float32),
        returns=rng.standard_normal(128).astype(np.float32),
    )
    state = learner._state
    norm_adv = batch._replace(advantages=(batch.advantages - batch.advantages.mean()) / batch.advantages.std())

    loss = jax.jit(lambda params: ppo.ppo_loss(params, learner.policy_architecture, settings, norm_adv, None, 0.2, 0.0)[1])

    def surrogate(params):
        aux = loss(params)
        return -float(aux["policy_loss"]), float(aux["value_loss"])

    before = surrogate(state.params)
    update = jax.jit(ppo.make_update_fn(learner.policy_architecture, settings, shared.make_optimizer()))
    new_state, _ = update(state, batch, jax.random.key(0))
    after = surrogate(new_state.params)
    # per-dimension ratios: each column moves less than the joint ratio would
    assert after[0] > before[0] + 0.005, (before, after)
    assert after[1] < before[1], (before, after)


def _train_bandit(spec, reward_fn, settings, updates, seed=0):
    """Contextual bandit: one-step episodes; returns mean reward of the first and last updates."""
    learner = PPOLearner(spec, settings, seed=seed)
    rng = np.random.default_rng(seed)
    means = []
    buffer_size = settings.hyperparameters.buffer_size
    for _ in range(updates):
        # one batch of one-step episodes per update, all acted with the current policy
        obs = rng.uniform(-1, 1, (buffer_size, 2)).astype(np.float32)
        out = learner.act([obs])
        rewards = reward_fn(obs, out)
        for i in range(buffer_size):
            step = type(out)(*(x[i : i + 1] for x in (out.continuous, out.discrete, out.log_probs, out.env_continuous)))
            learner.process_trajectory(_trajectory(spec, [obs[i : i + 1]], step, rewards[i : i + 1], [obs[i]], done=True))
        learner.update()
        means.append(float(np.mean(rewards)))
    return means


def test_ppo_learns_a_continuous_contextual_bandit():
    spec = BehaviorSpec("Cont", (ObservationSpec("v", (2,)),), ActionSpec(1))
    settings = trainer_settings("ppo", batch_size=64, buffer_size=512, num_epoch=3, learning_rate=3e-3, hidden_units=32,
                                num_layers=2, time_horizon=4, max_steps=100000, normalize=True)
    # the best action is 0.8 * sign(first observation) in the environment's units
    reward = lambda obs, out: (-np.abs(out.env_continuous[:, 0] - 0.8 * np.sign(obs[:, 0]))).astype(np.float32)  # noqa: E731
    means = _train_bandit(spec, reward, settings, updates=20)
    assert means[-1] > means[0] + 0.25, means
    assert np.mean(means[-3:]) > -0.35, means


def test_ppo_learns_a_discrete_contextual_bandit():
    spec = BehaviorSpec("Disc", (ObservationSpec("v", (2,)),), ActionSpec(0, (3,)))
    settings = trainer_settings("ppo", batch_size=64, buffer_size=512, num_epoch=3, learning_rate=3e-3, hidden_units=32,
                                num_layers=2, time_horizon=4, max_steps=100000)
    # reward 1 for action (obs[0] > 0) + 1 (so 1 or 2); action 0 is never right
    reward = lambda obs, out: (out.discrete[:, 0] == (obs[:, 0] > 0) + 1).astype(np.float32)  # noqa: E731
    means = _train_bandit(spec, reward, settings, updates=12)
    assert means[0] < 0.5, means
    assert np.mean(means[-2:]) > 0.85, means


# -- checkpoints ------------------------------------------------------------------------------
def test_state_dict_resumes_exactly_through_msgpack():
    spec = BehaviorSpec("R", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))
    settings = trainer_settings("ppo", batch_size=16, buffer_size=40, num_epoch=2, hidden_units=8, num_layers=1, time_horizon=8, normalize=True)
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)) for _ in range(12)]

    def feed(learner, items):
        for obs, r in items:
            out = learner.act([obs], key=jax.random.key(0))
            learner.process_trajectory(_trajectory(spec, [obs], out, r, [obs[-1]]))
            if learner.ready():
                learner.update()

    original = PPOLearner(spec, settings, seed=4)
    feed(original, data[:6])  # one update and 8 steps left in the buffer
    assert original.update_count == 1 and original.buffered_steps == 8
    blob = serialization.msgpack_serialize(original.state_dict())
    resumed = PPOLearner(spec, settings, seed=99)
    resumed.load_state_dict(serialization.msgpack_restore(blob))
    assert (resumed.step, resumed.update_count, resumed.buffered_steps) == (48, 1, 8)
    feed(original, data[6:])
    feed(resumed, data[6:])
    assert resumed.update_count == original.update_count == 2
    a, b = original.policy_parameters(), resumed.policy_parameters()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = PPOLearner(BehaviorSpec("R", (ObservationSpec("v", (4,)),), ActionSpec(1, (2,))), settings)
    with pytest.raises(ValueError, match="checkpoint params.actor.body/dense0/kernel: shape"):
        other.load_state_dict(serialization.msgpack_restore(blob))


def test_load_weights_takes_the_networks_but_not_the_run(tmp_path):
    spec = BehaviorSpec("W", (ObservationSpec("v", (3,)),), ActionSpec(1, (2,)))
    settings = trainer_settings("ppo", batch_size=8, buffer_size=16, num_epoch=1, hidden_units=8, num_layers=1, time_horizon=8, normalize=True)
    rng = np.random.default_rng(5)
    trained = PPOLearner(spec, settings, seed=1)
    for _ in range(3):  # one update, 8 steps left in the buffer
        obs = rng.standard_normal((8, 3)).astype(np.float32)
        trained.process_trajectory(_trajectory(spec, [obs], trained.act([obs]), rng.standard_normal(8), [obs[-1]]))
        if trained.ready():
            trained.update()
    assert trained.step == 24 and trained.buffered_steps == 8
    blob = serialization.msgpack_serialize(trained.state_dict())
    fresh = PPOLearner(spec, settings, seed=2)
    fresh.load_weights(serialization.msgpack_restore(blob))
    assert (fresh.step, fresh.buffered_steps) == (0, 0)
    a, b = trained.policy_parameters(), fresh.policy_parameters()
    assert set(a) == set(b) and "normalizer/var/0" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    critic = jax.tree_util.tree_leaves(fresh.state_dict()["params"]["critic"])
    for x, y in zip(jax.tree_util.tree_leaves(trained.state_dict()["params"]["critic"]), critic):
        np.testing.assert_array_equal(x, y)
    # nothing lives beside a PPO checkpoint: the buffered steps are in the state_dict
    trained.save_extra(tmp_path)
    assert not list(tmp_path.iterdir())
    fresh.load_extra(tmp_path)
    assert fresh.buffered_steps == 0


def test_shared_critic_reads_the_actors_body_and_trains():
    """ML-Agents' shared_critic: the value head sits on the policy's encoders and body, so
    the value loss also trains the actor's body; the snapshot stays actor-only."""
    spec = BehaviorSpec("Shared", (ObservationSpec("v", (4,)), ObservationSpec("cam", (1, 20, 20))), ActionSpec(2, (3,)))
    settings = trainer_settings("ppo", batch_size=16, buffer_size=48, num_epoch=2, time_horizon=8, hidden_units=8,
                                num_layers=2, normalize=True, shared_critic=True)
    learner = PPOLearner(spec, settings, seed=6)
    critic = learner._state.params["critic"]
    assert sorted(critic) == ["critic/value/bias", "critic/value/kernel"]  # no encoders or body of its own
    rng = np.random.default_rng(6)
    obs = [rng.standard_normal((5, 4)).astype(np.float32), rng.random((5, 1, 20, 20)).astype(np.float32)]
    # the critic's value is the value head applied to the actor's body
    actor = learner._state.params["actor"]
    body = networks.encode(actor, "", learner.architecture(), [jnp.asarray(o) for o in obs], None)
    np.testing.assert_allclose(
        networks.critic_forward(actor, critic, learner.architecture(), [jnp.asarray(o) for o in obs], None, shared_critic=True),
        (body @ critic["critic/value/kernel"] + critic["critic/value/bias"])[:, 0],
        rtol=1e-6,
    )
    # the value loss alone moves the actor's body (its gradient flows through the shared layers)
    batch = ppo.Batch(
        observations=tuple(obs),
        continuous_actions=np.zeros((5, 2), np.float32),
        discrete_actions=np.zeros((5, 1), np.int32),
        action_masks=np.zeros((5, 3), bool),
        log_probs=np.zeros((5, 3), np.float32),
        values=np.zeros(5, np.float32),
        advantages=np.zeros(5, np.float32),
        returns=np.full(5, 10.0, np.float32),
    )
    grads = jax.grad(lambda p: ppo.ppo_loss(p, learner.architecture(), settings, batch, None, 0.2, 0.0)[1]["value_loss"])(
        learner._state.params
    )
    assert float(jnp.abs(grads["actor"]["body/dense0/kernel"]).sum()) > 0
    # training runs, losses are finite, the update compiles once
    for _ in range(2):
        while not learner.ready():
            o = [rng.standard_normal((8, 4)).astype(np.float32), rng.random((8, 1, 20, 20)).astype(np.float32)]
            out = NumpyPolicy(learner.architecture(), learner.policy_parameters()).act(o, None, rng)
            learner.process_trajectory(_trajectory(spec, o, out, rng.standard_normal(8), [x[-1] for x in o]))
        metrics = learner.update()
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert learner.trace_counts["update"] == 1
    assert not any(name.startswith("critic") for name in learner.policy_parameters())
    # the snapshot drives NumpyPolicy to the JAX actor's log-probabilities
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    out = learner.act(obs)
    np.testing.assert_allclose(policy.log_prob(obs, None, out.continuous, out.discrete), out.log_probs, rtol=1e-4, atol=1e-4)


# -- per-dimension ratio (ML-Agents' trust_region_policy_loss on flattened log-probs) -----------
def _numpy_per_dimension_policy_loss(mu, log_std, logits, branches, cont, disc, old_parts, adv, epsilon):
    """ML-Agents' clipped surrogate written plainly: one ratio per continuous dimension and
    per discrete branch, each clipped, averaged over all of them and the batch."""
    columns = [-0.5 * ((cont[:, d] - mu[:, d]) / np.exp(log_std[d])) ** 2 - log_std[d] - 0.5 * np.log(2 * np.pi)
               for d in range(mu.shape[1])]
    lo = 0
    for b, size in enumerate(branches):
        z = logits[:, lo : lo + size]
        log_softmax = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        columns.append(log_softmax[np.arange(len(disc)), disc[:, b]])
        lo += size
    terms = []
    for j, new in enumerate(columns):
        ratio = np.exp(new - old_parts[:, j])
        terms.append(np.minimum(ratio * adv, np.clip(ratio, 1 - epsilon, 1 + epsilon) * adv))
    return -np.mean(np.stack(terms, axis=1))


def test_policy_loss_takes_one_clipped_ratio_per_dimension_and_branch():
    spec = BehaviorSpec("Mixed", (ObservationSpec("v", (3,)),), ActionSpec(2, (3, 2)))
    settings = trainer_settings("ppo", batch_size=16, buffer_size=16, hidden_units=8, num_layers=1)
    learner = PPOLearner(spec, settings, seed=4)
    rng = np.random.default_rng(4)
    obs = rng.standard_normal((16, 3)).astype(np.float32)
    out = learner.act([obs])
    params = learner._state.params
    dist = networks.actor_forward(params["actor"], learner.policy_architecture, [obs], None)
    # old per-dimension log-probs far enough from the current ones that some ratios clip
    old_parts = np.asarray(distributions.log_prob_parts(dist, out.continuous, out.discrete, (3, 2)))
    old_parts = old_parts + rng.uniform(-0.5, 0.5, old_parts.shape).astype(np.float32)
    adv = rng.standard_normal(16).astype(np.float32)
    batch = ppo.Batch((obs,), out.continuous, out.discrete, np.zeros((16, 5), bool), old_parts,
                      np.zeros(16, np.float32), adv, np.zeros(16, np.float32))
    _, aux = ppo.ppo_loss(params, learner.policy_architecture, settings, batch, None, 0.2, 0.0)
    ref = _numpy_per_dimension_policy_loss(
        np.asarray(dist.mu), np.asarray(params["actor"]["policy/log_std"]), np.asarray(dist.logits), (3, 2),
        out.continuous, out.discrete, old_parts, adv, 0.2,
    )
    np.testing.assert_allclose(float(aux["policy_loss"]), ref, rtol=1e-5, atol=1e-6)
    # the joint ratio would give another number: the test can tell them apart
    joint = np.exp(old_parts.sum(1) * 0 + (np.asarray(distributions.log_prob_parts(dist, out.continuous, out.discrete, (3, 2))).sum(1) - old_parts.sum(1)))
    joint_loss = -np.mean(np.minimum(joint * adv, np.clip(joint, 0.8, 1.2) * adv))
    assert abs(joint_loss - ref) > 1e-3


def test_processing_stores_per_dimension_log_probs_that_sum_to_the_acting_joint():
    spec = BehaviorSpec("Mixed", (ObservationSpec("v", (3,)),), ActionSpec(2, (3,)))
    settings = trainer_settings("ppo", batch_size=4, buffer_size=8, time_horizon=8, hidden_units=8, num_layers=1, normalize=True)
    learner = PPOLearner(spec, settings, seed=5)
    rng = np.random.default_rng(5)
    obs = rng.standard_normal((6, 3)).astype(np.float32)
    out = learner.act([obs])
    params, arch = learner._state.params, learner.policy_architecture
    stats = ppo._norm_stats(learner._state.normalizer, True)
    expected = np.asarray(distributions.log_prob_parts(networks.actor_forward(params["actor"], arch, [obs], stats), out.continuous, out.discrete, (3,)))
    learner.process_trajectory(_trajectory(spec, [obs], out, np.zeros(6), [obs[0]]))
    stored = learner.rollout_buffer.chronological()["log_probs"]
    assert stored.shape == (6, 3)
    # acted by the current policy: the recomputed columns are the acting ones
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stored.sum(1), out.log_probs, rtol=1e-4, atol=1e-4)
    # acted by another policy (a lagging snapshot): the columns still sum to the carried joint
    other = type(out)(out.continuous, out.discrete, out.log_probs - 0.3, out.env_continuous)
    learner.process_trajectory(_trajectory(spec, [obs], other, np.zeros(6), [obs[0]]))
    stored = learner.rollout_buffer.chronological()["log_probs"][6:]
    np.testing.assert_allclose(stored.sum(1), out.log_probs - 0.3, rtol=1e-4, atol=1e-4)


def test_per_dimension_log_probs_of_a_version_use_the_normalizer_it_acted_with():
    """Fragments of one snapshot update the normalizer as they arrive; the later ones were
    still acted with the snapshot's statistics, so their per-dimension log-probs (PPO's
    per-dimension ratio) must be recomputed with those, not with the drifted ones."""
    spec = BehaviorSpec("Cont", (ObservationSpec("v", (3,)),), ActionSpec(2, ()))
    settings = trainer_settings("ppo", batch_size=4, buffer_size=64, time_horizon=8, hidden_units=8, num_layers=1, normalize=True)
    learner = PPOLearner(spec, settings, seed=6)
    rng = np.random.default_rng(6)
    params, arch = learner._state.params, learner.policy_architecture
    acting_stats = ppo._norm_stats(learner._state.normalizer, True)  # the snapshot's statistics
    first = (5.0 + 3.0 * rng.standard_normal((8, 3))).astype(np.float32)  # moves the statistics far
    obs = rng.standard_normal((6, 3)).astype(np.float32)
    acted_first, out = learner.act([first]), learner.act([obs])  # both by the snapshot
    learner.process_trajectory(_trajectory(spec, [first], acted_first, np.zeros(8), [first[0]]))
    learner.process_trajectory(_trajectory(spec, [obs], out, np.zeros(6), [obs[0]]))
    stored = learner.rollout_buffer.chronological()["log_probs"][8:]
    expected = np.asarray(distributions.log_prob_parts(networks.actor_forward(params["actor"], arch, [obs], acting_stats), out.continuous, out.discrete, ()))
    drifted = np.asarray(distributions.log_prob_parts(
        networks.actor_forward(params["actor"], arch, [obs], ppo._norm_stats(learner._state.normalizer, True)), out.continuous, out.discrete, ()
    ))
    assert np.abs(drifted - expected).max() > 1e-2  # the test can tell the two apart
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4)
