"""``tandem-trainer CONFIG --demos PATH``: behavioral cloning from demonstrations alone, no gateway."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor.onnx_policy import OnnxPolicy
from tests.trainer_server.demo_helpers import OBS, expert, write_expert_demo
from trainer_server import cli

HYBRID = BehaviorSpec("Hybrid", (ObservationSpec("obs", (OBS,)),), ActionSpec(continuous_size=2, discrete_branches=(3, 2)))

CONFIG = """
behaviors:
  Hybrid:
    trainer_type: {trainer_type}
    hyperparameters:
      batch_size: 50
      learning_rate: 0.003
      learning_rate_schedule: constant
    network_settings:
      normalize: true
      hidden_units: 32
    behavioral_cloning:
      demo_path: ignored-with-demos
      num_epoch: 5
    max_steps: 24000
    checkpoint_interval: 12000
    summary_freq: 6000
"""


@pytest.mark.parametrize("trainer_type", ["ppo", "sac"])
def test_offline_cloning_writes_the_usual_results_and_a_model_that_acts_like_the_expert(
    tmp_path: Path, trainer_type: str
) -> None:
    demos = tmp_path / "demos"
    demos.mkdir()
    write_expert_demo(demos / "Hybrid.demo", HYBRID, episodes=8, length=25)  # 200 steps
    config = tmp_path / "bc.yaml"
    config.write_text(CONFIG.format(trainer_type=trainer_type))
    code = cli.main([str(config), "--demos", str(demos), "--run-id", "bc", "--results-dir", str(tmp_path / "results")])
    assert code == cli.EXIT_OK
    run = tmp_path / "results" / "bc"
    assert (run / "configuration.yaml").is_file()
    status = json.loads((run / "run_logs" / "training_status.json").read_text())
    checkpoints = status["Hybrid"]["checkpoints"]
    # 5 epochs x 4 minibatches of 50 = 1000 samples per update: max_steps 24000 = 24 updates
    assert checkpoints[-1]["steps"] == 24000 and (run / "Hybrid" / "Hybrid-24000.onnx").is_file()
    assert list((run / "Hybrid").glob("events.out.tfevents.*"))
    policy = OnnxPolicy.from_file(run / "Hybrid.onnx")
    obs = np.random.default_rng(7).normal(size=(300, OBS)).astype(np.float32)
    out = policy.act([obs], np.zeros((300, 5), bool), np.random.default_rng(0), deterministic=True)
    want_c, want_d = expert(obs)
    assert np.mean(np.abs(out.env_continuous - want_c)) < 0.2
    assert np.mean(out.discrete == want_d) > 0.8


def test_demos_is_refused_with_a_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--demos", str(tmp_path), "--with-gateway"]) == cli.EXIT_CONFIG_ERROR
    assert "--demos trains from demonstrations alone: it cannot be used with --with-gateway" in capsys.readouterr().err


def test_missing_demonstrations_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--demos", str(tmp_path / "nowhere"), "--run-id", "x", "--results-dir", str(tmp_path)])
    assert code == cli.EXIT_FAILED
    assert f"--demos: {tmp_path / 'nowhere'}: no such demonstration file or folder" in capsys.readouterr().err


def test_a_missing_demo_path_is_named_before_training_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bc.yaml"
    config.write_text(CONFIG.format(trainer_type="ppo").replace("ignored-with-demos", str(tmp_path / "none.demo")))
    assert cli.main([str(config), "--run-id", "x", "--results-dir", str(tmp_path)]) == cli.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"{config}: behaviors.Hybrid.behavioral_cloning.demo_path: {tmp_path / 'none.demo'}: no such demonstration" in err
