"""Learning test: behavioral cloning from scripted-expert demonstrations, with no environment
interaction, reaches most of the expert's return on the stand-in's 3DBall.

Real processes all the way: the gateway records the stand-in's heuristic (``--heuristic 3DBall
--record-demo``), ``tandem-trainer --demos`` trains offline, the gateway evaluates the exported
ONNX model (``--policy``). ML-Agents' own loader also reads the recorded file when installed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.bench_offline_bc import evaluate, record_expert, train_offline
from tests.common.test_demonstration_file import MLAGENTS_PYTHON
from trainer_server.demonstrations import load_demonstrations

#: fewer, smaller updates than configs/imitation/3DBall_offline_bc.yaml: 5 passes x 3 epochs
CONFIG = """
behaviors:
  3DBall:
    trainer_type: ppo
    hyperparameters: {batch_size: 128, learning_rate: 0.002, learning_rate_schedule: constant}
    network_settings: {normalize: true, hidden_units: 64, num_layers: 2}
    behavioral_cloning: {demo_path: demos, num_epoch: 3}
    max_steps: 170000
    checkpoint_interval: 500000
    summary_freq: 50000
"""


@pytest.mark.slow
def test_cloned_3dball_policy_reaches_most_of_the_expert_return(tmp_path: Path) -> None:
    demos = tmp_path / "demos"
    record_expert(demos, episodes=12)
    loaded = load_demonstrations(demos)
    expert_return = float(loaded.episode_returns().mean())
    assert loaded.num_episodes >= 12 and expert_return > 95.0
    if MLAGENTS_PYTHON.is_file():
        done = subprocess.run(
            [str(MLAGENTS_PYTHON), "-c", "import sys; from mlagents.trainers.demo_loader import demo_to_buffer; "
             "spec, b = demo_to_buffer(sys.argv[1], 1); print(spec.action_spec.continuous_size, b.num_experiences)",
             str(demos / "3DBall.demo")],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        continuous, steps = map(int, done.stdout.split()[-2:])
        assert continuous == 2 and steps >= loaded.num_steps
    config = tmp_path / "bc.yaml"
    config.write_text(CONFIG)
    _, model = train_offline(demos, tmp_path / "results", "bc", config=config)
    cloned, episodes = evaluate(model, episodes=12)
    assert episodes >= 12
    assert cloned >= 0.8 * expert_return, (cloned, expert_return)
