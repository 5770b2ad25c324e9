"""The results folder: layout, run-id rules, atomic checkpoints, resume, TensorBoard, timers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_service_support import BALL, GRID, LearnerRegistry, make_options, make_trajectory
from trainer_server import checkpoints as ckpt
from trainer_server import stats as stats_mod
from trainer_server.app import TrainingApp
from trainer_server.results import RunDirectoryError, RunResults, behavior_folder_name
from trainer_server.timers import HierarchicalTimer

REPO = Path(__file__).resolve().parents[2]


def _prepare(options) -> RunResults:
    cs = options.checkpoint_settings
    return RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force, inference=cs.inference)


def _train(options, steps_per_chunk: int, chunks: int, *, registry=None, behaviors=(BALL,), episode_every: int = 2):
    """Runs the app (no server) on ``chunks`` chunks per behavior, then stops it."""
    registry = registry or LearnerRegistry()
    results = _prepare(options)
    results.write_configuration(options)
    app = TrainingApp(options, results, HierarchicalTimer(), learner_factory=registry)
    app.start()
    for b in behaviors:
        app.register_behavior(b)
    for seq in range(1, chunks + 1):
        for b in behaviors:
            done = seq % episode_every == 0
            t = make_trajectory(b, steps_per_chunk, first_reward=float(seq), done=done, episode_return=float(seq))
            app.submit(f"gw-{b.name}", seq, b.name, [t], [("Custom/Speed", seq, "most_recent")])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not app.finished.is_set():
        if all(registry.learners[b.name].step >= min(options.default_settings.max_steps, steps_per_chunk * chunks) for b in behaviors):
            break
        time.sleep(0.02)
    app.stop()
    app.join(20)
    return app, results, registry


# --------------------------------------------------------------------------- run-id rules


def test_existing_run_id_is_refused_without_resume_or_force(tmp_path):
    _prepare(make_options(tmp_path)).write_configuration({"a": 1})
    with pytest.raises(RunDirectoryError) as e:
        _prepare(make_options(tmp_path))
    assert "test-run" in str(e.value) and "--resume" in str(e.value) and "--force" in str(e.value)


def test_force_overwrites_and_resume_needs_a_previous_run(tmp_path):
    first = _prepare(make_options(tmp_path))
    (first.run_dir / "old-file").write_text("x")
    forced = _prepare(make_options(tmp_path, force=True))
    assert not (forced.run_dir / "old-file").exists()
    with pytest.raises(RunDirectoryError, match="--resume"):
        _prepare(make_options(tmp_path, run_id="never-ran", resume=True))


def test_behavior_folder_names():
    assert behavior_folder_name("3DBall?team=0") == "3DBall"
    assert behavior_folder_name("3DBall") == "3DBall"
    assert behavior_folder_name("Soccer?team=1") == "Soccer_team1"
    assert behavior_folder_name("a/b:c") == "a_b_c"


# --------------------------------------------------------------------------- the whole folder


def test_results_folder_has_what_mlagents_users_expect(tmp_path):
    options = make_options(tmp_path, summary_freq=40, checkpoint_interval=50, keep_checkpoints=2, max_steps=10_000)
    app, results, registry = _train(options, steps_per_chunk=10, chunks=20, behaviors=(BALL, GRID))
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
    assert {"3DBall.Policy.Lag.mean", "3DBall.Environment.Cumulative Reward.mean", "Grid.Losses.Policy Loss.mean"} <= set(
        timers["gauges"]
    )
    assert timers["gauges"]["3DBall.Environment.Cumulative Reward.mean"]["count"] == 5

    status = json.loads((run / "run_logs" / "training_status.json").read_text())
    assert status["metadata"]["stats_format_version"] == "0.3.0" and "jax_version" in status["metadata"]
    for name in ("3DBall", "Grid"):
        entries = status[name]["checkpoints"]
        # 200 steps: checkpoints at 50, 100, 150, 200 (+ final at 200); keep_checkpoints=2
        assert [c["steps"] for c in entries] == [150, 200]
        for c in entries:  # as ML-Agents: file_path is the ONNX model, the checkpoint is auxiliary
            assert c["file_path"].endswith(f"{name}-{c['steps']}.onnx") and Path(c["file_path"]).is_file()
            assert c["auxillary_file_paths"] == [str(run / name / f"{name}-{c['steps']}.npz")]
            assert c["creation_time"] > 0
        assert status[name]["final_checkpoint"]["steps"] == 200
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
    assert scalars["Is Training"][-1][1] == 1.0


def test_console_summary_line():
    summaries = stats_mod.BehaviorStats()
    for r in (1.0, 2.0, 3.0):
        summaries.add(stats_mod.CUMULATIVE_REWARD, r)
    line, fields = stats_mod.console_summary("3DBall", 12000, 35.25, summaries.summarize(), True)
    assert line == "3DBall. Step: 12000. Time Elapsed: 35.250 s. Mean Reward: 2.000. Std of Reward: 0.816. Training."
    assert fields["mean_reward"] == 2.0 and fields["episodes"] == 3
    line, _ = stats_mod.console_summary("3DBall", 24000, 70.0, {}, False)
    assert line.endswith("No episode was completed since last summary. Not Training.")


def test_stat_aggregations():
    s = stats_mod.BehaviorStats()
    for v in (1.0, 2.0, 6.0):
        s.add("avg", v, stats_mod.Aggregation.parse("average"))
        s.add("last", v, stats_mod.Aggregation.parse("MOST_RECENT"))
        s.add("sum", v, stats_mod.Aggregation.parse("2"))
    out = s.summarize()
    assert (out["avg"].value, out["last"].value, out["sum"].value) == (3.0, 6.0, 9.0)
    assert s.summarize() == {}
    with pytest.raises(ValueError, match="median"):
        stats_mod.Aggregation.parse("median")


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_keeps_nesting_dtypes_and_big_integers(tmp_path):
    import optax

    opt_state = optax.adam(1e-3).init({"w": np.ones(3, np.float32)})
    state = {"opt": opt_state, "step": 2**62 + 1, "lr": 0.1, "none": None, "key": np.array([1, 2], np.uint32),
             "list": [np.zeros((2, 2)), "x", True]}
    ckpt.save_file(tmp_path / "c.npz", state, {"behavior": "3DBall"})
    back, meta = ckpt.load_file(tmp_path / "c.npz")
    assert meta == {"behavior": "3DBall"}
    assert type(back["opt"][0]).__name__ == "ScaleByAdamState"
    np.testing.assert_array_equal(back["opt"][0].mu["w"], opt_state[0].mu["w"])
    assert back["step"] == 2**62 + 1 and back["lr"] == 0.1 and back["none"] is None
    assert back["key"].dtype == np.uint32 and back["list"][1:] == ["x", True]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.npz"
    ckpt.save_file(path, {"a": np.ones(1000)}, {})
    path.write_bytes(path.read_bytes()[:300])  # what a non-atomic writer could leave
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.npz"):
        ckpt.load_file(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_file(tmp_path / "missing")


def test_a_crash_between_temporary_write_and_replace_keeps_the_previous_checkpoint(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "3DBall", "3DBall", keep=5)
    manager.save(100, {"w": np.full(1000, 1.0)}, {"step": 100}, time.time())
    # a separate process writes the next checkpoint and dies (os._exit, no cleanup) right
    # before the rename, as a kill -9 or a power cut would leave it
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from trainer_server import checkpoints as ckpt
        def die(src, dst):
            assert os.path.getsize(src) > 0
            os._exit(17)
        ckpt.atomic_write_bytes(
            ckpt.Path({str(manager.latest_path)!r}), ckpt.dumps({{"w": np.full(1000, 2.0)}}, {{"step": 200}}), replace=die
        )
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 17, done.stderr.decode()
    leftovers = list((tmp_path / "3DBall").glob(".*.tmp"))
    assert leftovers, "the crashed writer should have left its temporary file"
    state, meta = ckpt.load_file(manager.latest_path)
    assert meta["step"] == 100 and float(state["w"][0]) == 1.0
    # the next start cleans the temporaries up
    ckpt.CheckpointManager(tmp_path / "3DBall", "3DBall", keep=5)
    assert not list((tmp_path / "3DBall").glob(".*.tmp"))


# --------------------------------------------------------------------------- resume, initialize-from


def test_resume_restores_the_saved_state_exactly(tmp_path):
    options = make_options(tmp_path, checkpoint_interval=1000, max_steps=10_000, buffer_size=20)
    app, results, registry = _train(options, steps_per_chunk=10, chunks=7)
    saved = registry.learners[BALL.name].state_dict()
    assert saved["step"] == 70 and saved["updates"] == 3
    status = json.loads(results.training_status_path.read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 70

    resumed = LearnerRegistry()
    options2 = make_options(tmp_path, resume=True, checkpoint_interval=1000, max_steps=10_000, buffer_size=20)
    app2 = TrainingApp(options2, _prepare(options2), learner_factory=resumed)
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


def test_initialize_from_loads_weights_and_starts_at_step_zero(tmp_path):
    options = make_options(tmp_path, run_id="base", max_steps=10_000, buffer_size=20)
    _, _, registry = _train(options, steps_per_chunk=10, chunks=4)
    trained = registry.learners[BALL.name].state_dict()

    fresh = LearnerRegistry()
    options2 = make_options(tmp_path, run_id="finetune", initialize_from="base", max_steps=10_000)
    app = TrainingApp(options2, _prepare(options2), learner_factory=fresh)
    app.register_behavior(BALL)
    learner = fresh.learners[BALL.name]
    assert learner.step == 0
    np.testing.assert_array_equal(learner.params["body/dense0/kernel"], trained["params"]["body/dense0/kernel"])

    other = LearnerRegistry()
    options3 = make_options(tmp_path, run_id="from-file", init_path=str(tmp_path / "base" / "3DBall" / "checkpoint.npz"))
    app3 = TrainingApp(options3, _prepare(options3), learner_factory=other)
    app3.register_behavior(BALL)
    np.testing.assert_array_equal(other.learners[BALL.name].params["policy/mu/bias"], trained["params"]["policy/mu/bias"])


def test_training_stops_at_max_steps_with_a_final_checkpoint(tmp_path):
    options = make_options(tmp_path, max_steps=50, checkpoint_interval=1000, buffer_size=20)
    app, results, registry = _train(options, steps_per_chunk=10, chunks=8)
    assert app.completed
    assert registry.learners[BALL.name].step == 50  # chunks after max_steps are dropped
    status = json.loads(results.training_status_path.read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 50


def test_inference_never_updates_and_marks_snapshots_deterministic(tmp_path):
    options = make_options(tmp_path, inference=True, buffer_size=5)
    registry = LearnerRegistry()
    app = TrainingApp(options, _prepare(options), learner_factory=registry)
    assert app.register_behavior(BALL).deterministic
    app.start()
    app.submit("gw", 1, BALL.name, [make_trajectory(BALL, 10)], [])
    time.sleep(0.3)
    app.stop()
    app.join(10)
    assert registry.learners[BALL.name].updates == 0 and registry.learners[BALL.name].step == 0
    assert not list((tmp_path / "test-run" / "3DBall").glob("*.npz"))


# --------------------------------------------------------------------------- with the real PPO learner


def _ppo_options(tmp_path: Path, **flags):
    import argparse

    from trainer_server.settings import load_run_options

    config = tmp_path / "tiny-ppo.yaml"
    config.write_text(
        textwrap.dedent(
            """
            behaviors:
              3DBall:
                trainer_type: ppo
                hyperparameters: {batch_size: 16, buffer_size: 48, num_epoch: 2, learning_rate: 0.001}
                network_settings: {normalize: true, hidden_units: 16, num_layers: 1}
                max_steps: 100000
                time_horizon: 16
                summary_freq: 1000
                checkpoint_interval: 1000
            """
        )
    )
    args = argparse.Namespace(run_id="ppo-run", results_dir=str(tmp_path / "results"), seed=3, **flags)
    return load_run_options(config, args)


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
    pytest.importorskip("trainer_server.learning.ppo")
    options = _ppo_options(tmp_path)
    results = _prepare(options)
    app = TrainingApp(options, results)
    app.start()
    app.register_behavior(BALL)
    for seq in range(1, 8):  # 7 x 10 steps: one update at 48, 22 steps left in the buffer
        app.submit("gw", seq, BALL.name, [make_trajectory(BALL, 10, first_reward=float(seq), agent_id=seq)], [])
    deadline = time.monotonic() + 120
    while app._behaviors[BALL.name].learner.step < 70 and time.monotonic() < deadline:
        time.sleep(0.05)
    app.stop()
    app.join(60)
    assert app.error is None
    saved = app._behaviors[BALL.name].learner.state_dict()
    assert saved["step"] == 70 and saved["update_count"] == 1

    options2 = _ppo_options(tmp_path, resume=True)
    app2 = TrainingApp(options2, _prepare(options2))
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
    _, results, _ = _train(options, steps_per_chunk=10, chunks=12)
    status = json.loads(results.training_status_path.read_text())
    assert [c["steps"] for c in status["3DBall"]["checkpoints"]] == [40, 80, 120]


def _sac_options(tmp_path: Path, **flags):
    import argparse

    from trainer_server.settings import load_run_options

    config = tmp_path / "tiny-sac.yaml"
    config.write_text(
        textwrap.dedent(
            """
            behaviors:
              3DBall:
                trainer_type: sac
                hyperparameters: {batch_size: 8, buffer_size: 500, buffer_init_steps: 0, steps_per_update: 10, save_replay_buffer: true}
                network_settings: {normalize: false, hidden_units: 8, num_layers: 1}
                max_steps: 100000
                time_horizon: 16
                checkpoint_interval: 1000
            """
        )
    )
    args = argparse.Namespace(run_id="sac-run", results_dir=str(tmp_path / "results"), seed=3, **flags)
    return load_run_options(config, args)


def test_sac_save_replay_buffer_is_written_with_checkpoints_and_restored_on_resume(tmp_path):
    pytest.importorskip("trainer_server.learning.sac")
    from trainer_server.learning.sac import REPLAY_BUFFER_FILE

    options = _sac_options(tmp_path)
    app = TrainingApp(options, _prepare(options))
    app.start()
    app.register_behavior(BALL)
    for seq in range(1, 5):
        app.submit("gw", seq, BALL.name, [make_trajectory(BALL, 10, first_reward=float(seq), agent_id=seq)], [])
    deadline = time.monotonic() + 120
    while app._behaviors[BALL.name].learner.step < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    app.stop()
    app.join(60)
    assert app.error is None
    buffer_file = tmp_path / "results" / "sac-run" / behavior_folder_name(BALL.name) / REPLAY_BUFFER_FILE
    assert buffer_file.is_file()
    saved_size = len(app._behaviors[BALL.name].learner.replay_buffer)
    assert saved_size == 40

    options2 = _sac_options(tmp_path, resume=True)
    app2 = TrainingApp(options2, _prepare(options2))
    app2.register_behavior(BALL)
    assert len(app2._behaviors[BALL.name].learner.replay_buffer) == saved_size
