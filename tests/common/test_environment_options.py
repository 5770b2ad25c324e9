"""The environment, engine and server flags both command lines take: one definition, two modes."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from common.environment_options import (
    ENGINE_FLAGS,
    ENVIRONMENT_FLAGS,
    EngineSettings,
    add_environment_arguments,
    add_server_arguments,
    engine_settings_from_args,
    environment_arguments,
)


def parser(overrides: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_environment_arguments(p, overrides=overrides)
    add_server_arguments(p, title="server", listen="127.0.0.1:1")
    return p


def test_gateway_mode_has_mlagents_defaults_and_trainer_mode_has_none() -> None:
    gateway, trainer = vars(parser(False).parse_args([])), vars(parser(True).parse_args([]))
    for flag in ENVIRONMENT_FLAGS + ENGINE_FLAGS:
        assert trainer[flag.dest] is None, flag.name  # a flag not given leaves the trainer's YAML value
    assert engine_settings_from_args(argparse.Namespace(**gateway)) == EngineSettings()
    assert (gateway["num_envs"], gateway["seed"], gateway["base_port"], gateway["env_args"]) == (1, -1, None, [])
    assert gateway["restarts_rate_limit_period_s"] == 60.0 and gateway["no_graphics"] is False
    assert (gateway["listen"], gateway["token"], gateway["log_json"]) == ("127.0.0.1:1", None, False)


def test_both_command_lines_take_every_shared_flag() -> None:
    from gateway.cli import build_parser as gateway_parser
    from trainer_server.cli import build_parser as trainer_parser

    for build in (gateway_parser, trainer_parser):
        options = {option for action in build()._actions for option in action.option_strings}
        for flag in ENVIRONMENT_FLAGS + ENGINE_FLAGS:
            assert flag.name in options, (build.__module__, flag.name)
        assert {"--listen", "--tls-cert", "--tls-key", "--token", "--log-json"} <= options


def test_environment_arguments_reproduce_the_values_on_the_gateway() -> None:
    engine = EngineSettings(width=64, time_scale=5.0, no_graphics=True)
    values = {"env_path": "builds/Game", "num_envs": 2, "seed": 3, "env_args": ("--x",), **dataclasses.asdict(engine)}
    arguments = environment_arguments(values)
    assert "--env-args" not in arguments and "--no-graphics-monitor" not in arguments
    parsed = parser(False).parse_args(arguments)
    assert engine_settings_from_args(parsed) == engine
    assert (parsed.env_path, parsed.num_envs, parsed.seed) == ("builds/Game", 2, 3)


def test_help_states_the_trainer_defaults_in_words() -> None:
    text = parser(True).format_help()
    assert "(default: the built-in stand-in)" not in text  # --env says it in its own words
    assert "(default: 5005)" in text and "(default: 20.0)" in text
    with pytest.raises(SystemExit):
        parser(True).parse_args(["--width", "wide"])


def test_engine_channel_parameters_are_what_mlagents_engine_channel_takes():
    import inspect

    from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel

    accepted = set(inspect.signature(EngineConfigurationChannel.set_configuration_parameters).parameters) - {"self"}
    params = EngineSettings(width=64, time_scale=3.0).channel_parameters()
    assert set(params) <= accepted
    assert params["width"] == 64 and params["time_scale"] == 3.0
