"""ML-Agents' configs with ``network_settings.memory`` train through the real processes:
``tandem-trainer CONFIG --with-gateway`` for a few hundred steps on the stand-in's
``hallway`` task (the behavior ``Hallway``, as in ML-Agents' example), and the exported
model follows ML-Agents' recurrent contract. The memories travel from the gateway's actor
to the trainer in every trajectory (``Trajectory.memories``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from common.demonstration_file import DemonstrationWriter, Record
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.actor.onnx_policy import OnnxPolicy
from test_train_3dball import run_trainer
from trainer_server.config.loading import load_run_options
from trainer_server.config.support import unsupported_features
from trainer_server.stats import read_scalars

SHARED = next(
    (p / "shared" / "mlagents-configs" for p in Path(__file__).resolve().parents if (p / "shared" / "mlagents-configs").is_dir()),
    Path("/nonexistent"),
)
MEMORY_CONFIGS = sorted(str(p.relative_to(SHARED)) for p in SHARED.glob("*/*.yaml") if "memory:" in p.read_text())
STEPS = 300
HALLWAY_SPEC = BehaviorSpec("Hallway?team=0", (ObservationSpec("VectorSensor_size3", (3,)),), ActionSpec(0, (2,)))


def _hallway_demo(path: Path, episodes: int = 6, length: int = 12) -> Path:
    """A stand-in demonstration for the hallway's spec (GAIL's ``demo_path``): random
    observations and actions in Unity's record layout (each record stores the previous action)."""
    rng = np.random.default_rng(0)
    spec = BehaviorSpec("Hallway", HALLWAY_SPEC.observations, HALLWAY_SPEC.action_spec)
    with DemonstrationWriter(path, spec) as writer:
        for _ in range(episodes):
            actions = rng.integers(0, 2, (length + 1, 1)).astype(np.int32)
            writer.write_episode([
                Record(observations=(rng.normal(size=3).astype(np.float32),), reward=float(t > 0), done=t == length,
                       max_step_reached=False, continuous_actions=np.zeros(0, np.float32),
                       discrete_actions=actions[t - 1] if t else np.zeros(1, np.int32))
                for t in range(length + 1)
            ])
    return path


@pytest.mark.slow
@pytest.mark.skipif(not MEMORY_CONFIGS, reason=f"no ML-Agents configs with memory under {SHARED}")
@pytest.mark.parametrize("relative", MEMORY_CONFIGS)
def test_mlagents_memory_configs_train_a_few_hundred_steps_on_the_standin(relative, tmp_path):
    options = load_run_options(SHARED / relative)
    refused = {name: unsupported_features(s) for name, s in options.behaviors.items()}
    assert not any(refused.values()), refused  # PPO's memory alone, with gail or behavioral cloning
    config = yaml.safe_load((SHARED / relative).read_text())
    [(name, behavior)] = config["behaviors"].items()
    for section in (behavior.get("reward_signals", {}).get("gail"), behavior.get("behavioral_cloning")):
        if section is not None:  # imitation/Hallway.yaml: the stand-in's own demonstration
            section["demo_path"] = str(_hallway_demo(tmp_path / "ExpertHallway.demo"))
    behavior.update(max_steps=STEPS, summary_freq=100, checkpoint_interval=STEPS)
    # an update within STEPS real steps (sequence padding does not count towards buffer_size)
    behavior["hyperparameters"].update(buffer_size=256, batch_size=128)
    config["env_settings"] = {"env_args": ["--task", "hallway"]}
    path = tmp_path / "memory-e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    run_trainer(path, tmp_path, "memory", 420, f"{STEPS} steps")

    scalars = read_scalars(tmp_path / "results" / "memory" / name)
    assert len(scalars["Losses/Policy Loss"]) >= 1 and np.isfinite([v for _, v in scalars["Losses/Value Loss"]]).all()
    _assert_recurrent_model(tmp_path, name, behavior["network_settings"]["memory"]["memory_size"])


def _assert_recurrent_model(tmp_path: Path, name: str, memory_size: int) -> None:
    """The exported model follows ML-Agents' recurrent contract and acts with the memory."""
    [model_path] = sorted((tmp_path / "results" / "memory").glob(f"{name}.onnx"))
    model = onnx.load(str(model_path))
    assert "recurrent_in" in [i.name for i in model.graph.input]
    assert [o.name for o in model.graph.output][-1] == "recurrent_out"
    policy = OnnxPolicy(model_path.read_bytes(), spec=HALLWAY_SPEC)  # memory_size output = recurrent_in's width
    assert policy.memory_size == memory_size
    out = policy.act([np.zeros((2, 3), np.float32)], np.zeros((2, 2), bool), None, deterministic=True)
    assert out.memories.shape == (2, memory_size) and np.isfinite(out.memories).all()


@pytest.mark.slow
def test_sac_memory_config_trains_through_the_real_processes(tmp_path):
    """``configs/sac/Hallway.yaml`` (SAC with an LSTM in the actor and critics) for a few
    hundred steps through ``tandem-trainer --with-gateway``: gradient steps on sequences of
    the memories the gateway's actor carried, and a recurrent ONNX model."""
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "sac" / "Hallway.yaml").read_text())
    behavior = config["behaviors"]["Hallway"]
    behavior.update(max_steps=STEPS, summary_freq=100, checkpoint_interval=STEPS)
    behavior["hyperparameters"].update(buffer_init_steps=64)
    path = tmp_path / "memory-e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    run_trainer(path, tmp_path, "memory", 420, f"{STEPS} steps")
    scalars = read_scalars(tmp_path / "results" / "memory" / "Hallway")
    assert len(scalars["Losses/Q1 Loss"]) >= 1 and np.isfinite([v for _, v in scalars["Losses/Policy Loss"]]).all()
    _assert_recurrent_model(tmp_path, "Hallway", behavior["network_settings"]["memory"]["memory_size"])
