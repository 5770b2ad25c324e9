"""The trainer_type -> learner map: what it makes, what it refuses, what it costs to ask."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from learning_helpers import trainer_settings
from trainer_server.learning.learner import Learner
from trainer_server.learning.registry import make_learner, trainer_types
from trainer_server.config.schema import TrainerSettings

SPEC = BehaviorSpec("Ball?team=0", (ObservationSpec("v", (3,)),), ActionSpec(1))
PROTOCOL = ("process_trajectory", "ready", "update", "architecture", "policy_parameters", "state_dict",
            "load_state_dict", "load_weights", "save_extra", "load_extra")


def test_trainer_types_are_the_learners():
    assert trainer_types() == frozenset({"ppo", "sac", "poca"})


@pytest.mark.parametrize("trainer_type", ["ppo", "sac", "poca"])
def test_make_learner_builds_each_trainer_type(trainer_type):
    learner: Learner = make_learner(SPEC, trainer_settings(trainer_type, hidden_units=8, num_layers=1), seed=0)
    assert type(learner).__name__ == f"{trainer_type.upper()}Learner"
    assert learner.step == 0 and not learner.ready()
    for name in PROTOCOL:
        assert callable(getattr(learner, name)), name
    expected = "tanh_gaussian" if trainer_type == "sac" else "gaussian"  # POCA acts with PPO's actor
    assert learner.architecture().continuous_distribution == expected


def test_a_trainer_type_without_learner_names_the_behavior():
    with pytest.raises(ValueError, match=r"behavior Ball\?team=0: trainer_type a2c has no learner"):
        settings = TrainerSettings()
        object.__setattr__(settings, "trainer_type", "a2c")  # what the schema itself would refuse
        make_learner(SPEC, settings, seed=0)


def test_asking_for_the_trainer_types_does_not_import_jax():
    code = "import sys; from trainer_server.learning.registry import trainer_types; trainer_types(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
