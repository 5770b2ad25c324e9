"""The configuration's frozen types: immutable, picklable, exported in ML-Agents' structure, one checkpoint rule."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import yaml
from config_helpers import load_text

from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.config.schema import ConfigError


def test_settings_are_frozen_picklable_and_export_mlagents_structure(tmp_path: Path) -> None:
    options = load_text(tmp_path, "behaviors:\n  3DBall:\n    hyperparameters:\n      batch_size: 64\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.behaviors["3DBall"].max_steps = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.behaviors["New"] = options.behaviors["3DBall"]  # type: ignore[index]
    assert pickle.loads(pickle.dumps(options)) == options
    exported = options.as_dict()
    assert list(exported) == [
        "default_settings",
        "behaviors",
        "env_settings",
        "engine_settings",
        "environment_parameters",
        "checkpoint_settings",
        "torch_settings",
        "debug",
    ]
    behavior = exported["behaviors"]["3DBall"]
    assert list(behavior)[:5] == [
        "trainer_type",
        "hyperparameters",
        "checkpoint_interval",
        "network_settings",
        "reward_signals",
    ]
    assert behavior["hyperparameters"]["batch_size"] == 64
    assert behavior["reward_signals"]["extrinsic"]["network_settings"]["hidden_units"] == 128
    assert type(exported["behaviors"]) is dict  # plain YAML-safe values
    yaml.safe_dump(exported)


def test_even_checkpoints_spreads_checkpoints_over_max_steps(tmp_path: Path) -> None:
    options = load_text(
        tmp_path, "behaviors:\n  A:\n    max_steps: 1000\n    keep_checkpoints: 4\n    even_checkpoints: true\n"
    )
    settings = options.behaviors["A"]
    assert settings.steps_between_checkpoints() == 250
    assert settings.checkpoint_interval == 500000  # as given (the default): configuration.yaml records the file
    assert trainer_settings_from_dict({"checkpoint_interval": 300}).steps_between_checkpoints() == 300
    with pytest.raises(ConfigError, match="keep_checkpoints: must be at least 1 with even_checkpoints"):
        trainer_settings_from_dict({"keep_checkpoints": 0, "even_checkpoints": True})


def test_poca_hyperparameters_are_ppos_without_shared_critic() -> None:
    poca = trainer_settings_from_dict({"trainer_type": "poca"})
    assert "shared_critic" not in poca.as_dict()["hyperparameters"]
    assert "shared_critic" in trainer_settings_from_dict({}).as_dict()["hyperparameters"]
    with pytest.raises(ConfigError, match="hyperparameters.shared_critic: unknown key for trainer_type poca"):
        trainer_settings_from_dict({"trainer_type": "poca", "hyperparameters": {"shared_critic": True}})
    assert poca.hyperparameters != trainer_settings_from_dict({}).hyperparameters  # another class
