"""JAX networks against the gateway's numpy actor: same names, same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.architecture import PolicyArchitecture, parameter_shapes
from gateway.actor.numpy_policy import NumpyPolicy
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from trainer_server.learning import distributions, networks, normalizer

VECTOR = ObservationSpec("vector", (7,))
CAMERA = ObservationSpec("camera", (3, 36, 40))

CASES = {
    "vector-continuous": (BehaviorSpec("A", (VECTOR, ObservationSpec("extra", (3,))), ActionSpec(2)), "gaussian"),
    "visual-continuous": (BehaviorSpec("B", (CAMERA, VECTOR), ActionSpec(3)), "gaussian"),
    "discrete-masked": (BehaviorSpec("C", (VECTOR,), ActionSpec(0, (3, 2, 4))), "gaussian"),
    "hybrid": (BehaviorSpec("D", (VECTOR, CAMERA), ActionSpec(2, (3, 2))), "gaussian"),
    "tanh-gaussian": (BehaviorSpec("E", (VECTOR,), ActionSpec(2, (2,))), "tanh_gaussian"),
}


def _setup(spec, continuous_distribution, n=16, seed=0):
    arch = PolicyArchitecture(spec, hidden_units=32, num_layers=2, normalize=True, continuous_distribution=continuous_distribution)
    params = networks.init_actor(jax.random.PRNGKey(seed), arch)
    rng = np.random.default_rng(seed)
    obs = [
        (rng.random((n, *o.shape)) if o.is_visual else 3.0 + 2.0 * rng.standard_normal((n, *o.shape))).astype(np.float32)
        for o in spec.observations
    ]
    state = normalizer.update(normalizer.init(spec), [jnp.asarray(o) for o in obs], jnp.ones(n, bool))
    mean, var = normalizer.statistics(state)
    flat = {k: np.asarray(v) for k, v in params.items()}
    for k in mean:
        flat[f"normalizer/mean/{k}"] = np.asarray(mean[k])
        flat[f"normalizer/var/{k}"] = np.asarray(var[k])
    mask = None
    if spec.action_spec.mask_size:
        mask = rng.random((n, spec.action_spec.mask_size)) < 0.3
        mask[:, 0] = False  # keep at least one action allowed in the first branch
    return arch, params, (mean, var), flat, obs, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_policy_matches_the_jax_actor(case):
    spec, dist_kind = CASES[case]
    arch, params, norm, flat, obs, mask = _setup(spec, dist_kind)
    assert set(flat) == set(parameter_shapes(arch)), "networks.py and common/architecture.py disagree on names"
    jmask = None if mask is None else jnp.asarray(mask)
    dist = networks.actor_forward(params, arch, [jnp.asarray(o) for o in obs], norm, jmask)
    policy = NumpyPolicy(arch, flat)
    ref = policy.distribution(obs, mask)
    if dist.mu is not None:
        np.testing.assert_allclose(ref["mu"], dist.mu, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ref["log_std"], dist.log_std, rtol=1e-5, atol=1e-5)
    if dist.logits is not None:
        np.testing.assert_allclose(ref["logits"], dist.logits, rtol=1e-5, atol=1e-5)
    # the numpy actor's log-probs are the JAX loss's log-probs of the same actions
    out = policy.act(obs, mask, np.random.default_rng(5))
    log_prob, entropy = distributions.log_prob_and_entropy(
        dist, jnp.asarray(out.continuous), jnp.asarray(out.discrete), spec.action_spec.discrete_branches, dist_kind
    )
    np.testing.assert_allclose(out.log_probs, log_prob, rtol=1e-5, atol=2e-5)
    assert np.isfinite(np.asarray(entropy)).all()
    # and the other way round: JAX samples, numpy evaluates
    sampled = distributions.sample(dist, jax.random.PRNGKey(3), len(obs[0]), spec.action_spec.discrete_branches, dist_kind)
    np.testing.assert_allclose(
        policy.log_prob(obs, mask, np.asarray(sampled.continuous), np.asarray(sampled.discrete)),
        sampled.log_probs,
        rtol=1e-5,
        atol=2e-5,
    )
    # deterministic acting (--inference, --deterministic): the same actions reach the
    # environment, the mean through the same clip or tanh as a sample
    branches = spec.action_spec.discrete_branches
    det = distributions.sample(dist, jax.random.PRNGKey(4), len(obs[0]), branches, dist_kind, deterministic=True)
    ref_det = policy.act(obs, mask, np.random.default_rng(6), deterministic=True)
    env = distributions.env_continuous(det.continuous, dist_kind)
    np.testing.assert_allclose(ref_det.env_continuous, env, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ref_det.discrete, det.discrete)
    np.testing.assert_allclose(ref_det.log_probs, det.log_probs, rtol=1e-5, atol=2e-5)


def test_jax_sampling_never_picks_masked_actions():
    spec = BehaviorSpec("M", (VECTOR,), ActionSpec(0, (3, 4)))
    arch = PolicyArchitecture(spec, hidden_units=8, num_layers=1)
    params = networks.init_actor(jax.random.PRNGKey(0), arch)
    params["policy/logits/bias"] = jnp.array([6.0, 0, 0, 0, 0, 6.0, 6.0])  # masked ones are the favourites
    n = 4000
    obs = [jnp.asarray(np.random.default_rng(0).standard_normal((n, 7)), jnp.float32)]
    mask = np.zeros((n, 7), bool)
    mask[:, 0] = True
    mask[:, 5:7] = True
    dist = networks.actor_forward(params, arch, obs, None, jnp.asarray(mask))
    out = distributions.sample(dist, jax.random.PRNGKey(1), n, (3, 4))
    d = np.asarray(out.discrete)
    assert not (d[:, 0] == 0).any()
    assert not np.isin(d[:, 1], [2, 3]).any()
    assert set(np.unique(d[:, 1])) == {0, 1}
    assert np.isfinite(np.asarray(out.log_probs)).all()


def test_critic_is_separate_unless_shared():
    spec = BehaviorSpec("V", (VECTOR,), ActionSpec(1))
    arch = PolicyArchitecture(spec, hidden_units=16, num_layers=2)
    actor = networks.init_actor(jax.random.PRNGKey(0), arch)
    critic = networks.init_critic(jax.random.PRNGKey(1), arch)
    assert all(k.startswith("critic/") for k in critic) and "critic/body/dense1/kernel" in critic
    obs = [jnp.ones((5, 7))]
    assert networks.critic_forward(actor, critic, arch, obs, None).shape == (5,)
    shared = networks.init_critic(jax.random.PRNGKey(1), arch, shared_critic=True)
    assert sorted(shared) == ["critic/value/bias", "critic/value/kernel"]
    assert networks.critic_forward(actor, shared, arch, obs, None, shared_critic=True).shape == (5,)


def test_q_critic_has_its_own_encoders_and_reads_the_action():
    spec = BehaviorSpec("Q", (CAMERA, VECTOR), ActionSpec(2, (3, 2)))
    arch = PolicyArchitecture(spec, hidden_units=16, num_layers=2, continuous_distribution="tanh_gaussian")
    params = networks.init_q_critic(jax.random.key(0), arch)
    assert all(k.startswith("critic/") for k in params) and "critic/encoder/0/conv0/kernel" in params
    assert params["critic/body/dense0/kernel"].shape[0] == 16 + 7 + 2  # [visual encoding, vector, action]
    rng = np.random.default_rng(0)
    obs = [jnp.asarray(rng.random((5, 3, 36, 40)), jnp.float32), jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)]
    q = networks.q_critic_forward(params, arch, obs, None, jnp.zeros((5, 2)))
    assert q.shape == (5, networks.q_outputs(arch)) == (5, 5)
    assert not np.allclose(q, networks.q_critic_forward(params, arch, obs, None, jnp.ones((5, 2))))


def test_tanh_gaussian_rsample_matches_the_log_prob_of_its_raw_sample():
    rng = np.random.default_rng(1)
    mu = jnp.asarray(rng.standard_normal((64, 2)), jnp.float32)
    log_std = jnp.asarray(rng.uniform(-1.0, 0.5, (64, 2)), jnp.float32)
    key = jax.random.key(7)
    action, log_prob = distributions.tanh_gaussian_rsample(mu, log_std, key)
    u = mu + jnp.exp(log_std) * jax.random.normal(key, mu.shape)  # the same draw
    np.testing.assert_allclose(action, jnp.tanh(u), rtol=1e-6, atol=1e-6)
    reference, _ = distributions.log_prob_and_entropy(
        distributions.DistParams(mu, log_std, None), u, jnp.zeros((64, 0), jnp.int32), (), "tanh_gaussian"
    )
    np.testing.assert_allclose(log_prob, reference, rtol=1e-3, atol=1e-3)  # TANH_EPS vs the exact form


def test_initialization_uses_ml_agents_linear_kaiming_gains():
    """ML-Agents' linear_layer: torch kaiming_normal_(nonlinearity="linear") -> std 1/sqrt(fan_in),
    times the layer's gain; a ReLU factor sqrt(2) would show as a 41 % larger spread."""
    from common.architecture import PolicyArchitecture
    from common.specs import ActionSpec, BehaviorSpec, ObservationSpec

    spec = BehaviorSpec("Init", (ObservationSpec("v", (400,)),), ActionSpec(300, (200,)))
    for distribution, extra in (("gaussian", {}), ("tanh_gaussian", {"policy/log_std/kernel": 0.2})):
        arch = PolicyArchitecture(spec, hidden_units=256, num_layers=2, normalize=False, vis_encode_type="simple",
                                  continuous_distribution=distribution)
        params = networks.init_actor(jax.random.key(0), arch)
        gains = {"body/dense0/kernel": 1.0, "body/dense1/kernel": 1.0, "policy/mu/kernel": 0.2, "policy/logits/kernel": 0.1, **extra}
        for name, gain in gains.items():
            kernel = np.asarray(params[name])
            expected = gain / np.sqrt(kernel.shape[0])
            assert abs(kernel.std() / expected - 1.0) < 0.03, (distribution, name, kernel.std(), expected)


def test_memory_adds_ml_agents_lstm_to_actor_and_critic():
    """ML-Agents' LSTM: m/2 units, Xavier-uniform per gate block, forget bias 1 on each of
    torch's two biases (2 in the summed bias); heads and value read the hidden output."""
    from common.architecture import parameter_shapes

    spec = BehaviorSpec("Mem", (VECTOR,), ActionSpec(2, (3,)))
    arch = PolicyArchitecture(spec, hidden_units=64, num_layers=2, memory_size=128, sequence_length=8)
    actor = networks.init_actor(jax.random.key(0), arch)
    assert {k: v.shape for k, v in actor.items()} == parameter_shapes(arch)
    assert actor["lstm/kernel"].shape == (64, 256) and actor["policy/mu/kernel"].shape == (64, 2)
    bias = np.asarray(actor["lstm/bias"])
    assert (bias[64:128] == 2.0).all() and not bias[:64].any() and not bias[128:].any()
    for name, fan_in in (("lstm/kernel", 64), ("lstm/recurrent_kernel", 64)):
        limit = np.sqrt(6.0 / (fan_in + 64))  # each gate block [64 units, fan_in] of torch's weight
        kernel = np.asarray(actor[name])
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    critic = networks.init_critic(jax.random.key(1), arch)
    assert critic["critic/lstm/kernel"].shape == (64, 256) and critic["critic/value/kernel"].shape == (64, 1)
    assert "critic/lstm/kernel" not in networks.init_critic(jax.random.key(1), arch, shared_critic=True)
    obs = [jnp.ones((6, 7))]
    values = networks.critic_forward(actor, critic, arch, obs, None, memories=jnp.zeros((2, 128)), sequence_length=3)
    assert values.shape == (6,)


def test_encoder_and_attention_initialization_follow_mlagents():
    """Visual dense layers: Kaiming normal with gain 1.41; convolutions: torch's default uniform
    (bound 1 / sqrt(fan_in)); attention layers: ML-Agents' Normal init, std sqrt(0.125 / 128)."""
    spec = BehaviorSpec("I", (ObservationSpec("cam", (3, 84, 84)), ObservationSpec("buffer", (10, 300)), VECTOR), ActionSpec(2))
    arch = PolicyArchitecture(spec, hidden_units=128, num_layers=1, vis_encode_type="nature_cnn")
    params = {k: np.asarray(v) for k, v in networks.init_actor(jax.random.key(0), arch).items()}
    dense = params["encoder/0/dense/kernel"]
    assert abs(dense.std() / (1.41 / np.sqrt(dense.shape[0])) - 1.0) < 0.03
    conv = params["encoder/0/conv2/kernel"]  # 3x3x64 fan-in
    bound = 1.0 / np.sqrt(3 * 3 * 64)
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.95 * bound
    assert np.abs(params["encoder/0/conv2/bias"]).max() <= bound
    for name in ("attention/q/kernel", "attention/out/kernel", "encoder/1/dense/kernel", "attention/self/dense/kernel"):
        assert abs(params[name].std() / np.sqrt(0.125 / 128) - 1.0) < 0.05, name
    assert not params["attention/q/bias"].any()


@pytest.mark.parametrize("encoder", ["nature_cnn", "resnet", "match3", "fully_connected"])
def test_every_encoder_and_the_attention_get_gradients(encoder):
    """Each layer of the visual encoder and of the entity attention is trained: the gradient of a
    loss over the policy's mean reaches every parameter."""
    spec = BehaviorSpec("G", (ObservationSpec("cam", (2, 36, 36)), ObservationSpec("buffer", (4, 3)), VECTOR), ActionSpec(2))
    arch = PolicyArchitecture(spec, hidden_units=16, num_layers=1, vis_encode_type=encoder)
    params = networks.init_actor(jax.random.key(1), arch)
    rng = np.random.default_rng(2)
    buffer = rng.standard_normal((5, 4, 3)).astype(np.float32)
    buffer[:, 3] = 0.0  # one padding row each
    observations = [jnp.asarray(rng.random((5, 2, 36, 36), dtype=np.float32)), jnp.asarray(buffer),
                    jnp.asarray(rng.standard_normal((5, 7)).astype(np.float32))]

    def loss(p):
        return jnp.sum(networks.actor_forward(p, arch, observations, None).mu ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert set(grads) == set(parameter_shapes(arch))
    # the key bias adds the same score to every key of a query: softmax ignores it (zero up to rounding)
    exempt = {"policy/log_std", "attention/k/bias"}
    silent = [name for name, g in grads.items() if not np.any(np.asarray(g)) and name not in exempt]
    assert silent == []


@pytest.mark.parametrize(
    "batch,side,channels,size,stride,outputs",
    [
        (32, 24, 3, 8, 4, 16), (32, 5, 16, 4, 2, 32), (3, 36, 3, 8, 4, 32), (2, 10, 3, 5, 3, 7),
        (4, 22, 35, 3, 1, 144),  # match3's second convolution (stride 1)
        (3, 12, 16, 3, 1, 32),  # resnet's 3x3 convolutions take a padded image at stride 1
    ],
)
def test_strided_convolution_gradients_match_xla_s_own(batch, side, channels, size, stride, outputs):
    # the kernel gradient is taken as patches x output gradient (a faster route on the CPU):
    # both gradients must equal the ones JAX derives from the convolution itself
    key = jax.random.key(stride)
    x = jax.random.normal(key, (batch, side, side, channels))
    kernel = jax.random.normal(jax.random.fold_in(key, 1), (size, size, channels, outputs))

    def loss(conv):
        return lambda image, w: jnp.sum(jnp.sin(conv(image, w, stride)))

    ours = jax.jit(jax.grad(loss(networks._strided_conv), (0, 1)))(x, kernel)
    xla = jax.jit(jax.grad(loss(networks._strided_conv_primal), (0, 1)))(x, kernel)
    for got, want in zip(ours, xla):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
