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
    # the user's config as shipped (configs/imitation/3DBall_offline_bc.yaml, no normalizer: see
    # there why; with one, 6 of 24 cloned policies fell short of 80%): 30 epochs at a
    # learning rate of 0.001 cloned 18 of 18 policies to the expert's return; a shorter schedule
    # (15 epochs at 0.002) left about one in six short of 80% of it
    _, model = train_offline(demos, tmp_path / "results", "bc")
    cloned, episodes = evaluate(model, episodes=12)
    assert episodes >= 12
    assert cloned >= 0.8 * expert_return, (cloned, expert_return)
