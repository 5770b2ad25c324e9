"""TrainingApp without a server: the training thread's end (max_steps), --inference, behaviors it cannot train."""

from __future__ import annotations

import json
import time

import pytest

from test_service_support import BALL, LearnerRegistry, make_options, make_trajectory, prepare_results, train_app
from trainer_server.app import TrainingApp, UnsupportedBehaviorError


def test_training_stops_at_max_steps_with_a_final_checkpoint(tmp_path):
    options = make_options(tmp_path, max_steps=50, checkpoint_interval=1000, buffer_size=20)
    app, results, registry = train_app(options, steps_per_chunk=10, chunks=8)
    assert app.completed
    assert registry.learners[BALL.name].step == 50  # chunks after max_steps are dropped
    status = json.loads(results.training_status_path.read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 50


def test_inference_never_updates_and_marks_snapshots_deterministic(tmp_path):
    options = make_options(tmp_path, inference=True, buffer_size=5)
    registry = LearnerRegistry()
    app = TrainingApp(options, prepare_results(options), learner_factory=registry)
    assert app.register_behavior(BALL).deterministic
    app.start()
    app.submit("gw", 1, BALL.name, [make_trajectory(BALL, 10)], [])
    time.sleep(0.3)
    app.stop()
    app.join(10)
    assert registry.learners[BALL.name].updates == 0 and registry.learners[BALL.name].step == 0
    assert not list((tmp_path / "test-run" / "3DBall").glob("*.npz"))


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
