"""BehaviorRun: what a run records for a behavior (results folder, TensorBoard, timers,
checkpoints, ONNX models) and how it restarts (--resume, --initialize-from, init_path)."""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_service_support import (
    BALL,
    GRID,
    CountingLearner,
    LearnerRegistry,
    make_options,
    make_trajectory,
    prepare_results,
    train_app,
)
from trainer_server import checkpoints as ckpt
from trainer_server import stats as stats_mod
from trainer_server.app import TrainingApp
from trainer_server.behavior_run import extrinsic_strength
from trainer_server.results import behavior_folder_name
from trainer_server.timers import HierarchicalTimer
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import CuriositySettings, RewardSignalSettings, TrainerSettings


# --------------------------------------------------------------------------- the whole folder


def test_results_folder_has_what_mlagents_users_expect(tmp_path):
    options = make_options(tmp_path, summary_freq=40, checkpoint_interval=50, keep_checkpoints=2, max_steps=10_000)
    app, results, registry = train_app(options, steps_per_chunk=10, chunks=20, behaviors=(BALL, GRID))
    run = tmp_path / "test-run"
    assert app.error is None

    config = yaml.safe_load((run / "configuration.yaml").read_text())
    assert config["default_settings"]["summary_freq"] == 40

    timers = json.loads((run / "run_logs" / "timers.json").read_text())
    assert timers["name"] == "root" and timers["metadata"]["timer_format_version"]
    loop = timers["children"]["training_loop"]
    chunk = loop["children"]["process_chunk"]
    assert chunk["count"] == 40 and chunk["total"] >= chunk["self"] >= 0
    assert "update_policy" in chunk["children"] and "save_checkpoint" in chunk["children"]
    gauges = timers["gauges"]  # ML-Agents' GaugeWriter names: no spaces, .mean and .sum, hidden tags too
    for name in ("3DBall.Policy.Lag", "3DBall.Environment.CumulativeReward", "Grid.Losses.PolicyLoss", "3DBall.IsTraining"):
        assert {f"{name}.mean", f"{name}.sum"} <= set(gauges), sorted(gauges)
    assert gauges["3DBall.Environment.CumulativeReward.mean"]["count"] == 5
    assert gauges["3DBall.Environment.CumulativeReward.sum"]["value"] == 38.0  # the last window: episodes 18 and 20
    assert gauges["3DBall.Step.mean"] == {"value": 190.0, "min": 30.0, "max": 190.0, "count": 5}
    assert not any(" " in name for name in gauges)

    status = json.loads((run / "run_logs" / "training_status.json").read_text())
    metadata = status["metadata"]
    assert list(metadata)[:3] == ["stats_format_version", "mlagents_version", "torch_version"]
    assert metadata["stats_format_version"] == "0.3.0"
    assert (metadata["mlagents_version"], metadata["torch_version"]) == (metadata["tandem_version"], metadata["jax_version"])
    for name in ("3DBall", "Grid"):
        entries = status[name]["checkpoints"]
        # 200 steps: checkpoints at 50, 100, 150, 200 (+ final at 200); keep_checkpoints=2
        assert [c["steps"] for c in entries] == [150, 200]
        for c in entries:  # as ML-Agents: file_path is the ONNX model, the checkpoint is auxiliary
            assert c["file_path"].endswith(f"{name}-{c['steps']}.onnx") and Path(c["file_path"]).is_file()
            assert c["auxillary_file_paths"] == [str(run / name / f"{name}-{c['steps']}.npz")]
            assert c["creation_time"] > 0
        final = status[name]["final_checkpoint"]  # as ML-Agents: the model copied to the run folder
        assert final["steps"] == 200 and final["file_path"] == str(run / f"{name}.onnx")
        assert final["auxillary_file_paths"] == [str(run / name / f"{name}-200.npz")]
        folder = run / name
        assert sorted(p.name for p in folder.glob(f"{name}-*.npz")) == [f"{name}-150.npz", f"{name}-200.npz"]
        assert sorted(p.name for p in folder.glob(f"{name}-*.onnx")) == [f"{name}-150.onnx", f"{name}-200.onnx"]
        assert (run / f"{name}.onnx").is_file()
        state, meta = ckpt.load_file(folder / "checkpoint.npz")
        assert meta["step"] == 200 and state["step"] == 200
        assert list(folder.glob("events.out.tfevents.*"))

    scalars = stats_mod.read_scalars(run / "3DBall")
    rewards = scalars["Environment/Cumulative Reward"]
    assert [s for s, _ in rewards] == [40, 80, 120, 160, 200]
    assert rewards[0][1] == pytest.approx(3.0)  # episodes ended in chunks 2 and 4: mean(2, 4)
    assert scalars["Environment/Episode Length"][0][1] == pytest.approx(10.0)
    assert scalars["Policy/Extrinsic Reward"][0][1] == pytest.approx(3.0)
    assert scalars["Losses/Policy Loss"] and scalars["Policy/Learning Rate"]
    assert scalars["Custom/Speed"][0] == (40, 4.0)  # most recent of the stats side channel values
    assert scalars["Policy/Lag"]
    assert "Is Training" not in scalars and "Step" not in scalars  # gauges only, hidden as in ML-Agents
    histograms = stats_mod.read_histograms(run / "3DBall")
    assert histograms["Environment/Cumulative Reward_hist"][0] == (40, 2, 6.0)
    assert [s for s, _, _ in histograms["Environment/Cumulative Reward_hist"]] == [40, 80, 120, 160, 200]


def test_summaries_are_written_at_the_summary_freq_multiples_crossed(tmp_path):
    options = make_options(tmp_path, summary_freq=25, checkpoint_interval=1000, max_steps=10_000)
    app, _, _ = train_app(options, steps_per_chunk=10, chunks=10, episode_every=1)
    assert app.error is None
    rewards = stats_mod.read_scalars(tmp_path / "test-run" / "3DBall")["Environment/Cumulative Reward"]
    assert [step for step, _ in rewards] == [25, 50, 75, 100]  # not 30, 50, 80, 100
    assert rewards[0][1] == pytest.approx(2.0)  # episodes of chunks 1-3 (the 3rd crossed 25): mean(1, 2, 3)


# --------------------------------------------------------------------------- resume, initialize-from


def test_resume_restores_the_saved_state_exactly(tmp_path):
    options = make_options(tmp_path, checkpoint_interval=1000, max_steps=10_000, buffer_size=20)
    app, results, registry = train_app(options, steps_per_chunk=10, chunks=7)
    saved = registry.learners[BALL.name].state_dict()
    assert saved["step"] == 70 and saved["updates"] == 3
    status = json.loads(results.training_status_path.read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 70

    resumed = LearnerRegistry()
    options2 = make_options(tmp_path, resume=True, checkpoint_interval=1000, max_steps=10_000, buffer_size=20)
    app2 = TrainingApp(options2, prepare_results(options2), learner_factory=resumed)
    snapshot = app2.register_behavior(BALL)
    restored = resumed.learners[BALL.name].state_dict()
    assert restored["step"] == 70 and restored["updates"] == 3
    for key in saved["params"]:
        np.testing.assert_array_equal(restored["params"][key], saved["params"][key])
    np.testing.assert_array_equal(restored["optimizer"]["mu"], saved["optimizer"]["mu"])
    assert snapshot.version == 5  # the policy version continues (4 before: 1 + 3 updates)
    # training continues from step 70 and keeps the earlier checkpoints' history
    app2.start()
    app2.submit("gw", 1, BALL.name, [make_trajectory(BALL, 10)], [])
    app2.stop()
    app2.join(10)
    status = json.loads(results.training_status_path.read_text())
    assert [c["steps"] for c in status["3DBall"]["checkpoints"]] == [70, 80]


def test_a_run_forced_over_an_earlier_one_prunes_only_its_own_checkpoints(tmp_path):
    """ML-Agents' --force keeps the earlier run's checkpoints: keep_checkpoints counts this run's only."""
    train_app(make_options(tmp_path, max_steps=200, checkpoint_interval=50, keep_checkpoints=2), 10, 20)
    folder = tmp_path / "test-run" / "3DBall"
    assert sorted(p.name for p in folder.glob("3DBall-*.npz")) == ["3DBall-150.npz", "3DBall-200.npz"]
    forced = make_options(tmp_path, force=True, max_steps=100, checkpoint_interval=50, keep_checkpoints=2)
    _, results, _ = train_app(forced, 10, 10)
    names = sorted(p.name for p in folder.glob("3DBall-*.npz"))
    assert names == ["3DBall-100.npz", "3DBall-150.npz", "3DBall-200.npz", "3DBall-50.npz"]
    status = json.loads(results.training_status_path.read_text())
    assert [c["steps"] for c in status["3DBall"]["checkpoints"]] == [50, 100]  # this run's, as ML-Agents lists them


def test_initialize_from_loads_weights_and_starts_at_step_zero(tmp_path):
    options = make_options(tmp_path, run_id="base", max_steps=10_000, buffer_size=20)
    _, _, registry = train_app(options, steps_per_chunk=10, chunks=4)
    trained = registry.learners[BALL.name].state_dict()

    fresh = LearnerRegistry()
    options2 = make_options(tmp_path, run_id="finetune", initialize_from="base", max_steps=10_000)
    app = TrainingApp(options2, prepare_results(options2), learner_factory=fresh)
    app.register_behavior(BALL)
    learner = fresh.learners[BALL.name]
    assert learner.step == 0
    np.testing.assert_array_equal(learner.params["body/dense0/kernel"], trained["params"]["body/dense0/kernel"])

    other = LearnerRegistry()
    options3 = make_options(tmp_path, run_id="from-file", init_path=str(tmp_path / "base" / "3DBall" / "checkpoint.npz"))
    app3 = TrainingApp(options3, prepare_results(options3), learner_factory=other)
    app3.register_behavior(BALL)
    np.testing.assert_array_equal(other.learners[BALL.name].params["policy/mu/bias"], trained["params"]["policy/mu/bias"])


def test_the_learners_extra_files_are_saved_beside_each_checkpoint_and_loaded_on_resume(tmp_path):
    options = make_options(tmp_path, checkpoint_interval=1000, max_steps=10_000)
    train_app(options, steps_per_chunk=10, chunks=3)
    assert (tmp_path / "test-run" / "3DBall" / CountingLearner.EXTRA_FILE).read_text() == "30"

    resumed = LearnerRegistry()
    options2 = make_options(tmp_path, resume=True, checkpoint_interval=1000, max_steps=10_000)
    TrainingApp(options2, prepare_results(options2), learner_factory=resumed).register_behavior(BALL)
    assert resumed.learners[BALL.name].loaded_extra == 30

    initialized = LearnerRegistry()  # --initialize-from takes weights only, not the extra files
    options3 = make_options(tmp_path, run_id="finetune", initialize_from="test-run", max_steps=10_000)
    TrainingApp(options3, prepare_results(options3), learner_factory=initialized).register_behavior(BALL)
    assert initialized.learners[BALL.name].loaded_extra is None and initialized.learners[BALL.name].step == 0


def _model_initializer(path: Path, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_a_snapshot_is_built_once_per_version_and_checkpoints_export_the_latest_one(tmp_path):
    # updates at 20, 40 and 60 steps; checkpoints at 30 and 60
    options = make_options(tmp_path, buffer_size=20, checkpoint_interval=30, max_steps=10_000)
    app, _, registry = train_app(options, steps_per_chunk=10, chunks=6)
    assert app.error is None
    learner = registry.learners[BALL.name]
    assert learner.updates == 3
    assert learner.parameter_calls == 1 + learner.updates  # version 1, then one per update; exports fetch nothing
    folder = tmp_path / "test-run" / "3DBall"
    final = learner.params["policy/mu/bias"]
    # step 30 exported version 2 (after the update at 20): two updates of +0.01 behind the end
    np.testing.assert_allclose(_model_initializer(folder / "3DBall-30.onnx", "policy/mu/bias") + 0.02, final, atol=1e-6)
    np.testing.assert_allclose(_model_initializer(folder / "3DBall-60.onnx", "policy/mu/bias"), final, atol=1e-6)


def test_extrinsic_strength_reads_the_extrinsic_signal():
    assert extrinsic_strength(TrainerSettings(reward_signals={"extrinsic": RewardSignalSettings(strength=0.5)})) == 0.5
    assert extrinsic_strength(TrainerSettings(reward_signals={"curiosity": CuriositySettings()})) == 1.0


# --------------------------------------------------------------------------- with the real learners


def _real_options(tmp_path: Path, run_id: str, behavior_yaml: str, **flags):
    """RunOptions of a tiny run of a real learner: ``behavior_yaml`` is the 3DBall section."""
    config = tmp_path / f"{run_id}.yaml"
    config.write_text("behaviors:\n  3DBall:\n" + textwrap.indent(textwrap.dedent(behavior_yaml), "    "))
    args = argparse.Namespace(run_id=run_id, results_dir=str(tmp_path / "results"), seed=3, **flags)
    return load_run_options(config, args)


def _train_real(options, chunks: int) -> TrainingApp:
    """Feeds ``chunks`` chunks of 10 steps to a real learner, each acted by the latest policy
    version as a gateway would (after the previous chunk was taken in), then stops."""
    app = TrainingApp(options, prepare_results(options))
    app.start()
    app.register_behavior(BALL)
    for seq in range(1, chunks + 1):
        version = app._behaviors[BALL.name].version
        trajectory = make_trajectory(BALL, 10, first_reward=float(seq), agent_id=seq, version=version)
        app.submit("gw", seq, BALL.name, [trajectory], [])
        deadline = time.monotonic() + 120
        while app.last_accepted_sequence("gw") < seq and time.monotonic() < deadline:
            time.sleep(0.05)
    app.stop()
    app.join(60)
    assert app.error is None
    return app


_TINY_PPO = """
    trainer_type: ppo
    hyperparameters: {batch_size: 16, buffer_size: 48, num_epoch: 2, learning_rate: 0.001}
    network_settings: {normalize: true, hidden_units: 16, num_layers: 1}
    max_steps: 100000
    time_horizon: 16
    summary_freq: 1000
    checkpoint_interval: 1000
"""
_TINY_SAC = """
    trainer_type: sac
    hyperparameters: {batch_size: 8, buffer_size: 500, buffer_init_steps: 0, steps_per_update: 10, save_replay_buffer: true}
    network_settings: {normalize: false, hidden_units: 8, num_layers: 1}
    max_steps: 100000
    time_horizon: 16
    checkpoint_interval: 1000
"""


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k], f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def test_resume_with_ppo_restores_step_optimizer_and_normalizer_exactly(tmp_path):
    app = _train_real(_real_options(tmp_path, "ppo-run", _TINY_PPO), chunks=7)  # one update at 48, 22 steps left
    saved = app._behaviors[BALL.name].learner.state_dict()
    assert saved["step"] == 70 and saved["update_count"] == 1

    options2 = _real_options(tmp_path, "ppo-run", _TINY_PPO, resume=True)
    app2 = TrainingApp(options2, prepare_results(options2))
    app2.register_behavior(BALL)
    restored = app2._behaviors[BALL.name].learner.state_dict()
    saved_leaves, restored_leaves = dict(_leaves(saved)), dict(_leaves(restored))
    assert saved_leaves.keys() == restored_leaves.keys()
    for name, value in saved_leaves.items():
        np.testing.assert_array_equal(np.asarray(restored_leaves[name]), np.asarray(value), err_msg=name)
    assert any(name.startswith("/opt_state") for name in saved_leaves)
    assert any(name.startswith("/normalizer") for name in saved_leaves)


def test_even_checkpoints_spread_keep_checkpoints_over_max_steps(tmp_path):
    options = make_options(tmp_path, max_steps=120, keep_checkpoints=3, even_checkpoints=True, checkpoint_interval=10)
    _, results, _ = train_app(options, steps_per_chunk=10, chunks=12)
    status = json.loads(results.training_status_path.read_text())
    assert [c["steps"] for c in status["3DBall"]["checkpoints"]] == [40, 80, 120]


def test_sac_save_replay_buffer_is_written_with_checkpoints_and_restored_on_resume(tmp_path):
    from trainer_server.learning.sac import REPLAY_BUFFER_FILE

    app = _train_real(_real_options(tmp_path, "sac-run", _TINY_SAC), chunks=4)
    buffer_file = tmp_path / "results" / "sac-run" / behavior_folder_name(BALL.name) / REPLAY_BUFFER_FILE
    assert buffer_file.is_file()
    saved_size = len(app._behaviors[BALL.name].learner.replay_buffer)
    assert saved_size == 40

    options2 = _real_options(tmp_path, "sac-run", _TINY_SAC, resume=True)
    app2 = TrainingApp(options2, prepare_results(options2))
    app2.register_behavior(BALL)
    assert len(app2._behaviors[BALL.name].learner.replay_buffer) == saved_size


class _SourceLearner(CountingLearner):
    """Remembers which gateway each trajectory came from (``Trajectory.source``)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sources: list[tuple[str, int, int]] = []

    def process_trajectory(self, trajectory) -> None:
        self.sources.append(trajectory.agent_key)
        super().process_trajectory(trajectory)


def test_the_learner_sees_which_gateway_each_trajectory_came_from(tmp_path):
    """Instance indices and agent ids repeat across gateways; per-agent state (PPO's critic
    memories) is keyed by ``agent_key``, so the run labels every trajectory with its gateway."""
    options = make_options(tmp_path, max_steps=10_000)
    registry = LearnerRegistry(_SourceLearner)
    results = prepare_results(options)
    app = TrainingApp(options, results, HierarchicalTimer(), learner_factory=registry)
    app.start()
    app.register_behavior(BALL)
    for gateway in ("gw-a", "gw-b"):  # each gateway's first chunk
        app.submit(gateway, 1, BALL.name, [make_trajectory(BALL, 5, instance=0, agent_id=3)], [])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(getattr(registry.learners.get(BALL.name), "sources", ())) < 2:
        time.sleep(0.02)
    app.stop()
    app.join(20)
    assert registry.learners[BALL.name].sources == [("gw-a", 0, 3), ("gw-b", 0, 3)]
