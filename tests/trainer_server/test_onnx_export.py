"""The ONNX export follows ML-Agents' model contract and acts like the policy it exports.

Models are run with onnxruntime, the way Unity's inference engine runs them: inputs
``obs_i`` channels-first, ``action_masks`` with 1 = allowed, constant outputs read as
float tensors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common import architecture as arch_mod, specs
from common.architecture import PolicyArchitecture
from gateway.actor.numpy_policy import NumpyPolicy
from trainer_server import onnx_export
from trainer_server.onnx_export import ExportError, export_policy, export_policy_bytes

HIDDEN = 16


def make_architecture(
    observations: list[tuple[int, ...]],
    continuous: int = 0,
    branches: tuple[int, ...] = (),
    distribution: str = "gaussian",
    normalize: bool = True,
    num_layers: int = 2,
    hidden_units: int = HIDDEN,
    vis_encode_type: str = "simple",
) -> PolicyArchitecture:
    spec = specs.BehaviorSpec(
        name="Test?team=0",
        observations=tuple(specs.ObservationSpec(name=f"sensor{i}", shape=s) for i, s in enumerate(observations)),
        action_spec=specs.ActionSpec(continuous_size=continuous, discrete_branches=branches),
    )
    return PolicyArchitecture(
        behavior_spec=spec,
        hidden_units=hidden_units,
        num_layers=num_layers,
        normalize=normalize,
        vis_encode_type=vis_encode_type,
        continuous_distribution=distribution,
    )


def random_params(arch: PolicyArchitecture, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters with the reference's names and shapes, scaled to give varied actions."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in arch_mod.parameter_shapes(arch).items():
        if name.startswith("normalizer/var/"):
            value = rng.uniform(0.2, 3.0, shape)
        elif name.startswith("normalizer/mean/"):
            value = rng.normal(0.0, 1.0, shape)
        elif name == "policy/log_std":
            value = rng.normal(-0.5, 0.3, shape)
        elif name.endswith("/kernel"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
            if name == "policy/logits/kernel":
                value *= 3  # sharper, so that argmax is well separated
        else:
            value = rng.normal(0.0, 0.1, shape)
        params[name] = value.astype(np.float32)
    return params


def random_inputs(
    arch: PolicyArchitecture, batch: int, seed: int = 1, masks: np.ndarray | None = None
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Observations as the trainer sees them and the feed Unity would give: both channels-first."""
    rng = np.random.default_rng(seed)
    spec = arch.behavior_spec
    observations, feed = [], {}
    for i, obs in enumerate(spec.observations):
        if len(obs.shape) == 1:
            x = rng.normal(0, 2, (batch, *obs.shape)).astype(np.float32)
            feed[f"obs_{i}"] = x
        elif len(obs.shape) == 2:
            # BufferSensor-like: a varying number of entities, the rest all-zero padding rows
            x = rng.normal(0, 1, (batch, *obs.shape)).astype(np.float32)
            x[np.arange(obs.shape[0])[None, :] >= rng.integers(1, obs.shape[0] + 1, (batch, 1))] = 0.0
            feed[f"obs_{i}"] = x
        else:
            x = rng.uniform(0, 1, (batch, *obs.shape)).astype(np.float32)
            feed[f"obs_{i}"] = x
        observations.append(x)
    if spec.action_spec.discrete_branches:
        allowed = np.ones((batch, spec.action_spec.mask_size), np.float32) if masks is None else masks
        feed["action_masks"] = allowed
    return observations, feed


def session(arch: PolicyArchitecture, params: dict[str, np.ndarray]) -> ort.InferenceSession:
    return ort.InferenceSession(export_policy_bytes(arch, params), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


BEHAVIORS = {
    # 3DBall-like: one vector observation, continuous actions (PPO)
    "vector_continuous": dict(observations=[(8,)], continuous=2),
    # a camera plus a vector, continuous actions (PPO)
    "visual": dict(observations=[(3, 36, 40), (5,)], continuous=3),
    # GridWorld-like: discrete branches with action masks
    "discrete_masks": dict(observations=[(6,), (4,)], branches=(3, 2, 4)),
    # hybrid actions, camera and vector, SAC's tanh-squashed Gaussian
    "hybrid_sac": dict(observations=[(7,), (1, 40, 36)], continuous=2, branches=(5,), distribution="tanh_gaussian"),
    # hybrid with a single branch and a single layer, not normalized
    "hybrid_ppo": dict(observations=[(9,)], continuous=1, branches=(2,), normalize=False, num_layers=1),
    # every other visual encoder of ML-Agents, at a size each accepts (nature_cnn needs 36)
    "nature_cnn": dict(observations=[(3, 36, 40), (5,)], continuous=2, vis_encode_type="nature_cnn"),
    "resnet": dict(observations=[(2, 20, 17)], continuous=2, branches=(3,), vis_encode_type="resnet"),
    "match3": dict(observations=[(4, 6, 7)], branches=(4, 2), vis_encode_type="match3"),
    "fully_connected": dict(observations=[(3, 5, 4), (3,)], continuous=2, vis_encode_type="fully_connected"),
    # variable-length observations (Sorter-like): attention over entities plus a vector
    "attention": dict(observations=[(4,), (6, 5)], continuous=2, branches=(3,)),
    # two entity buffers and a camera, no vector; SAC
    "attention_visual": dict(observations=[(3, 3), (1, 20, 20), (5, 2)], continuous=1, distribution="tanh_gaussian"),
    # only entities: no self encoding to condition them on
    "attention_only": dict(observations=[(7, 4)], branches=(5,)),
}


@pytest.fixture(params=sorted(BEHAVIORS))
def behavior(request) -> tuple[PolicyArchitecture, dict[str, np.ndarray]]:
    arch = make_architecture(**BEHAVIORS[request.param])
    return arch, random_params(arch)


def expected_io(arch: PolicyArchitecture) -> tuple[list, list]:
    """The ML-Agents contract: (name, element type, shape) of inputs and outputs, in order."""
    spec = arch.behavior_spec
    inputs = []
    for i, obs in enumerate(spec.observations):
        shape = ["batch", *obs.shape]
        inputs.append((f"obs_{i}", "tensor(float)", shape))
    action = spec.action_spec
    if action.discrete_branches:
        inputs.append(("action_masks", "tensor(float)", ["batch", action.mask_size]))
    outputs = [("version_number", "tensor(float)", [1]), ("memory_size", "tensor(float)", [1])]
    if action.continuous_size:
        outputs += [
            ("continuous_actions", "tensor(float)", ["batch", action.continuous_size]),
            ("continuous_action_output_shape", "tensor(float)", [1]),
            ("deterministic_continuous_actions", "tensor(float)", ["batch", action.continuous_size]),
        ]
    if action.discrete_branches:
        outputs += [
            ("discrete_actions", "tensor(int64)", ["batch", action.num_branches]),
            ("discrete_action_output_shape", "tensor(float)", [1, action.num_branches]),
            ("deterministic_discrete_actions", "tensor(int64)", ["batch", action.num_branches]),
        ]
    return inputs, outputs


def test_inputs_and_outputs_follow_the_mlagents_contract(behavior):
    arch, params = behavior
    sess = session(arch, params)
    want_inputs, want_outputs = expected_io(arch)
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == want_inputs
    assert [(o.name, o.type, o.shape) for o in sess.get_outputs()] == want_outputs


def test_constant_outputs_tell_unity_the_version_memory_and_action_sizes(behavior):
    arch, params = behavior
    action = arch.behavior_spec.action_spec
    _, feed = random_inputs(arch, batch=3)
    out = run(session(arch, params), feed)
    np.testing.assert_array_equal(out["version_number"], np.array([3], np.float32))
    np.testing.assert_array_equal(out["memory_size"], np.array([0], np.float32))
    if action.continuous_size:
        np.testing.assert_array_equal(out["continuous_action_output_shape"], [action.continuous_size])
    else:
        assert "continuous_action_output_shape" not in out
    if action.discrete_branches:
        np.testing.assert_array_equal(out["discrete_action_output_shape"], [list(action.discrete_branches)])
    else:
        assert "discrete_action_output_shape" not in out


def test_model_passes_the_full_onnx_checker_at_the_chosen_opset(behavior):
    arch, params = behavior
    model = onnx.load_from_string(export_policy_bytes(arch, params))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.OPSET)]
    assert model.ir_version == onnx_export.IR_VERSION
    # every op exists in the chosen opset (no newer operator slipped in)
    for node in model.graph.node:
        onnx.defs.get_schema(node.op_type, onnx_export.OPSET)


def test_one_model_serves_batch_sizes_1_and_7(behavior):
    arch, params = behavior
    sess = session(arch, params)
    action = arch.behavior_spec.action_spec
    _, feed7 = random_inputs(arch, batch=7)
    out7 = run(sess, feed7)
    for row in (0, 6):
        out1 = run(sess, {k: v[row : row + 1] for k, v in feed7.items()})
        if action.continuous_size:
            assert out1["continuous_actions"].shape == (1, action.continuous_size)
            np.testing.assert_allclose(
                out1["deterministic_continuous_actions"][0], out7["deterministic_continuous_actions"][row], atol=1e-6
            )
        if action.discrete_branches:
            assert out1["discrete_actions"].shape == (1, action.num_branches)
            np.testing.assert_array_equal(
                out1["deterministic_discrete_actions"][0], out7["deterministic_discrete_actions"][row]
            )


def test_unity_load_check_with_all_zero_inputs_gives_finite_outputs(behavior):
    """Unity runs a freshly loaded model once on zero inputs (zero masks too) to read its constants."""
    arch, params = behavior
    sess = session(arch, params)
    feed = {
        i.name: np.zeros([1 if d == "batch" else d for d in i.shape], np.float32) for i in sess.get_inputs()
    }
    for name, value in run(sess, feed).items():
        assert np.all(np.isfinite(value)), name


def test_masked_discrete_actions_are_never_chosen():
    branches = (4, 3, 5)
    arch = make_architecture([(6,)], branches=branches)
    params = random_params(arch, seed=3)
    sess = session(arch, params)
    batch = 512
    rng = np.random.default_rng(7)
    allowed = (rng.uniform(size=(batch, sum(branches))) < 0.5).astype(np.float32)
    start = 0
    for size in branches:  # keep at least one allowed action per branch
        rows = allowed[:, start : start + size].sum(axis=1) == 0
        allowed[rows, start + rng.integers(0, size, rows.sum())] = 1
        start += size
    _, feed = random_inputs(arch, batch, masks=allowed)
    offsets = np.cumsum((0, *branches[:-1]))
    chosen_counts = np.zeros(sum(branches))
    for _ in range(20):  # 10240 sampled decisions per branch
        out = run(sess, feed)
        for key in ("discrete_actions", "deterministic_discrete_actions"):
            flat = out[key] + offsets  # index into the mask row
            picked = np.take_along_axis(allowed, flat, axis=1)
            assert np.all(picked == 1), f"{key} chose a masked action"
        np.add.at(chosen_counts, (out["discrete_actions"] + offsets).ravel(), 1)
    # sampling really samples: every action allowed somewhere is chosen at some point
    assert np.all(chosen_counts[allowed.any(axis=0)] > 0)


def test_mask_of_one_allowed_action_forces_it():
    arch = make_architecture([(6,)], branches=(5,))
    params = random_params(arch, seed=4)
    batch = 50
    allowed = np.zeros((batch, 5), np.float32)
    only = np.arange(batch) % 5
    allowed[np.arange(batch), only] = 1
    _, feed = random_inputs(arch, batch, masks=allowed)
    out = run(session(arch, params), feed)
    np.testing.assert_array_equal(out["discrete_actions"][:, 0], only)
    np.testing.assert_array_equal(out["deterministic_discrete_actions"][:, 0], only)


def test_sampled_discrete_actions_follow_the_softmax_of_the_logits():
    arch = make_architecture([(3,)], branches=(3,), normalize=False, num_layers=0)
    params = random_params(arch, seed=5)
    params["policy/logits/kernel"] = np.zeros((3, 3), np.float32)
    params["policy/logits/bias"] = np.log(np.array([0.2, 0.5, 0.3], np.float32))
    _, feed = random_inputs(arch, batch=20000)
    actions = run(session(arch, params), feed)["discrete_actions"][:, 0]
    freq = np.bincount(actions, minlength=3) / actions.size
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.02)


@pytest.mark.parametrize("distribution", ["gaussian", "tanh_gaussian"])
def test_sampled_continuous_actions_are_noisy_around_the_deterministic_ones(distribution):
    arch = make_architecture([(4,)], continuous=2, distribution=distribution, normalize=False, num_layers=1)
    params = random_params(arch, seed=6)
    std = np.array([0.05, 0.2], np.float32)
    if distribution == "gaussian":
        params["policy/log_std"] = np.log(std)
    else:
        params["policy/log_std/kernel"] = np.zeros_like(params["policy/log_std/kernel"])
        params["policy/log_std/bias"] = np.log(std)
    params["policy/mu/kernel"] *= 0.1  # keep the mean well inside the clip/tanh range
    _, feed = random_inputs(arch, batch=1)
    feed = {k: np.repeat(v, 20000, axis=0) for k, v in feed.items()}
    out = run(session(arch, params), feed)
    sampled, mode = out["continuous_actions"], out["deterministic_continuous_actions"][0]
    assert np.all(np.abs(sampled) <= 1.0)
    # map back to the Gaussian's space: a = 3 * clip output, or atanh for SAC
    raw = np.arctanh(np.clip(sampled, -0.999999, 0.999999)) if distribution == "tanh_gaussian" else 3 * sampled
    raw_mode = np.arctanh(mode) if distribution == "tanh_gaussian" else 3 * mode
    np.testing.assert_allclose(raw.mean(axis=0), raw_mode, atol=0.01)
    np.testing.assert_allclose(raw.std(axis=0), std, rtol=0.05)


def test_gaussian_actions_are_clipped_to_plus_minus_three_then_scaled():
    arch = make_architecture([(2,)], continuous=2, normalize=False, num_layers=0)
    params = random_params(arch)
    params["policy/mu/kernel"] = np.zeros((2, 2), np.float32)
    params["policy/mu/bias"] = np.array([10.0, -1.5], np.float32)
    params["policy/log_std"] = np.array([-20.0, -20.0], np.float32)
    _, feed = random_inputs(arch, batch=2)
    out = run(session(arch, params), feed)
    np.testing.assert_allclose(out["deterministic_continuous_actions"], [[1.0, -0.5]] * 2, atol=1e-6)
    np.testing.assert_allclose(out["continuous_actions"], [[1.0, -0.5]] * 2, atol=1e-6)


def test_export_policy_writes_the_same_model_to_a_file(tmp_path):
    arch = make_architecture([(8,)], continuous=2)
    params = random_params(arch)
    path = tmp_path / "results" / "run" / "3DBall" / "3DBall-5000.onnx"
    export_policy(arch, params, path)
    assert path.read_bytes() == export_policy_bytes(arch, params)
    assert [p.name for p in path.parent.iterdir()] == ["3DBall-5000.onnx"]  # no temporary left behind
    onnx.checker.check_model(str(path), full_check=True)
    export_policy(arch, params, path)  # overwriting an existing model works
    assert path.read_bytes() == export_policy_bytes(arch, params)


def _match(message: str) -> str:
    return message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("body/dense1/kernel"), "missing 'body/dense1/kernel'"),
        (lambda p: p.update({"policy/mu/bias": np.zeros(5, np.float32)}), "params['policy/mu/bias']: shape"),
        (lambda p: p.update({"normalizer/var/0": -np.ones(8, np.float32)}), "normalizer/var/0"),
        (lambda p: p.update({"policy/log_std": np.full(2, np.nan, np.float32)}), "NaN"),
    ],
)
def test_bad_params_raise_a_clear_error(mutate, message):
    arch = make_architecture([(8,)], continuous=2)
    params = random_params(arch)
    mutate(params)
    with pytest.raises(ExportError, match=_match(message)):
        export_policy_bytes(arch, params)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: setattr(a, "continuous_distribution", "beta"), "continuous_distribution"),
        (lambda a: setattr(a, "vis_encode_type", "bogus"), "vis_encode_type"),
        (lambda a: a.behavior_spec.ClearField("name"), "behavior_spec.name"),
        (lambda a: a.behavior_spec.observations[0].shape.extend([2, 2, 2]), "only vector"),
    ],
)
def test_an_architecture_the_exporter_cannot_take_is_refused_with_a_clear_error(mutate, message):
    """The exporter takes a ``PolicyArchitecture`` only: a bad one is refused when it is built
    (here from the wire form a gateway receives), so no export ever sees it."""
    wire = make_architecture([(8,)], continuous=2).to_proto()
    mutate(wire)
    with pytest.raises(ValueError, match=_match(message)):
        PolicyArchitecture.from_proto(wire)


def test_too_small_image_for_the_simple_encoder_is_refused():
    with pytest.raises(ValueError, match="needs at least 20x20"):
        make_architecture([(3, 10, 10)], continuous=1)


@pytest.mark.parametrize(("encoder", "minimum"), sorted(arch_mod.MIN_VISUAL_SIZE.items()))
def test_each_encoder_takes_its_minimum_image_and_refuses_a_smaller_one_naming_it(encoder, minimum):
    """ML-Agents' minimum sides (ModelUtils.MIN_RESOLUTION_FOR_ENCODER): the smallest image gives
    a working model; one pixel less is refused when the architecture is built, naming the sensor."""
    arch = make_architecture([(2, minimum, minimum + 3)], continuous=2, vis_encode_type=encoder)
    params = random_params(arch)
    observations, feed = random_inputs(arch, batch=3)
    out = run(session(arch, params), feed)
    want = NumpyPolicy(arch, params).act(observations, None, np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(out["deterministic_continuous_actions"], want.env_continuous, atol=1e-5, rtol=0)
    if minimum > 1:
        with pytest.raises(ValueError, match=f"observation 0 \\('sensor0'\\) is {minimum - 1}x{minimum + 3}; vis_encode_type {encoder} needs at least {minimum}x{minimum}"):
            make_architecture([(2, minimum - 1, minimum + 3)], continuous=2, vis_encode_type=encoder)


ENCODER_LAYERS = {
    # (name relative to encoder/0, shape) of every layer at a 3x84x84 image, hidden 16
    "simple": {"conv0/kernel": (8, 8, 3, 16), "conv1/kernel": (4, 4, 16, 32), "dense/kernel": (9 * 9 * 32, 16)},
    "nature_cnn": {
        "conv0/kernel": (8, 8, 3, 32), "conv1/kernel": (4, 4, 32, 64), "conv2/kernel": (3, 3, 64, 64),
        "dense/kernel": (7 * 7 * 64, 16),
    },
    "match3": {"conv0/kernel": (3, 3, 3, 35), "conv1/kernel": (3, 3, 35, 144), "dense/kernel": (80 * 80 * 144, 16)},
    "fully_connected": {"dense/kernel": (84 * 84 * 3, 16)},
    # 84 -> pool 41 -> 20 -> 9, 32 channels
    "resnet": {
        "stack0/conv/kernel": (3, 3, 3, 16), "stack0/block1/conv1/kernel": (3, 3, 16, 16),
        "stack1/conv/kernel": (3, 3, 16, 32), "stack2/block0/conv0/kernel": (3, 3, 32, 32),
        "dense/kernel": (9 * 9 * 32, 16),
    },
}


@pytest.mark.parametrize("encoder", sorted(ENCODER_LAYERS))
def test_encoder_layer_shapes_follow_mlagents(encoder):
    shapes = arch_mod.parameter_shapes(make_architecture([(3, 84, 84)], continuous=1, vis_encode_type=encoder))
    for name, shape in ENCODER_LAYERS[encoder].items():
        assert shapes[f"encoder/0/{name}"] == shape
    convs = [n for n in shapes if n.startswith("encoder/0/") and n.endswith("/kernel") and "dense" not in n]
    assert len(convs) == {"simple": 2, "nature_cnn": 3, "match3": 2, "fully_connected": 0, "resnet": 3 * 5}[encoder]


def test_attention_layer_shapes_follow_mlagents():
    """Entity embedding over [self embedding, entity], fixed width 128, q/k/v/out projections."""
    shapes = arch_mod.parameter_shapes(make_architecture([(4,), (6, 5)], continuous=2))
    assert shapes["attention/self/dense/kernel"] == (4, 128)
    assert shapes["encoder/1/dense/kernel"] == (128 + 5, 128)
    for name in ("q", "k", "v", "out"):
        assert shapes[f"attention/{name}/kernel"] == (128, 128)
    assert shapes["body/dense0/kernel"] == (4 + 128, HIDDEN)
    alone = arch_mod.parameter_shapes(make_architecture([(6, 5)], continuous=2))
    assert "attention/self/dense/kernel" not in alone and alone["encoder/0/dense/kernel"] == (5, 128)


@pytest.mark.parametrize("name", ["attention", "attention_visual"])
def test_attention_is_invariant_to_entity_order_and_to_padding(name):
    """Permuting the entities of a buffer, or adding padding rows, changes nothing (ONNX and numpy)."""
    arch = make_architecture(**BEHAVIORS[name])
    params = random_params(arch, seed=3)
    observations, feed = random_inputs(arch, batch=16, seed=4)
    policy = NumpyPolicy(arch, params)
    base = policy.distribution(observations)
    base_onnx = run(session(arch, params), feed)
    rng = np.random.default_rng(5)
    shuffled = [o[:, rng.permutation(o.shape[1])] if o.ndim == 3 else o for o in observations]
    assert any(not np.array_equal(a, b) for a, b in zip(shuffled, observations))
    for key, value in policy.distribution(shuffled).items():
        np.testing.assert_allclose(value, base[key], atol=1e-5, rtol=0)
    out = run(session(arch, params), {**feed, **{f"obs_{i}": o for i, o in enumerate(shuffled)}})
    for key, value in base_onnx.items():
        if key.startswith("deterministic"):
            np.testing.assert_allclose(value, out[key], atol=1e-5, rtol=0)
    # a wider buffer (more padding rows) for the same entities: a bigger model, the same policy
    spec = arch.behavior_spec
    wider_spec = specs.BehaviorSpec(
        spec.name,
        tuple(specs.ObservationSpec(o.name, (o.shape[0] + 3, o.shape[1]) if len(o.shape) == 2 else o.shape) for o in spec.observations),
        spec.action_spec,
    )
    wider = PolicyArchitecture(wider_spec, arch.hidden_units, arch.num_layers, arch.normalize, arch.vis_encode_type, arch.continuous_distribution)
    padded = [np.concatenate([o, np.zeros((o.shape[0], 3, o.shape[2]), np.float32)], axis=1) if o.ndim == 3 else o for o in observations]
    for key, value in NumpyPolicy(wider, params).distribution(padded).items():
        np.testing.assert_allclose(value, base[key], atol=1e-5, rtol=0)
    # the entities do matter: zeroing one real entity changes the policy
    changed = [o.copy() for o in observations]
    entity = arch_mod.entity_indices(spec)[0]
    changed[entity][:, 0] = 0.0
    assert np.abs(policy.distribution(changed)["mu"] - base["mu"]).max() > 1e-4


# ---- parity with the policy the trainer and the gateway act with ----------------------


def random_masks(branches: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    """Unity's float mask (1 = allowed) with about half the actions masked, at least one allowed per branch."""
    rng = np.random.default_rng(seed)
    allowed = (rng.uniform(size=(batch, sum(branches))) < 0.5).astype(np.float32)
    start = 0
    for size in branches:
        rows = allowed[:, start : start + size].sum(axis=1) == 0
        allowed[rows, start + rng.integers(0, size, rows.sum())] = 1
        start += size
    return allowed


def jax_initialized_params(arch: PolicyArchitecture, seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters from the real JAX actor initializer, with normalizer statistics folded from data."""
    jax = pytest.importorskip("jax")
    from trainer_server.learning import networks, normalizer

    domain = arch
    params = {k: np.asarray(v) for k, v in networks.init_actor(jax.random.key(seed), domain).items()}
    if domain.normalize:
        observations, _ = random_inputs(arch, batch=64, seed=seed + 100)
        state = normalizer.update(
            normalizer.init(domain.behavior_spec),
            [3.0 * o + 1.0 for o in observations],
            np.ones(64, bool),
        )
        means, variances = normalizer.statistics(state)
        for key in means:
            params[f"normalizer/mean/{key}"] = np.asarray(means[key])
            params[f"normalizer/var/{key}"] = np.asarray(variances[key])
    return params


def deterministic_onnx(arch, params, feed) -> tuple[np.ndarray | None, np.ndarray | None]:
    out = run(session(arch, params), feed)
    return out.get("deterministic_continuous_actions"), out.get("deterministic_discrete_actions")


@pytest.mark.parametrize("init", ["random", "jax"])
def test_deterministic_actions_match_numpy_policy(behavior, init):
    arch, params = behavior
    if init == "jax":
        params = jax_initialized_params(arch)
    action = arch.behavior_spec.action_spec
    allowed = random_masks(action.discrete_branches, 64, seed=11) if action.discrete_branches else None
    observations, feed = random_inputs(arch, batch=64, seed=12, masks=allowed)
    continuous, discrete = deterministic_onnx(arch, params, feed)
    reference = NumpyPolicy(arch, params).act(
        observations, None if allowed is None else allowed == 0, np.random.default_rng(0), deterministic=True
    )
    if action.continuous_size:
        np.testing.assert_allclose(continuous, reference.env_continuous, atol=1e-5, rtol=0)
        # the inputs really drive the actions (ML-Agents' init, mu gain 0.2, keeps them small for resnet)
        assert np.ptp(continuous, axis=0).min() > (1e-3 if init == "random" else 1e-4)
    if action.discrete_branches:
        np.testing.assert_array_equal(discrete, reference.discrete)


def deterministic_jax(
    arch: PolicyArchitecture, params: dict[str, np.ndarray], observations: list[np.ndarray], allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The JAX actor's deterministic actions: (continuous as the environment gets them, discrete)."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from trainer_server.learning import distributions, networks

    jparams = {k: jnp.asarray(v) for k, v in params.items() if not k.startswith("normalizer/")}
    norm = None
    if arch.normalize:
        idx = arch_mod.vector_indices(arch.behavior_spec)
        norm = (
            {str(i): jnp.asarray(params[f"normalizer/mean/{i}"]) for i in idx},
            {str(i): jnp.asarray(params[f"normalizer/var/{i}"]) for i in idx},
        )
    mask = None if allowed is None else jnp.asarray(allowed == 0)
    dist = jax.jit(networks.actor_forward, static_argnums=1)(jparams, arch, [jnp.asarray(o) for o in observations], norm, mask)
    n = len(observations[0])
    branches = arch.behavior_spec.action_spec.discrete_branches
    acts = distributions.sample(dist, jax.random.key(0), n, branches, arch.continuous_distribution, deterministic=True)
    env = distributions.env_continuous(acts.continuous, arch.continuous_distribution)
    return np.asarray(env), np.asarray(acts.discrete)


def test_deterministic_actions_match_the_jax_actor(behavior):
    arch, _ = behavior
    params = jax_initialized_params(arch, seed=5)
    action = arch.behavior_spec.action_spec
    allowed = random_masks(action.discrete_branches, 32, seed=13) if action.discrete_branches else None
    observations, feed = random_inputs(arch, batch=32, seed=14, masks=allowed)
    continuous, discrete = deterministic_onnx(arch, params, feed)
    want_continuous, want_discrete = deterministic_jax(arch, params, observations, allowed)
    if action.continuous_size:
        np.testing.assert_allclose(continuous, want_continuous, atol=1e-5, rtol=0)
    if action.discrete_branches:
        np.testing.assert_array_equal(discrete, want_discrete)


@pytest.mark.parametrize(
    "distribution,to_environment",
    [
        ("gaussian", lambda mu: np.clip(mu, -3.0, 3.0) / 3.0),  # PPO, as ML-Agents' models
        ("tanh_gaussian", np.tanh),  # SAC: the squashed mean, where ML-Agents' models give mu itself
    ],
)
def test_deterministic_action_is_the_mean_as_the_environment_gets_it_in_onnx_numpy_and_jax(distribution, to_environment):
    """Unity feeds ``deterministic_continuous_actions`` to the agent unchanged: it must be in
    the same [-1, 1] space as the sampled actions, and the same in all three actors."""
    arch = make_architecture([(3,)], continuous=4, distribution=distribution, normalize=False, num_layers=0)
    params = random_params(arch, seed=8)
    mu = np.array([-4.0, -0.5, 0.8, 2.5], np.float32)  # inside and outside [-1, 1] and [-3, 3]
    params["policy/mu/kernel"] = np.zeros_like(params["policy/mu/kernel"])
    params["policy/mu/bias"] = mu
    observations, feed = random_inputs(arch, batch=3, seed=9)
    want = np.broadcast_to(to_environment(mu), (3, 4))
    numpy_out = NumpyPolicy(arch, params).act(observations, None, np.random.default_rng(0), deterministic=True)
    got = {
        "onnx": deterministic_onnx(arch, params, feed)[0],
        "numpy": numpy_out.env_continuous,
        "jax": deterministic_jax(arch, params, observations, None)[0],
    }
    for actor, actions in got.items():
        np.testing.assert_allclose(actions, want, atol=1e-6, rtol=0, err_msg=actor)
        assert np.all(np.abs(actions) <= 1.0), actor


def test_exported_statistics_match_numpy_policy_sampling():
    """Sampled outputs come from the same distribution as NumpyPolicy's samples."""
    arch = make_architecture([(6,)], continuous=1, branches=(3,), distribution="tanh_gaussian")
    params = random_params(arch, seed=21)
    params["policy/logits/kernel"] *= 0.2  # a spread-out categorical
    n = 20000
    observations, feed = random_inputs(arch, batch=1, seed=22, masks=np.array([[1, 0, 1]], np.float32))
    observations = [np.repeat(o, n, axis=0) for o in observations]
    feed = {k: np.repeat(v, n, axis=0) for k, v in feed.items()}
    out = run(session(arch, params), feed)
    ref = NumpyPolicy(arch, params).act(observations, feed["action_masks"] == 0, np.random.default_rng(1))
    onnx_freq = np.bincount(out["discrete_actions"][:, 0], minlength=3) / n
    ref_freq = np.bincount(ref.discrete[:, 0], minlength=3) / n
    np.testing.assert_allclose(onnx_freq, ref_freq, atol=0.02)
    assert onnx_freq[1] == 0
    np.testing.assert_allclose(out["continuous_actions"].mean(), ref.env_continuous.mean(), atol=0.02)
    np.testing.assert_allclose(out["continuous_actions"].std(), ref.env_continuous.std(), rtol=0.05)


# ---- optional outputs for actors that collect experience --------------------------------


def test_training_outputs_are_opt_in_and_leave_the_contract_untouched(behavior):
    arch, params = behavior
    action = arch.behavior_spec.action_spec
    sess = ort.InferenceSession(export_policy_bytes(arch, params, training_outputs=True))
    want_inputs, want_outputs = expected_io(arch)
    if action.continuous_size:
        want_outputs.append(("tandem_raw_continuous", "tensor(float)", ["batch", action.continuous_size]))
    want_outputs.append(("tandem_log_probs", "tensor(float)", ["batch"]))
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == want_inputs
    assert [(o.name, o.type, o.shape) for o in sess.get_outputs()] == want_outputs
    onnx.checker.check_model(onnx.load_from_string(export_policy_bytes(arch, params, True)), full_check=True)


def test_training_outputs_give_the_raw_sample_and_its_log_prob_under_numpy_policy(behavior):
    arch, params = behavior
    domain = arch
    action = domain.behavior_spec.action_spec
    if domain.continuous_distribution == "tanh_gaussian":
        # moderate spreads: near tanh saturation float32 rounding dominates log(1 - tanh^2 + eps)
        params = dict(params, **{"policy/log_std/kernel": params["policy/log_std/kernel"] * 0.1})
        params["policy/log_std/bias"] = np.full(action.continuous_size, -1.0, np.float32)
    allowed = random_masks(action.discrete_branches, 256, seed=31) if action.discrete_branches else None
    observations, feed = random_inputs(arch, batch=256, seed=32, masks=allowed)
    sess = ort.InferenceSession(export_policy_bytes(arch, params, training_outputs=True))
    out = run(sess, feed)
    mask = None if allowed is None else allowed == 0
    n = 256
    raw = out.get("tandem_raw_continuous", np.zeros((n, 0), np.float32))
    discrete = out.get("discrete_actions", np.zeros((n, 0), np.int64))
    if action.continuous_size:
        if domain.continuous_distribution == "gaussian":
            np.testing.assert_allclose(out["continuous_actions"], np.clip(raw, -3, 3) / 3, atol=1e-6)
        else:
            np.testing.assert_allclose(out["continuous_actions"], np.tanh(raw), atol=1e-6)
    reference = NumpyPolicy(arch, params).log_prob(observations, mask, raw, discrete)
    np.testing.assert_allclose(out["tandem_log_probs"], reference, atol=2e-4, rtol=1e-5)
    assert np.all(np.isfinite(out["tandem_log_probs"]))


# -- memory (LSTM): ML-Agents' recurrent contract and parity over several steps ----------------
MEMORY_BEHAVIORS = {
    "vector_continuous": dict(observations=[(8,)], continuous=2),
    "visual_hybrid_sac": dict(observations=[(7,), (1, 40, 36)], continuous=2, branches=(5,), distribution="tanh_gaussian"),
    "discrete_masks": dict(observations=[(6,), (4,)], branches=(3, 2, 4), num_layers=1),
}


def memory_architecture(name: str, memory_size: int = 12) -> PolicyArchitecture:
    base = make_architecture(**MEMORY_BEHAVIORS[name])
    return dataclasses.replace(base, memory_size=memory_size, sequence_length=4)


def test_recurrent_model_follows_the_mlagents_contract():
    arch = memory_architecture("discrete_masks", memory_size=10)
    model = onnx.load_from_string(export_policy_bytes(arch, random_params(arch)))
    onnx.checker.check_model(model, full_check=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*model.graph.input, *model.graph.output)}
    assert [i.name for i in model.graph.input] == ["obs_0", "obs_1", "action_masks", "recurrent_in"]
    assert dims["recurrent_in"] == ["batch", 1, 10] and dims["recurrent_out"] == ["batch", 1, 10]
    outputs = [o.name for o in model.graph.output]
    assert outputs[-1] == "recurrent_out" and outputs[:2] == ["version_number", "memory_size"]
    _, feed = random_inputs(arch, batch=3)
    feed["recurrent_in"] = np.zeros((3, 1, 10), np.float32)
    out = run(session(arch, random_params(arch)), feed)
    assert out["memory_size"].tolist() == [10.0]
    assert out["recurrent_out"].shape == (3, 1, 10) and np.abs(out["recurrent_out"]).max() > 1e-3


def _jax_step(arch, params, observations, allowed, memories):
    """One deterministic JAX actor step: (env continuous, discrete, memories after)."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from trainer_server.learning import distributions, networks

    jparams = {k: jnp.asarray(v) for k, v in params.items() if not k.startswith("normalizer/")}
    norm = None
    if arch.normalize:
        idx = arch_mod.vector_indices(arch.behavior_spec)
        norm = tuple({str(i): jnp.asarray(params[f"normalizer/{s}/{i}"]) for i in idx} for s in ("mean", "var"))
    mask = None if allowed is None else jnp.asarray(allowed == 0)
    dist, after = networks.actor_step(jparams, arch, [jnp.asarray(o) for o in observations], norm, mask, jnp.asarray(memories))
    branches = arch.behavior_spec.action_spec.discrete_branches
    acts = distributions.sample(dist, jax.random.key(0), len(memories), branches, arch.continuous_distribution, deterministic=True)
    env = distributions.env_continuous(acts.continuous, arch.continuous_distribution)
    return np.asarray(env), np.asarray(acts.discrete), np.asarray(after)


@pytest.mark.parametrize("name", sorted(MEMORY_BEHAVIORS))
def test_numpy_jax_and_onnxruntime_agree_over_steps_with_the_memory_carried(name):
    arch = memory_architecture(name)
    params = jax_initialized_params(arch, seed=3)
    sess = session(arch, params)
    policy = NumpyPolicy(arch, params)
    action = arch.behavior_spec.action_spec
    batch = 6
    mem_numpy = mem_onnx = mem_jax = np.zeros((batch, arch.memory_size), np.float32)
    for step in range(5):
        allowed = random_masks(action.discrete_branches, batch, seed=20 + step) if action.discrete_branches else None
        observations, feed = random_inputs(arch, batch=batch, seed=30 + step, masks=allowed)
        feed["recurrent_in"] = mem_onnx[:, None, :]
        out = run(sess, feed)
        ref = policy.act(observations, None if allowed is None else allowed == 0, np.random.default_rng(0),
                         deterministic=True, memories=mem_numpy)
        env, discrete, mem_jax = _jax_step(arch, params, observations, allowed, mem_jax)
        mem_onnx = out["recurrent_out"][:, 0, :]
        mem_numpy = ref.memories
        np.testing.assert_allclose(mem_onnx, mem_numpy, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mem_jax, mem_numpy, atol=1e-5, rtol=0)
        if action.continuous_size:
            np.testing.assert_allclose(out["deterministic_continuous_actions"], ref.env_continuous, atol=1e-5, rtol=0)
            np.testing.assert_allclose(env, ref.env_continuous, atol=1e-5, rtol=0)
        if action.discrete_branches:
            np.testing.assert_array_equal(out["deterministic_discrete_actions"], ref.discrete)
            np.testing.assert_array_equal(discrete, ref.discrete)
    assert np.abs(mem_numpy).max() > 1e-2  # the memory really moved


def test_a_sac_learners_memory_policy_acts_alike_in_numpy_jax_and_onnxruntime_and_as_it_trains():
    """SAC with memory (hybrid actions, a camera): the learner's snapshot through the numpy
    actor, the JAX actor and onnxruntime over steps with each agent's memory carried (and
    reset to zeros for agents starting an episode), and the learner's training path (one
    LSTM run per sequence from the first step's stored memory) gives the same means."""
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from trainer_server.config.loading import trainer_settings_from_dict
    from trainer_server.learning import networks, sac

    behavior = MEMORY_BEHAVIORS["visual_hybrid_sac"]
    spec = make_architecture(**behavior).behavior_spec
    settings = trainer_settings_from_dict({
        "trainer_type": "sac",
        "network_settings": {"hidden_units": HIDDEN, "num_layers": 1, "normalize": True,
                             "memory": {"memory_size": 12, "sequence_length": 4}},
    })
    learner = sac.SACLearner(spec, settings, seed=4)
    arch, params = learner.architecture(), learner.policy_parameters()
    assert arch.memory_size == 12 and arch.continuous_distribution == "tanh_gaussian"
    assert params["lstm/kernel"].shape == (HIDDEN, 24)
    sess, policy = session(arch, params), NumpyPolicy(arch, params)
    batch = 5
    mem_numpy = mem_onnx = mem_jax = np.zeros((batch, 12), np.float32)
    steps_obs, steps_mem, steps_mu = [], [], []
    for step in range(6):
        if step == 3:  # agents 0 and 2 start a new episode: their memories are reset
            for m in (mem_numpy, mem_onnx, mem_jax):
                m[[0, 2]] = 0.0
        allowed = random_masks(spec.action_spec.discrete_branches, batch, seed=40 + step)
        observations, feed = random_inputs(arch, batch=batch, seed=50 + step, masks=allowed)
        steps_obs.append(observations)
        steps_mem.append(mem_numpy.copy())
        feed["recurrent_in"] = mem_onnx[:, None, :]
        out = run(sess, feed)
        ref = policy.act(observations, allowed == 0, np.random.default_rng(0), deterministic=True, memories=mem_numpy)
        steps_mu.append(policy.distribution(observations, allowed == 0, mem_numpy)["mu"])
        env, discrete, after = _jax_step(arch, params, observations, allowed, mem_jax)
        mem_onnx, mem_numpy, mem_jax = out["recurrent_out"][:, 0, :].copy(), ref.memories.copy(), after.copy()
        np.testing.assert_allclose(mem_onnx, mem_numpy, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mem_jax, mem_numpy, atol=1e-5, rtol=0)
        np.testing.assert_allclose(out["deterministic_continuous_actions"], ref.env_continuous, atol=1e-5, rtol=0)
        np.testing.assert_allclose(env, ref.env_continuous, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(out["deterministic_discrete_actions"], ref.discrete)
        np.testing.assert_array_equal(discrete, ref.discrete)
    assert np.abs(mem_numpy).max() > 1e-2
    # training: agent 1's steps 0-3 as one sequence from its stored memory before step 0
    # (its memories were never reset); the next observations are its steps 1-4
    actor, _, _ = sac.make_recurrent_fns(learner.policy_architecture, ("extrinsic",))
    obs = [np.stack([steps_obs[t][k][1] for t in range(4)]) for k in range(len(spec.observations))]
    nxt = [np.stack([steps_obs[t][k][1] for t in range(1, 5)]) for k in range(len(spec.observations))]
    norm = learner._state.normalizer
    norm_stats = sac.norm_mod.statistics(norm) if arch.normalize else None
    memories = np.repeat(steps_mem[0][1:2], 4, axis=0)
    h, h_next = actor(learner._state.params["actor"], obs, nxt, norm_stats, jnp.asarray(memories))
    mu = np.asarray(networks.actor_heads(learner._state.params["actor"], arch, h, None).mu)
    mu_next = np.asarray(networks.actor_heads(learner._state.params["actor"], arch, h_next, None).mu)
    np.testing.assert_allclose(mu, np.stack([steps_mu[t][1] for t in range(4)]), atol=1e-5)
    np.testing.assert_allclose(mu_next, np.stack([steps_mu[t][1] for t in range(1, 5)]), atol=1e-5)
