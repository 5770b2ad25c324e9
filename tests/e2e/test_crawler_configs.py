"""ML-Agents' Crawler configs (``ppo/``, ``sac/`` and ``imitation/Crawler.yaml``: GAIL with
behavioral cloning) train through the real processes: ``tandem-trainer CONFIG --with-gateway``
for a few hundred steps on the stand-in's ``crawler`` task (Crawler's spec: 172 observations,
20 continuous actions). The configs are kept as they are except a budget of a few hundred
steps, a buffer, batch and time horizon small enough that updates happen within it, and
``demo_path`` pointing to a demonstration of Crawler's spec written here (the example's
``ExpertCrawler.demo`` is a Unity asset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from common.demonstration_file import DemonstrationWriter, Record
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor.onnx_policy import OnnxPolicy
from test_train_3dball import run_trainer
from tests.trainer_server.config.config_helpers import SHARED_CONFIGS
from trainer_server.config.loading import load_run_options
from trainer_server.config.support import unsupported_features
from trainer_server.stats import read_scalars

CRAWLER_SPEC = BehaviorSpec("Crawler", (ObservationSpec("VectorSensor_size172", (172,)),), ActionSpec(continuous_size=20))
CONFIGS = sorted(str(p.relative_to(SHARED_CONFIGS)) for p in SHARED_CONFIGS.glob("*/Crawler.yaml"))
STEPS = 300


def _crawler_demo(path: Path, episodes: int = 3, length: int = 40) -> Path:
    """A demonstration of Crawler's spec (random observations and actions; Unity's record
    layout, each record storing the previous action)."""
    rng = np.random.default_rng(0)
    with DemonstrationWriter(path, CRAWLER_SPEC) as writer:
        for _ in range(episodes):
            actions = rng.uniform(-1, 1, (length + 1, 20)).astype(np.float32)
            writer.write_episode([
                Record(observations=(rng.normal(size=172).astype(np.float32),), reward=0.5, done=t == length,
                       max_step_reached=False, continuous_actions=actions[t - 1] if t else np.zeros(20, np.float32),
                       discrete_actions=np.zeros(0, np.int32))
                for t in range(length + 1)
            ])
    return path


@pytest.mark.slow
@pytest.mark.skipif(not CONFIGS, reason=f"no ML-Agents Crawler configs under {SHARED_CONFIGS}")
@pytest.mark.parametrize("relative", CONFIGS)
def test_mlagents_crawler_configs_train_a_few_hundred_steps_on_the_standin(relative, tmp_path):
    options = load_run_options(SHARED_CONFIGS / relative)
    assert not any(unsupported_features(s) for s in options.behaviors.values())
    config = yaml.safe_load((SHARED_CONFIGS / relative).read_text())
    behavior = config["behaviors"]["Crawler"]
    for section in (behavior.get("reward_signals", {}).get("gail"), behavior.get("behavioral_cloning")):
        if section is not None:
            section["demo_path"] = str(_crawler_demo(tmp_path / "ExpertCrawler.demo"))
    behavior.update(max_steps=STEPS, summary_freq=100, checkpoint_interval=STEPS, time_horizon=32)
    if behavior["trainer_type"] == "sac":
        behavior["hyperparameters"].update(buffer_size=1000, batch_size=64)
    else:
        behavior["hyperparameters"].update(buffer_size=128, batch_size=64)
    config["env_settings"] = {"env_args": ["--task", "crawler"]}
    path = tmp_path / "crawler-e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    run_trainer(path, tmp_path, "crawler", 600, f"{STEPS} steps")

    scalars = read_scalars(tmp_path / "results" / "crawler" / "Crawler")
    losses = scalars.get("Losses/Policy Loss") or scalars.get("Losses/Q1 Loss")
    assert losses and np.isfinite([v for _, v in losses]).all()
    if "gail" in behavior.get("reward_signals", {}):
        assert scalars["Losses/GAIL Loss"] and scalars["Policy/GAIL Expert Estimate"]  # the discriminator trained
    if "behavioral_cloning" in behavior:
        assert scalars["Losses/Pretraining Loss"]
    policy = OnnxPolicy((tmp_path / "results" / "crawler" / "Crawler.onnx").read_bytes(), spec=CRAWLER_SPEC)
    out = policy.act([np.zeros((2, 172), np.float32)], None, None, deterministic=True)
    assert out.continuous.shape == (2, 20) and np.isfinite(out.continuous).all()
