"""``BehaviorRun`` feeds a batch learner (PPO) a chunk's trajectories in batches: the updates,
summaries, checkpoints and ``max_steps`` fall after the same trajectories as one by one."""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

import numpy as np

from test_service_support import BALL, LearnerRegistry, make_trajectory, prepare_results
from trainer_server.app import TrainingApp
from trainer_server.config.loading import load_run_options
from trainer_server.learning.ppo import PPOLearner
from trainer_server.timers import HierarchicalTimer

_PPO = """
    trainer_type: ppo
    hyperparameters: {batch_size: 16, buffer_size: 48, num_epoch: 1, learning_rate: 0.001}
    network_settings: {normalize: true, hidden_units: 8, num_layers: 1}
    max_steps: 300
    time_horizon: 16
    tandem: {coupling: async, max_policy_lag: 1000}
    summary_freq: 50
    checkpoint_interval: 60
"""


class _Recording(PPOLearner):
    """PPO that records the step of each update and its calls of the per-fragment steps."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.update_steps: list[int] = []
        self.calls = 0

    def update(self):
        self.update_steps.append(self.step)
        return super().update()

    def process_trajectory(self, trajectory) -> None:
        self.calls += 1
        super().process_trajectory(trajectory)

    def process_trajectories(self, trajectories) -> None:
        self.calls += 1
        super().process_trajectories(trajectories)


class _OneByOne(_Recording):
    """The same learner without batches: ``BehaviorRun`` then feeds it one trajectory at a time."""

    process_trajectories = None


def _run(tmp_path: Path, learner_class: type, run_id: str) -> tuple[_Recording, dict]:
    """Two chunks of 18 trajectories each (1 to 16 steps, six agents, some episodes ending)
    through a real ``TrainingApp`` (asynchronous coupling: every step is trained); returns the
    learner and training_status.json."""
    config = tmp_path / f"{run_id}.yaml"
    config.write_text("behaviors:\n  3DBall:\n" + textwrap.indent(textwrap.dedent(_PPO), "    "))
    options = load_run_options(config, argparse.Namespace(run_id=run_id, results_dir=str(tmp_path / "results"), seed=3))
    registry = LearnerRegistry(learner_class)
    results = prepare_results(options)
    app = TrainingApp(options, results, HierarchicalTimer(), learner_factory=registry)
    app.start()
    app.register_behavior(BALL)
    lengths = [16, 3, 7, 16, 1, 9, 16, 16, 5, 12, 2, 16, 8, 16, 4, 11, 16, 6]
    for sequence in (1, 2):
        trajectories = [
            make_trajectory(BALL, t, first_reward=0.1 * k + sequence, agent_id=k % 6, done=k % 5 == 4, episode_return=1.0)
            for k, t in enumerate(lengths)
        ]
        app.submit("gw", sequence, BALL.name, trajectories, [])
        deadline = time.monotonic() + 120
        while app.last_accepted_sequence("gw") < sequence and time.monotonic() < deadline:
            time.sleep(0.05)
    app.stop()
    app.join(60)
    assert app.error is None
    return registry.learners[BALL.name], json.loads(results.training_status_path.read_text())


def test_batches_bring_updates_summaries_checkpoints_and_max_steps_after_the_same_trajectories(tmp_path):
    batched, status = _run(tmp_path, _Recording, "batched")
    one, status_one = _run(tmp_path, _OneByOne, "one")
    assert batched.update_steps == one.update_steps and len(batched.update_steps) >= 5
    assert batched.step == one.step >= 300  # max_steps reached in the second chunk: the rest dropped alike
    checkpoints = [c["steps"] for c in status["3DBall"]["checkpoints"]]
    assert checkpoints == [c["steps"] for c in status_one["3DBall"]["checkpoints"]] and len(checkpoints) >= 2
    a, b = batched.state_dict(), one.state_dict()
    np.testing.assert_allclose(a["params"]["actor"]["policy/mu/kernel"], b["params"]["actor"]["policy/mu/kernel"], atol=1e-4)
    # every update, summary (50) and checkpoint (60) ends a batch; between them, one call
    assert batched.calls < one.calls / 2
