"""NumpyPolicy: the gateway's CPU actor (pure numpy, checked against slow references)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from common.architecture import ATTENTION_HEADS, PolicyArchitecture, make_snapshot, parameter_shapes
from gateway.actor.numpy_policy import NumpyPolicy, conv2d_valid, entity_attention, visual_encoding
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec


def _random_params(arch: PolicyArchitecture, rng: np.random.Generator) -> dict[str, np.ndarray]:
    params = {}
    for name, shape in parameter_shapes(arch).items():
        if name.startswith("normalizer/var"):
            params[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            params[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return params


def _spec(continuous=2, branches=(), visual=False) -> BehaviorSpec:
    obs = [ObservationSpec("vector", (6,))]
    if visual:
        obs.append(ObservationSpec("camera", (3, 24, 28)))
    return BehaviorSpec("Test?team=0", tuple(obs), ActionSpec(continuous, tuple(branches)))


def test_conv_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 13, 11, 3)).astype(np.float32)
    k = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    out = conv2d_valid(x, k, b, stride=2)
    oh, ow = (13 - 4) // 2 + 1, (11 - 3) // 2 + 1
    assert out.shape == (2, oh, ow, 5)
    ref = np.zeros_like(out)
    for n in range(2):
        for i in range(oh):
            for j in range(ow):
                patch = x[n, 2 * i : 2 * i + 4, 2 * j : 2 * j + 3, :]
                ref[n, i, j] = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2])) + b
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_masked_actions_are_never_sampled():
    rng = np.random.default_rng(1)
    arch = PolicyArchitecture(_spec(continuous=0, branches=(3, 4)), hidden_units=8, num_layers=1)
    params = _random_params(arch, rng)
    params["policy/logits/bias"] = np.array([5, 0, 0, 0, 3, 0, 0], np.float32)  # favours masked ones
    policy = NumpyPolicy(arch, params)
    n = 2000
    obs = [rng.standard_normal((n, 6)).astype(np.float32)]
    mask = np.zeros((n, 7), bool)
    mask[:, 0] = True  # branch 0: action 0 forbidden
    mask[: n // 2, 4:7] = True  # branch 1 (columns 3..6): only action 0 allowed for half the agents
    out = policy.act(obs, mask, rng)
    assert out.discrete.dtype == np.int32 and out.discrete.shape == (n, 2)
    assert not (out.discrete[:, 0] == 0).any()
    assert (out.discrete[: n // 2, 1] == 0).all()
    assert set(np.unique(out.discrete[n // 2 :, 1])) == {0, 1, 2, 3}  # unmasked: all are sampled
    # an allowed action with a tiny probability still has a finite log-prob
    assert np.isfinite(out.log_probs).all()
    det = policy.act(obs, mask, rng, deterministic=True)
    assert not (det.discrete[:, 0] == 0).any()


def test_gaussian_log_prob_and_environment_clipping():
    rng = np.random.default_rng(2)
    arch = PolicyArchitecture(_spec(continuous=2), hidden_units=8, num_layers=2, normalize=True)
    params = _random_params(arch, rng)
    params["policy/log_std"] = np.array([0.5, 1.5], np.float32)  # wide: some samples beyond +-3
    policy = NumpyPolicy(arch, params)
    obs = [rng.standard_normal((500, 6)).astype(np.float32)]
    out = policy.act(obs, None, rng)
    np.testing.assert_allclose(out.env_continuous, np.clip(out.continuous, -3, 3) / 3, rtol=1e-6)
    assert np.abs(out.continuous).max() > 3 and np.abs(out.env_continuous).max() <= 1
    dist = policy.distribution(obs)
    std = np.exp(dist["log_std"])
    ref = np.sum(-0.5 * ((out.continuous - dist["mu"]) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi), axis=1)
    np.testing.assert_allclose(out.log_probs, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(policy.log_prob(obs, None, out.continuous, out.discrete), ref, rtol=1e-4, atol=1e-4)
    det = policy.act(obs, None, rng, deterministic=True)
    np.testing.assert_allclose(det.continuous, dist["mu"], rtol=1e-6)


def test_tanh_gaussian_squashes_and_corrects_the_log_prob():
    rng = np.random.default_rng(3)
    arch = PolicyArchitecture(_spec(continuous=3), hidden_units=8, num_layers=1, continuous_distribution="tanh_gaussian")
    params = _random_params(arch, rng)
    assert "policy/log_std/kernel" in params and "policy/log_std" not in params
    policy = NumpyPolicy(arch, params)
    obs = [rng.standard_normal((50, 6)).astype(np.float32)]
    out = policy.act(obs, None, rng)
    np.testing.assert_allclose(out.env_continuous, np.tanh(out.continuous), rtol=1e-6)
    gaussian = NumpyPolicy(
        PolicyArchitecture(arch.behavior_spec, 8, 1),
        {**params, "policy/log_std": np.zeros(3, np.float32)},
    )
    dist = policy.distribution(obs)
    z = (out.continuous - dist["mu"]) / np.exp(dist["log_std"])
    ref = np.sum(-0.5 * z * z - dist["log_std"] - 0.5 * math.log(2 * math.pi), axis=1)
    ref -= np.sum(np.log(1 - np.tanh(out.continuous) ** 2 + 1e-6), axis=1)
    np.testing.assert_allclose(out.log_probs, ref, rtol=1e-4, atol=1e-4)
    assert gaussian.architecture.continuous_distribution == "gaussian"


def test_tanh_gaussian_deterministic_action_is_the_squashed_mean():
    """SAC acting deterministically sends tanh(mean), in [-1, 1] like its samples (not the raw mean)."""
    rng = np.random.default_rng(4)
    arch = PolicyArchitecture(_spec(continuous=3), hidden_units=8, num_layers=1, continuous_distribution="tanh_gaussian")
    params = _random_params(arch, rng)
    params["policy/mu/bias"] = np.array([3.0, -2.0, 0.4], np.float32)  # means beyond [-1, 1]
    policy = NumpyPolicy(arch, params)
    obs = [rng.standard_normal((20, 6)).astype(np.float32)]
    mu = policy.distribution(obs)["mu"]
    assert (np.abs(mu) > 1.0).any()
    det = policy.act(obs, None, rng, deterministic=True)
    np.testing.assert_allclose(det.continuous, mu, rtol=1e-6)  # the raw action the trajectory keeps
    np.testing.assert_allclose(det.env_continuous, np.tanh(mu), rtol=1e-6)  # what the environment gets
    assert np.all(np.abs(det.env_continuous) < 1.0)
    np.testing.assert_allclose(det.log_probs, policy.log_prob(obs, None, det.continuous, det.discrete), rtol=1e-4, atol=1e-4)


def test_snapshot_round_trip_and_clear_errors():
    rng = np.random.default_rng(4)
    arch = PolicyArchitecture(_spec(continuous=1, branches=(2,), visual=True), hidden_units=16, num_layers=2, normalize=True)
    params = _random_params(arch, rng)
    snapshot = make_snapshot(arch.behavior_spec.name, 7, arch, params, time_horizon=64)
    policy = NumpyPolicy.from_snapshot(snapshot)
    assert policy.architecture == arch
    n = 4
    obs = [rng.standard_normal((n, 6)).astype(np.float32), rng.random((n, 3, 24, 28)).astype(np.float32)]
    out = policy.act(obs, np.zeros((n, 2), bool), rng)
    assert out.continuous.shape == (n, 1) and out.discrete.shape == (n, 1) and out.log_probs.shape == (n,)
    # the proto form round-trips to the same architecture
    assert PolicyArchitecture.from_proto(arch.to_proto()) == arch
    with pytest.raises(ValueError, match="missing.*body/dense1/kernel"):
        NumpyPolicy(arch, {k: v for k, v in params.items() if k != "body/dense1/kernel"})
    with pytest.raises(ValueError, match="policy/mu/kernel: shape"):
        NumpyPolicy(arch, {**params, "policy/mu/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="not supported yet"):
        PolicyArchitecture(arch.behavior_spec, 16, 2, vis_encode_type="inception")
    with pytest.raises(ValueError, match="at least 20x20"):
        PolicyArchitecture(BehaviorSpec("S", (ObservationSpec("cam", (1, 10, 10)),), ActionSpec(1)), 8, 1)
    with pytest.raises(ValueError, match="action_mask: shape"):
        policy.act(obs, np.zeros((n, 3), bool), rng)


def test_numpy_policy_module_does_not_import_jax():
    code = "import sys, gateway.actor.numpy_policy; sys.exit(1 if 'jax' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _reference_lstm(x, h, c, kernel, recurrent, bias):
    """torch.nn.LSTM's cell for one agent, element by element (gates i, f, g, o)."""
    half = len(h)
    gates = [sum(x[k] * kernel[k, j] for k in range(len(x))) + sum(h[k] * recurrent[k, j] for k in range(half)) + bias[j]
             for j in range(4 * half)]
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    new_c = [sig(gates[half + j]) * c[j] + sig(gates[j]) * math.tanh(gates[2 * half + j]) for j in range(half)]
    new_h = [sig(gates[3 * half + j]) * math.tanh(new_c[j]) for j in range(half)]
    return new_h, new_c


def test_memory_lstm_matches_a_reference_cell_over_steps_and_starts_from_zeros():
    rng = np.random.default_rng(5)
    arch = PolicyArchitecture(_spec(continuous=1, branches=(3,)), hidden_units=6, num_layers=1, memory_size=8, sequence_length=4)
    params = _random_params(arch, rng)
    snapshot = make_snapshot(arch.behavior_spec.name, 1, arch, params)
    policy = NumpyPolicy.from_snapshot(snapshot)
    assert policy.architecture == arch and policy.memory_size == 8
    n = 3
    h = [[0.0] * 4 for _ in range(n)]
    c = [[0.0] * 4 for _ in range(n)]
    memories = None  # an episode start: zeros
    for step in range(4):
        obs = [rng.standard_normal((n, 6)).astype(np.float32)]
        body = policy.hidden(obs)
        out = policy.act(obs, None, rng, memories=memories)
        for a in range(n):
            h[a], c[a] = _reference_lstm(body[a], h[a], c[a], params["lstm/kernel"], params["lstm/recurrent_kernel"], params["lstm/bias"])
            np.testing.assert_allclose(out.memories[a], h[a] + c[a], atol=1e-5)
        # the heads read the LSTM's hidden output, and the log-prob uses the same memories
        logits = np.asarray(h, np.float32) @ params["policy/logits/kernel"] + params["policy/logits/bias"]
        np.testing.assert_allclose(policy.distribution(obs, None, memories)["logits"], logits, atol=1e-5)
        np.testing.assert_allclose(policy.log_prob(obs, None, out.continuous, out.discrete, memories), out.log_probs, atol=1e-4)
        memories = out.memories
    np.testing.assert_array_equal(policy.act(obs, None, rng, memories=None).memories,
                                  policy.act(obs, None, rng, memories=np.zeros((n, 8), np.float32)).memories)
    with pytest.raises(ValueError, match=r"memories: shape \(3, 6\), expected \(3, 8\)"):
        policy.act(obs, None, rng, memories=np.zeros((n, 6), np.float32))
    with pytest.raises(ValueError, match="memory_size: must be even"):
        PolicyArchitecture(arch.behavior_spec, 6, 1, memory_size=7, sequence_length=4)


def test_a_sac_memory_snapshot_acts_with_each_agents_memory_reset_at_its_episode_start():
    """SAC's snapshot with memory (tanh-squashed Gaussian and a branch, ``lstm/...``): the
    actor keeps a memory per agent (``AgentMemories``), an agent starting an episode acts
    from zeros, and the squashed means follow the LSTM reference cell."""
    from gateway.actor.memories import AgentMemories

    rng = np.random.default_rng(11)
    arch = PolicyArchitecture(_spec(continuous=2, branches=(3,)), hidden_units=6, num_layers=1, memory_size=8,
                              sequence_length=4, continuous_distribution="tanh_gaussian")
    params = _random_params(arch, rng)
    policy = NumpyPolicy.from_snapshot(make_snapshot(arch.behavior_spec.name, 2, arch, params))
    assert policy.architecture == arch and policy.memory_size == 8
    memories = AgentMemories(policy.memory_size)
    ids = np.array([3, 7, 9])
    h = {a: [0.0] * 4 for a in ids.tolist()}
    c = {a: [0.0] * 4 for a in ids.tolist()}
    for step in range(5):
        if step == 3:  # agent 7's episode ended: its next step starts from zeros
            memories.forget(np.array([7]))
            h[7], c[7] = [0.0] * 4, [0.0] * 4
        obs = [rng.standard_normal((3, 6)).astype(np.float32)]
        before = memories.take(ids)
        out = policy.act(obs, None, rng, deterministic=True, memories=before)
        memories.keep(ids, out.memories)
        body = policy.hidden(obs)
        for k, a in enumerate(ids.tolist()):
            np.testing.assert_allclose(before[k], h[a] + c[a], atol=1e-5)
            h[a], c[a] = _reference_lstm(body[k], h[a], c[a], params["lstm/kernel"], params["lstm/recurrent_kernel"], params["lstm/bias"])
            mu = np.asarray(h[a], np.float32) @ params["policy/mu/kernel"] + params["policy/mu/bias"]
            np.testing.assert_allclose(out.env_continuous[k], np.tanh(mu), atol=1e-5)  # SAC: the squashed mean
    assert len(memories) == 3


def _torch_like_resnet(p: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
    """ML-Agents' ResNet encoder written out by loops over NCHW arrays (a slow reference)."""

    def conv(x, name, pad):
        k = p[f"{name}/kernel"]  # HWIO
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        kh, kw, _, o = k.shape
        oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
        out = np.zeros((x.shape[0], o, oh, ow), np.float64)
        for i in range(oh):
            for j in range(ow):
                out[:, :, i, j] = np.einsum("nchw,hwco->no", x[:, :, i : i + kh, j : j + kw], k)
        return out + p[f"{name}/bias"][None, :, None, None]

    def pool(x):
        oh, ow = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
        return np.array([[x[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(2, 3)) for j in range(ow)] for i in range(oh)]).transpose(2, 3, 0, 1)

    def swish(x):
        return 0.5 * x * (1.0 + np.tanh(0.5 * x))

    x = image.astype(np.float64)
    for s in range(3):
        x = pool(conv(x, f"e/stack{s}/conv", 1))
        for b in range(2):
            x = x + conv(swish(conv(swish(x), f"e/stack{s}/block{b}/conv0", 1)), f"e/stack{s}/block{b}/conv1", 1)
    flat = swish(x).transpose(0, 2, 3, 1).reshape(x.shape[0], -1)  # HWC order, as Tandem's dense reads it
    return np.maximum(flat @ p["e/dense/kernel"] + p["e/dense/bias"], 0.0)


def test_resnet_encoder_matches_a_loop_reference():
    from common.architecture import visual_encoder_shapes

    rng = np.random.default_rng(7)
    shapes = visual_encoder_shapes("resnet", (2, 17, 15), 8)
    p = {f"e/{k}": (0.3 * rng.standard_normal(v)).astype(np.float32) for k, v in shapes.items()}
    image = rng.random((3, 2, 17, 15)).astype(np.float32)
    out = visual_encoding(p, "e", "resnet", image)
    assert out.shape == (3, 8)
    np.testing.assert_allclose(out, _torch_like_resnet(p, image), rtol=1e-4, atol=1e-4)


def test_attention_equals_plain_attention_over_the_real_entities_only():
    """Masking padded entities (ML-Agents' -1e6 scores and masked mean) is the same as running
    unmasked attention, agent by agent, over its real entities alone (a float64 reference)."""
    rng = np.random.default_rng(8)
    spec = BehaviorSpec("S", (ObservationSpec("v", (3,)), ObservationSpec("buffer", (5, 4))), ActionSpec(2))
    arch = PolicyArchitecture(spec, hidden_units=8, num_layers=1)
    p = _random_params(arch, rng)
    n = 6
    self_encoding = rng.standard_normal((n, 3)).astype(np.float32)
    entities = rng.standard_normal((n, 5, 4)).astype(np.float32)
    counts = np.array([1, 2, 3, 4, 5, 5])
    for a in range(n):
        entities[a, counts[a]:] = 0.0
    out = entity_attention(p, [1], self_encoding, [self_encoding, entities])

    def dense(x, name):
        return x @ p[f"{name}/kernel"].astype(np.float64) + p[f"{name}/bias"]

    def norm(x):
        c = x - x.mean(-1, keepdims=True)
        return c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5)

    def swish(x):
        return 0.5 * x * (1.0 + np.tanh(0.5 * x))

    for a in range(n):
        own = swish(dense(self_encoding[a : a + 1].astype(np.float64), "attention/self/dense"))
        real = entities[a, : counts[a]].astype(np.float64)
        x = norm(swish(dense(np.concatenate([np.repeat(own, len(real), 0), real], 1), "encoder/1/dense")))
        heads = []
        for h in range(ATTENTION_HEADS):
            cols = slice(32 * h, 32 * (h + 1))
            q, k, v = (dense(x, f"attention/{w}")[:, cols] for w in "qkv")
            scores = q @ k.T / np.sqrt(128.0)
            weights = np.exp(scores - scores.max(1, keepdims=True))
            heads.append((weights / weights.sum(1, keepdims=True)) @ v)
        y = norm(dense(np.concatenate(heads, 1), "attention/out") + x)
        np.testing.assert_allclose(out[a], y.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder", ["resnet", "match3", "nature_cnn", "simple"])
def test_agents_convolved_in_chunks_give_what_all_at_once_gives(encoder, monkeypatch):
    """The cache-sized chunks of agents (``_CONV_CHUNK_FLOATS``) change no output."""
    from common.architecture import visual_encoder_shapes
    from gateway.actor import numpy_policy

    side = 36 if encoder == "nature_cnn" else 20
    rng = np.random.default_rng(4)
    p = {f"e/{k}": (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in visual_encoder_shapes(encoder, (3, side, side), 8).items()}
    image = rng.random((7, 3, side, side), dtype=np.float32)
    whole = visual_encoding(p, "e", encoder, image)
    monkeypatch.setattr(numpy_policy, "_CONV_CHUNK_FLOATS", side * side * numpy_policy._CHUNK_CHANNELS * 3)  # chunks of 3
    np.testing.assert_allclose(visual_encoding(p, "e", encoder, image), whole, rtol=1e-5, atol=1e-5)
    for k in range(7):  # one agent alone
        np.testing.assert_allclose(visual_encoding(p, "e", encoder, image[k : k + 1]), whole[k : k + 1], rtol=1e-5, atol=1e-5)


def test_strided_convolution_columns_match_a_loop_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
    kernel = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    out = conv2d_valid(x, kernel, bias, 2)
    assert out.shape == (2, 3, 5, 5)
    for i in range(3):
        for j in range(5):
            patch = x[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 3, :]
            np.testing.assert_allclose(out[:, i, j], np.einsum("nhwc,hwco->no", patch, kernel) + bias, rtol=1e-5, atol=1e-5)
