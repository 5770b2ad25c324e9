"""TrainingApp without a server: the training thread's end (max_steps), --inference, behaviors it cannot train."""

from __future__ import annotations

import json
import time

import pytest

from test_service_support import BALL, LearnerRegistry, make_options, make_trajectory, prepare_results, train_app
from trainer_server.app import TrainingApp, UnsupportedBehaviorError
from trainer_server.stats import read_scalars


def test_training_stops_at_max_steps_with_a_final_checkpoint(tmp_path):
    options = make_options(tmp_path, max_steps=50, checkpoint_interval=1000, buffer_size=20)
    app, results, registry = train_app(options, steps_per_chunk=10, chunks=8)
    assert app.completed
    assert registry.learners[BALL.name].step == 50  # chunks after max_steps are dropped
    status = json.loads(results.training_status_path.read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 50


def _wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_inference_counts_steps_and_writes_summaries_past_max_steps_without_training(tmp_path):
    """As mlagents-learn --inference: summaries ("Not Training.") go on past max_steps; nothing is learned or saved."""
    options = make_options(tmp_path, inference=True, buffer_size=5, max_steps=30, summary_freq=20)
    registry = LearnerRegistry()
    app = TrainingApp(options, prepare_results(options), learner_factory=registry)
    app.register_behavior(BALL)
    app.start()
    try:
        for seq in range(1, 7):
            trajectory = make_trajectory(BALL, 10, done=True, episode_return=float(seq))
            app.submit("gw", seq, BALL.name, [trajectory], [])
        folder = tmp_path / "test-run" / "3DBall"
        assert _wait_for(lambda: len(read_scalars(folder).get("Environment/Cumulative Reward", [])) >= 3), (
            read_scalars(folder)
        )
        assert not app.finished.is_set(), "inference runs until stopped, past max_steps"
    finally:
        app.stop()
        app.join(10)
    scalars = read_scalars(folder)
    assert "Is Training" not in scalars  # hidden from TensorBoard, as ML-Agents hides it
    gauges = json.loads((tmp_path / "test-run" / "run_logs" / "timers.json").read_text())["gauges"]
    training = gauges["3DBall.IsTraining.mean"]
    assert training["value"] == 0.0 and training["max"] == 0.0 and training["count"] == 3  # "Not Training."
    assert [step for step, _ in scalars["Environment/Cumulative Reward"]] == [20, 40, 60]
    assert scalars["Environment/Cumulative Reward"][-1][1] == 5.5  # the episodes of chunks 5 and 6
    assert registry.learners[BALL.name].updates == 0 and registry.learners[BALL.name].step == 0
    assert not list(folder.glob("*.npz")) and not app.completed


@pytest.mark.parametrize(("inference", "deterministic"), [(True, None), (True, True), (None, True), (None, None)])
def test_snapshots_are_deterministic_only_when_asked_in_training_and_inference(tmp_path, inference, deterministic):
    """ML-Agents samples unless --deterministic (network_settings.deterministic), in --inference too."""
    options = make_options(tmp_path, inference=inference, deterministic=deterministic)
    app = TrainingApp(options, prepare_results(options), learner_factory=LearnerRegistry())
    assert app.register_behavior(BALL).deterministic is bool(deterministic)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("behavior 3DBall: trainer_type poca is not supported yet", "behavior 3DBall: trainer_type poca is not supported yet"),
        ("hidden_units: must be positive", "behavior 3DBall?team=0: hidden_units: must be positive"),
    ],
)
def test_a_learner_the_factory_cannot_make_is_an_unsupported_behavior(tmp_path, error, message):
    def refuse(spec, settings, seed):
        raise ValueError(error)

    options = make_options(tmp_path)
    app = TrainingApp(options, prepare_results(options), learner_factory=refuse)
    with pytest.raises(UnsupportedBehaviorError) as refused:
        app.register_behavior(BALL)
    assert str(refused.value) == message
    assert app.behaviors() == []


def test_on_policy_trains_only_the_current_version_and_counts_what_it_drops(tmp_path):
    """An on-policy learner: steps of an older policy version are dropped and counted, and so is
    what stays buffered after an update; Policy/Lag of what is trained is 0."""
    from test_service_support import OnPolicyCountingLearner

    from trainer_server import stats as stats_mod

    options = make_options(tmp_path, buffer_size=20, summary_freq=40, max_steps=10_000)
    registry = LearnerRegistry(OnPolicyCountingLearner)
    app = TrainingApp(options, prepare_results(options), learner_factory=registry)
    app.start()
    try:
        app.register_behavior(BALL)
        learner_run = app._behaviors[BALL.name]
        app.submit("gw", 1, BALL.name, [make_trajectory(BALL, 12, version=1)], [])
        app.submit("gw", 2, BALL.name, [make_trajectory(BALL, 12, version=1)], [])  # 24 >= 20: update, 4 left over
        assert _wait_for(lambda: app.last_accepted_sequence("gw") == 2)
        assert learner_run.version == 2 and registry.learners[BALL.name].buffered == 0
        app.submit("gw", 3, BALL.name, [make_trajectory(BALL, 6, version=1, first_reward=7.0)], [])  # stale
        app.submit("gw", 4, BALL.name, [make_trajectory(BALL, 6, version=2, first_reward=8.0)], [])
        assert _wait_for(lambda: app.last_accepted_sequence("gw") == 4)
    finally:
        app.stop()
        app.join(30)
    learner = registry.learners[BALL.name]
    assert [reward for _, _, reward in learner.seen][-1] == 8.0 and 7.0 not in [r for _, _, r in learner.seen]
    assert learner.buffered == 6
    summary = learner_run.stats.summarize()
    assert summary[stats_mod.STALE_STEPS_DROPPED].value == 4 + 6  # summed: what TensorBoard shows
    assert summary[stats_mod.POLICY_LAG].mean == 0.0
