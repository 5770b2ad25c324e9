"""Every visual encoder and the entity attention train through the real processes.

``tandem-trainer CONFIG --with-gateway`` on a stand-in task whose spec matches the config:
ML-Agents' own ``Sorter_curriculum.yaml`` (a BufferSensor) on ``sorter``, and Tandem's
``GridWorld84.yaml`` (84x84 camera, ``nature_cnn``); the other encoders go through the same
learner code (tests/trainer_server/learning/test_networks.py checks that every layer of each
gets gradients, ``bench_ppo_update`` times their updates). The configs
are kept as they are except a budget of a few hundred steps and a buffer small enough that
PPO updates several times within it. The run must finish, report its losses and export an
ONNX model that onnxruntime runs on the task's observations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from trainer_server.stats import read_scalars
from test_train_3dball import run_trainer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainer_server" / "config"))
from config_helpers import SHARED_CONFIGS  # noqa: E402

MAX_STEPS = 288
TIME_LIMIT_S = 540

CASES = {
    # (config, behavior, stand-in task)
    "sorter_curriculum": (SHARED_CONFIGS / "ppo" / "Sorter_curriculum.yaml", "Sorter", "sorter"),
    "nature_cnn_84": (REPO / "configs" / "ppo" / "GridWorld84.yaml", "GridWorld", "gridworld84"),
}


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
@pytest.mark.parametrize("case", sorted(CASES))
def test_config_trains_a_few_hundred_steps_and_exports_a_runnable_model(tmp_path, case):
    source, behavior, task = CASES[case]
    if not source.is_file():
        pytest.skip(f"no {source}")
    config = yaml.safe_load(source.read_text())
    settings = config["behaviors"][behavior]
    settings.update(max_steps=MAX_STEPS, summary_freq=MAX_STEPS // 4, checkpoint_interval=MAX_STEPS)
    settings["hyperparameters"].update(buffer_size=96, batch_size=32)
    config["env_settings"] = {"env_args": ["--task", task]}
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_trainer(path, tmp_path, case, TIME_LIMIT_S, f"{MAX_STEPS} steps")

    run = tmp_path / "results" / case
    scalars = read_scalars(run / behavior)
    assert scalars["Losses/Policy Loss"] and scalars["Losses/Value Loss"], sorted(scalars)
    resolved = yaml.safe_load((run / "configuration.yaml").read_text())
    network = resolved["behaviors"][behavior]["network_settings"]
    assert network["vis_encode_type"] == settings["network_settings"]["vis_encode_type"]
    session = ort.InferenceSession(str(run / f"{behavior}.onnx"), providers=["CPUExecutionProvider"])
    feed = {}
    for given in session.get_inputs():
        shape = [3, *given.shape[1:]]
        feed[given.name] = np.ones(shape, np.float32) if given.name == "action_masks" else np.random.default_rng(0).random(shape, np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    assert outputs["deterministic_discrete_actions"].shape[0] == 3
