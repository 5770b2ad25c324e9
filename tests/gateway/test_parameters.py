"""Environment parameter values from the trainer's message to the bytes Unity reads.

Each value goes through mlagents-envs' real EnvironmentParametersChannel and is read
back by the stand-in's Unity-side parser, so constants and every sampler kind are
checked as Unity would receive them; every ML-Agents config with
``environment_parameters`` loads and gets its values applied this way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
from mlagents_envs.side_channel.side_channel_manager import SideChannelManager

from gateway.env import parameters as parameters_mod
from gateway.env.parameters import ParameterValue
from trainer_server.config.loading import load_run_options
from trainer_server.environment_parameters import EnvironmentParameterManager
from unity_standin.side_channels import SideChannels
from tandem.v1 import trainer_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
# shared/ beside the checkout (or beside the folder of worktrees that holds it)
SHARED_CONFIGS = next(
    (p / "shared" / "mlagents-configs" for p in REPO_ROOT.parents if (p / "shared" / "mlagents-configs").is_dir()),
    REPO_ROOT.parent / "shared" / "mlagents-configs",
)
CONFIGS_WITH_PARAMETERS = sorted(
    p for p in SHARED_CONFIGS.glob("*/*.yaml") if "environment_parameters:" in p.read_text()
) if SHARED_CONFIGS.is_dir() else []


def unity_side(values: dict[str, ParameterValue]) -> SideChannels:
    """What the stand-in (Unity's side) holds after the channel's bytes for ``values`` arrived."""
    channel = EnvironmentParametersChannel()
    parameters_mod.apply(channel, values)
    received = SideChannels()
    received.process(bytes(SideChannelManager([channel]).generate_side_channel_messages()))
    return received


def test_constants_and_every_sampler_reach_unity_as_set():
    message = trainer_pb2.EnvironmentParameters(generation=1)
    message.parameters["gravity"].constant = 20.0
    message.parameters["mass"].uniform.min_value, message.parameters["mass"].uniform.max_value = 2.0, 3.0
    message.parameters["mass"].seed = 11
    message.parameters["scale"].gaussian.mean, message.parameters["scale"].gaussian.st_dev = 1.5, 0.01
    message.parameters["height"].multirange_uniform.intervals.extend([1.0, 2.0, 7.0, 8.0])
    values = parameters_mod.from_proto(message)
    assert values["mass"] == ParameterValue("uniform", (2.0, 3.0), 11)
    unity = unity_side(values).parameters
    assert unity.get("gravity", 9.81, 3).tolist() == [20.0, 20.0, 20.0]
    mass = unity.get("mass", 1.0, 500)
    assert mass.min() >= 2.0 and mass.max() <= 3.0 and mass.std() > 0.2  # drawn per read, like per episode
    assert abs(unity.get("scale", 1.0, 500).mean() - 1.5) < 0.01
    height = unity.get("height", 0.0, 500)
    assert (((1.0 <= height) & (height <= 2.0)) | ((7.0 <= height) & (height <= 8.0))).all()
    assert ((1.0 <= height) & (height <= 2.0)).any() and ((7.0 <= height) & (height <= 8.0)).any()


def test_same_seed_same_draws_other_seed_other_draws():
    def draws(seed: int) -> np.ndarray:
        return unity_side({"mass": ParameterValue("uniform", (0.0, 1.0), seed)}).parameters.get("mass", 0.0, 20)

    np.testing.assert_array_equal(draws(3), draws(3))
    assert not np.array_equal(draws(3), draws(4))


def test_a_parameter_without_value_is_refused():
    message = trainer_pb2.EnvironmentParameters()
    message.parameters["empty"].seed = 1
    with pytest.raises(ValueError, match="'empty': no value"):
        parameters_mod.from_proto(message)


@pytest.mark.skipif(not CONFIGS_WITH_PARAMETERS, reason=f"no ML-Agents configs in {SHARED_CONFIGS}")
@pytest.mark.parametrize("path", CONFIGS_WITH_PARAMETERS, ids=lambda p: p.name)
def test_every_mlagents_config_with_parameters_loads_and_applies_them(path):
    options = load_run_options(str(path))
    manager = EnvironmentParameterManager(options.environment_parameters, run_seed=1)
    values = parameters_mod.from_proto(manager.message())
    assert set(values) == set(options.environment_parameters)
    unity = unity_side(values).parameters
    for name, parameter in options.environment_parameters.items():
        first = parameter.curriculum[0].value
        if first.sampler_type == "constant":
            assert unity.get(name, np.nan, 1)[0] == pytest.approx(first.value)
        else:
            assert name in unity.samplers and np.isfinite(unity.get(name, np.nan, 10)).all()
