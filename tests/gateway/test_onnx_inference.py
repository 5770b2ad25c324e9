"""Acting with exported ONNX models: ``OnnxPolicy`` and ``tandem-gateway --policy``.

Nothing is trained: models are exported from random parameters with known values for
the stand-in's 3DBall and GridWorld specs, so the expected actions are those of
``gateway.actor.numpy_policy.NumpyPolicy`` with the same parameters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common import architecture as arch_mod, specs
from gateway.actor.numpy_policy import NumpyPolicy
from common import trajectory as trajectory_mod
from gateway.app import Gateway
from gateway.actor.onnx_policy import OnnxModelError, OnnxPolicy
from gateway.env.steps import StepBatch
from gateway.actor.trajectories import EpisodeTally
from gateway.options import ActorOptions, GatewayOptions, InferenceOptions, ServerOptions, validate
from trainer_server.onnx_export import export_policy, export_policy_bytes
from fake_trainer import FakeTrainerServer, TrainerState
from gateway_helpers import environment_options, free_ports, running_gateway, wait_until

REPO = Path(__file__).resolve().parents[2]

BALL_SPEC = specs.BehaviorSpec(
    name="3DBall?team=0",
    observations=(specs.ObservationSpec(name="VectorSensor_size8", shape=(8,)),),
    action_spec=specs.ActionSpec(continuous_size=2),
)
GRID_SPEC = specs.BehaviorSpec(
    name="GridWorld?team=0",
    observations=(
        specs.ObservationSpec(name="CameraSensor", shape=(3, 24, 24)),
        specs.ObservationSpec(name="VectorSensor_size6", shape=(6,)),
    ),
    action_spec=specs.ActionSpec(discrete_branches=(5, 2)),
)


SORTER_SPEC = specs.BehaviorSpec(
    name="Sorter?team=0",
    observations=(
        specs.ObservationSpec(name="VectorSensor_size4", shape=(4,)),
        specs.ObservationSpec(name="BufferSensor", shape=(8, 6), dimension_properties=(2, 1)),
    ),
    action_spec=specs.ActionSpec(discrete_branches=(3, 3)),
)


def architecture(
    spec: specs.BehaviorSpec, distribution: str = "gaussian", vis_encode_type: str = "simple"
) -> arch_mod.PolicyArchitecture:
    return arch_mod.PolicyArchitecture(
        behavior_spec=spec,
        hidden_units=16,
        num_layers=1,
        normalize=True,
        continuous_distribution=distribution,
        vis_encode_type=vis_encode_type,
    )


def known_params(arch: arch_mod.PolicyArchitecture, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters with the contract's names and shapes (varied, well-separated actions)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in arch_mod.parameter_shapes(arch).items():
        if name.startswith("normalizer/var/"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("/kernel"):
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape) * (3 if "logits" in name else 1)
        else:
            value = rng.normal(0.0, 0.1, shape)
        params[name] = value.astype(np.float32)
    return params


def observations(spec: specs.BehaviorSpec, n: int, seed: int = 1) -> list[np.ndarray]:
    """Random observations; variable-length ones with a random number of entities, the rest
    all-zero padding rows as ML-Agents' BufferSensor pads."""
    rng = np.random.default_rng(seed)
    out = []
    for o in spec.observations:
        x = (rng.random((n, *o.shape)) if o.is_visual else rng.normal(0, 2, (n, *o.shape))).astype(np.float32)
        if len(o.shape) == 2:
            x[np.arange(o.shape[0])[None, :] >= rng.integers(0, o.shape[0] + 1, (n, 1))] = 0.0
        out.append(x)
    return out


def random_mask(n: int, branches: tuple[int, ...], seed: int = 2) -> np.ndarray:
    """bool [n, sum(branches)], true = not allowed, at least one allowed action per branch."""
    rng = np.random.default_rng(seed)
    parts = []
    for size in branches:
        m = rng.random((n, size)) < 0.5
        m[np.arange(n), rng.integers(0, size, n)] = False
        parts.append(m)
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize(
    "spec,distribution,encoder",
    [
        (BALL_SPEC, "gaussian", "simple"),
        (BALL_SPEC, "tanh_gaussian", "simple"),
        (GRID_SPEC, "gaussian", "simple"),
        (GRID_SPEC, "gaussian", "resnet"),
        (GRID_SPEC, "gaussian", "match3"),
        (GRID_SPEC, "gaussian", "fully_connected"),
        (SORTER_SPEC, "gaussian", "simple"),
    ],
)
def test_deterministic_actions_equal_numpy_policy(spec, distribution, encoder):
    arch = architecture(spec, distribution, encoder)
    params = known_params(arch)
    if distribution == "tanh_gaussian":
        params["policy/mu/bias"] = np.array([2.0, -1.5], np.float32)  # means beyond [-1, 1]
    onnx_policy = OnnxPolicy(export_policy_bytes(arch, params), spec=spec)
    reference = NumpyPolicy(arch, params)
    obs = observations(spec, 64)
    mask = random_mask(64, spec.action_spec.discrete_branches) if spec.action_spec.num_branches else None
    got = onnx_policy.act(obs, mask, None, deterministic=True)
    want = reference.act(obs, mask, np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(got.env_continuous, want.env_continuous, atol=1e-5)
    if distribution == "tanh_gaussian":  # SAC: the squashed mean reaches the environment, not the mean
        mu = reference.distribution(obs, mask)["mu"]
        assert (np.abs(mu) > 1.0).any()
        np.testing.assert_allclose(got.env_continuous, np.tanh(mu), atol=1e-5)
    assert got.discrete.dtype == np.int32 and got.discrete.shape == want.discrete.shape
    np.testing.assert_array_equal(got.discrete, want.discrete)
    if mask is not None:
        offsets = np.cumsum((0, *spec.action_spec.discrete_branches))
        for b in range(spec.action_spec.num_branches):
            chosen = mask[np.arange(64), offsets[b] + got.discrete[:, b]]
            assert not chosen.any(), "a masked action was chosen"
    empty = onnx_policy.act([o[:0] for o in obs], None if mask is None else mask[:0], None, deterministic=True)
    assert empty.discrete.shape == (0, spec.action_spec.num_branches)


def test_nature_cnn_model_acts_like_numpy_policy_at_84x84():
    """nature_cnn needs 36x36 at least: the 84x84 camera of the stand-in's visual tasks."""
    spec = specs.BehaviorSpec(
        "Visual?team=0", (specs.ObservationSpec("CameraSensor", (3, 84, 84)),), specs.ActionSpec(continuous_size=2)
    )
    arch = architecture(spec, vis_encode_type="nature_cnn")
    params = known_params(arch)
    obs = observations(spec, 5)
    got = OnnxPolicy(export_policy_bytes(arch, params), spec=spec).act(obs, None, None, deterministic=True)
    want = NumpyPolicy(arch, params).act(obs, None, np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(got.env_continuous, want.env_continuous, atol=1e-5)


def test_training_snapshot_samples_with_log_probs():
    """A snapshot with only onnx_model (training outputs) acts like NumpyPolicy would score it."""
    arch = architecture(GRID_SPEC)
    params = known_params(arch)
    snapshot = arch_mod.make_snapshot(GRID_SPEC.name, 3, arch, {})
    snapshot.onnx_model = export_policy_bytes(arch, params, training_outputs=True)
    onnx_policy = OnnxPolicy.from_snapshot(snapshot, spec=GRID_SPEC)
    obs = observations(GRID_SPEC, 256)
    mask = random_mask(256, GRID_SPEC.action_spec.discrete_branches)
    out = onnx_policy.act(obs, mask, None, deterministic=False)
    assert not mask[np.arange(256), out.discrete[:, 0]].any()
    assert not mask[np.arange(256), 5 + out.discrete[:, 1]].any()
    want = NumpyPolicy(arch, params).log_prob(obs, mask, out.continuous, out.discrete)
    np.testing.assert_allclose(out.log_probs, want, atol=1e-4)
    # without training outputs a snapshot to learn from is refused, a deterministic one is fine
    snapshot.onnx_model = export_policy_bytes(arch, params)
    with pytest.raises(OnnxModelError, match="training_outputs=True"):
        OnnxPolicy.from_snapshot(snapshot, spec=GRID_SPEC)
    snapshot.deterministic = True
    OnnxPolicy.from_snapshot(snapshot, spec=GRID_SPEC)


@pytest.mark.parametrize(
    "spec, distribution", [(BALL_SPEC, "gaussian"), (GRID_SPEC, "gaussian"), (BALL_SPEC, "tanh_gaussian")]
)
def test_recurrent_models_act_like_numpy_policy_with_the_memory_carried(spec, distribution):
    """A model with ``recurrent_in``/``recurrent_out`` (memory), PPO's or SAC's
    (``tanh_gaussian``): deterministic actions, the memory it returns and the log-probs of
    its samples follow NumpyPolicy step after step."""
    from dataclasses import replace

    arch = replace(architecture(spec, distribution), memory_size=10, sequence_length=4)
    params = known_params(arch)
    onnx_policy = OnnxPolicy(export_policy_bytes(arch, params, training_outputs=True), spec=spec)
    reference = NumpyPolicy(arch, params)
    assert onnx_policy.memory_size == reference.memory_size == 10
    n = 5
    got_memory = want_memory = None  # None: zeros, an episode start
    for step in range(4):
        obs = observations(spec, n, seed=10 + step)
        mask = random_mask(n, spec.action_spec.discrete_branches, seed=step) if spec.action_spec.num_branches else None
        got = onnx_policy.act(obs, mask, None, deterministic=True, memories=got_memory)
        want = reference.act(obs, mask, np.random.default_rng(0), deterministic=True, memories=want_memory)
        np.testing.assert_allclose(got.env_continuous, want.env_continuous, atol=1e-5)
        np.testing.assert_array_equal(got.discrete, want.discrete)
        np.testing.assert_allclose(got.memories, want.memories, atol=1e-5)
        sampled = onnx_policy.act(obs, mask, None, memories=got_memory)
        np.testing.assert_allclose(sampled.memories, want.memories, atol=1e-5)  # the memory does not depend on the sample
        score = reference.log_prob(obs, mask, sampled.continuous, sampled.discrete, memories=want_memory)
        np.testing.assert_allclose(sampled.log_probs, score, atol=1e-4)
        got_memory, want_memory = got.memories, want.memories
    assert np.abs(got_memory).max() > 1e-2


def test_bad_models_are_refused_naming_file_and_mismatch(tmp_path):
    with pytest.raises(OnnxModelError, match="missing.onnx: cannot read"):
        OnnxPolicy.from_file(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(OnnxModelError, match="garbage.onnx: not a loadable ONNX model"):
        OnnxPolicy.from_file(garbage)
    ball = tmp_path / "ball.onnx"
    export_policy(architecture(BALL_SPEC), known_params(architecture(BALL_SPEC)), ball)
    with pytest.raises(OnnxModelError, match=r"ball.onnx does not fit behavior GridWorld\?team=0: the model takes 1"):
        OnnxPolicy.from_file(ball, spec=GRID_SPEC)
    wider = specs.BehaviorSpec(
        name="3DBall?team=0",
        observations=(specs.ObservationSpec(name="VectorSensor_size9", shape=(9,)),),
        action_spec=specs.ActionSpec(continuous_size=2),
    )
    with pytest.raises(OnnxModelError, match=r"obs_0 has shape \['batch', 8\].*is \[9\]"):
        OnnxPolicy.from_file(ball, spec=wider)
    discrete = specs.BehaviorSpec(name="3DBall?team=0", observations=BALL_SPEC.observations,
                                  action_spec=specs.ActionSpec(discrete_branches=(3,)))
    with pytest.raises(OnnxModelError, match="has 0 continuous actions, the model has continuous"):
        OnnxPolicy.from_file(ball, spec=discrete)
    grid = tmp_path / "grid.onnx"
    export_policy(architecture(GRID_SPEC), known_params(architecture(GRID_SPEC)), grid)
    other_branches = specs.BehaviorSpec(name="GridWorld?team=0", observations=GRID_SPEC.observations,
                                        action_spec=specs.ActionSpec(discrete_branches=(4, 3)))
    with pytest.raises(OnnxModelError, match=r"discrete_action_output_shape is \[5, 2\].*\[4, 3\]"):
        OnnxPolicy.from_file(grid, spec=other_branches)


def _steps(ids, rewards) -> StepBatch:
    n = len(ids)
    return StepBatch(
        observations=[np.zeros((n, 1), np.float32)],
        rewards=np.asarray(rewards, np.float32),
        agent_ids=np.asarray(ids, np.int32),
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.zeros(n, np.float32),
    )


def test_episode_tally_sums_rewards_per_agent_until_its_terminal_step():
    tally = EpisodeTally()
    tally.observe(_steps([0, 1], [0.0, 0.0]), _steps([], []))
    tally.acted(_steps([0, 1], [0, 0]))
    tally.observe(_steps([0, 1], [1.0, 0.5]), _steps([], []))
    tally.acted(_steps([0, 1], [0, 0]))
    # agent 0 ends (reward 2) and starts again in the same step; agent 1 goes on
    tally.observe(_steps([0, 1], [0.0, 0.25]), _steps([0], [2.0]))
    assert tally.take() == [(3.0, 2)]
    tally.acted(_steps([0, 1], [0, 0]))
    tally.observe(_steps([], []), _steps([1, 0], [1.0, -1.0]))
    assert tally.take() == [(1.75, 3), (-1.0, 1)]
    assert tally.take() == []


def _gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "--listen", "127.0.0.1:0", "--base-port", str(free_ports(1)),
            "--seed", "1", "--timeout-wait", "10", "--log-json", *args]


def _log_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.slow
def test_cli_runs_3dball_model_and_logs_mean_reward(tmp_path):
    model = tmp_path / "3DBall.onnx"
    export_policy(architecture(BALL_SPEC), known_params(architecture(BALL_SPEC)), model)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _gateway_command("--policy", f"3DBall={model}", "--summary-interval-s", "1"),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            def summaries():
                return [e for e in _log_lines(log_path.read_text()) if e.get("event") == "inference summary"]

            assert wait_until(lambda: any(s["episodes"] > 0 for s in summaries()), 45, 0.5), log_path.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
    assert rc == 0, log_path.read_text()[-3000:]
    done = [s for s in summaries() if s["episodes"] > 0]
    assert all(s["behavior"] == "3DBall?team=0" for s in done)
    assert all(isinstance(s["mean_reward"], float) and s["std_reward"] >= 0 for s in done)
    assert all(s["mean_episode_length"] >= 1 for s in done)


@pytest.mark.slow
def test_cli_refuses_a_model_that_does_not_fit_the_behavior(tmp_path):
    model = tmp_path / "grid.onnx"
    export_policy(architecture(GRID_SPEC), known_params(architecture(GRID_SPEC)), model)
    proc = subprocess.run(
        _gateway_command("--policy", f"3DBall={model}"), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    [error] = [e for e in _log_lines(proc.stderr + proc.stdout) if e.get("level") == "error"]
    assert "grid.onnx does not fit behavior 3DBall?team=0" in error["error"]
    assert "the model takes 2 observations" in error["error"]
    # a behavior of the scene without a model (here: a typo) is named, with the models given
    proc = subprocess.run(
        _gateway_command("--policy", f"3dball={model}"), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    [error] = [e for e in _log_lines(proc.stderr + proc.stdout) if e.get("level") == "error"]
    assert "behaviors ['3DBall'] have no model" in error["error"] and "['3dball']" in error["error"]
    # a file that is not a model never starts Unity: a usage error naming the option and file
    garbage = tmp_path / "notes.onnx"
    garbage.write_text("hello")
    proc = subprocess.run(
        _gateway_command("--policy", f"3DBall={garbage}"), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "--policy 3DBall:" in proc.stderr and "notes.onnx: not a loadable ONNX model" in proc.stderr


@pytest.mark.slow
def test_gridworld_model_never_takes_masked_actions(tmp_path):
    """The model prefers masked actions (digging off the goal, walking into walls); masks keep it off them."""
    arch = architecture(GRID_SPEC)
    params = known_params(arch)
    params["policy/logits/bias"][:] = [0, 0, 0, 0, 30, 0, 30]  # move 4 and dig dominate every logit
    model = tmp_path / "GridWorld.onnx"
    export_policy(arch, params, model)
    options = validate(
        GatewayOptions(
            environment=environment_options(env_args=("--task", "gridworld")),
            server=ServerOptions(listen="127.0.0.1:0"),
            inference=InferenceOptions(policies=(("GridWorld", str(model)),), summary_interval_s=0.5),
        )
    )
    gateway = Gateway(options)
    try:
        gateway.start()
        runner = gateway.actor
        assert wait_until(
            lambda: runner.inference_totals.get(GRID_SPEC.name) is not None
            and runner.inference_totals[GRID_SPEC.name].episodes >= 8,
            45,
            0.2,
        ), runner.inference_totals
        steps = sum(s for s, _ in runner.env_steps.values())
    finally:
        gateway.stop()
    assert steps > 50
    assert runner.stat_totals.get("Environment/MaskedActionsIgnored", 0.0) == 0.0, runner.stat_totals
    total = runner.inference_totals[GRID_SPEC.name]
    assert total.mean_return is not None and total.length_sum >= total.episodes


class OnnxOnlyTrainerState(TrainerState):
    """A trainer that sends snapshots carrying only ``onnx_model`` (with training outputs): no parameters."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self.architectures: dict[str, arch_mod.PolicyArchitecture] = {}

    def snapshot(self, spec_msg):
        spec = specs.from_proto(spec_msg)
        arch = arch_mod.PolicyArchitecture(spec, hidden_units=self.hidden_units, num_layers=self.num_layers)
        params = self.params.setdefault(spec.name, known_params(arch, seed=5))
        self.architectures[spec.name] = arch
        snapshot = arch_mod.make_snapshot(spec.name, self.version, arch, {}, self.time_horizon)
        snapshot.onnx_model = export_policy_bytes(arch, params, training_outputs=True)
        return snapshot


@pytest.mark.slow
def test_actor_mode_acts_with_onnx_only_snapshots():
    """What a non-Python gateway does: act with the model's sampled and training outputs, stream trajectories."""
    state = OnnxOnlyTrainerState(time_horizon=16, hidden_units=16, num_layers=1)
    trainer = FakeTrainerServer(state)
    try:
        actor = ActorOptions(trainer=trainer.address, chunk_steps=64, flush_interval_s=0.2,
                             reconnect_min_s=0.1, reconnect_max_s=0.5)
        with running_gateway(environment_options(), actor=actor):
            assert state.wait_for(lambda s: len(s.chunks) >= 6, 45)
    finally:
        trainer.stop()
    [spec_msg] = state.hellos[0].behaviors
    spec = specs.from_proto(spec_msg)
    reference = NumpyPolicy(state.architectures[spec.name], state.params[spec.name])
    with state.lock:
        chunks = [state.chunks[k] for k in sorted(state.chunks)]
    trajectories = [trajectory_mod.from_proto(t, spec, name="chunk") for c in chunks for t in c.trajectories]
    assert sum(len(t) for t in trajectories) >= 64
    for t in trajectories:
        assert (t.policy_versions == 1).all()
        assert np.all(np.abs(t.continuous_actions).max() < 50)
        want = reference.log_prob(t.observations, None, t.continuous_actions, t.discrete_actions)
        np.testing.assert_allclose(t.log_probs, want, atol=1e-3)
    spread = np.concatenate([t.continuous_actions for t in trajectories])
    assert spread.std(axis=0).min() > 0.05, "sampled, not the mean"
