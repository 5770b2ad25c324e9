"""ML-Agents' POCA configs train through the real processes.

``tandem-trainer CONFIG --with-gateway`` with each of ML-Agents' ``poca`` configs (except
SoccerTwos, which also needs ``self_play``: tests/e2e/test_self_play_train.py trains it) on
the stand-in task whose behavior it names:
``PushBlockCollab`` on ``pushblockcollab`` (groups of 2), ``DungeonEscape`` on
``dungeonescape`` (groups of 3, one agent removed mid-episode). The configs are kept as
they are except a budget of a few hundred steps and a buffer small enough that POCA
updates within it. The groupmates travel from the gateway's actor to the trainer in every
trajectory; the run must report POCA's losses (the baseline's too) and export the actor as
an ONNX model that onnxruntime runs on the task's observations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from test_train_3dball import run_trainer
from trainer_server.stats import read_scalars

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "trainer_server" / "config"))
from config_helpers import SHARED_CONFIGS  # noqa: E402

MAX_STEPS = 320
TIME_LIMIT_S = 540
POCA_CONFIGS = sorted(p.name for p in (SHARED_CONFIGS / "poca").glob("*.yaml") if "self_play" not in p.read_text())
TASKS = {"PushBlockCollab": "pushblockcollab", "DungeonEscape": "dungeonescape"}


def test_every_poca_config_without_self_play_has_a_task():
    assert {Path(name).stem for name in POCA_CONFIGS} <= set(TASKS)


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
@pytest.mark.skipif(not POCA_CONFIGS, reason=f"no ML-Agents poca configs under {SHARED_CONFIGS}")
@pytest.mark.parametrize("name", POCA_CONFIGS)
def test_mlagents_poca_config_trains_a_few_hundred_steps_on_the_standin(tmp_path, name):
    config = yaml.safe_load((SHARED_CONFIGS / "poca" / name).read_text())
    [(behavior, settings)] = config["behaviors"].items()
    assert settings["trainer_type"] == "poca"
    settings.update(max_steps=MAX_STEPS, summary_freq=MAX_STEPS // 4, checkpoint_interval=MAX_STEPS)
    settings["hyperparameters"].update(buffer_size=96, batch_size=32)
    config["env_settings"] = {"env_args": ["--task", TASKS[behavior]]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    run_trainer(path, tmp_path, "poca", TIME_LIMIT_S, f"{MAX_STEPS} steps")

    run = tmp_path / "results" / "poca"
    scalars = read_scalars(run / behavior)
    for tag in ("Losses/Policy Loss", "Losses/Value Loss", "Losses/Baseline Loss", "Policy/Extrinsic Baseline Estimate"):
        assert scalars[tag] and np.isfinite([v for _, v in scalars[tag]]).all(), (tag, sorted(scalars))
    session = ort.InferenceSession(str(run / f"{behavior}.onnx"), providers=["CPUExecutionProvider"])
    feed = {}
    for given in session.get_inputs():
        shape = [3, *given.shape[1:]]
        feed[given.name] = np.ones(shape, np.float32) if given.name == "action_masks" else np.zeros(shape, np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    assert outputs["deterministic_discrete_actions"].shape == (3, 1)
