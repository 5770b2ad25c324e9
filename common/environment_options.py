"""The Unity environment, engine and server flags that both command lines take, defined once.

Why: ``tandem-gateway`` runs the Unity instances; ``tandem-trainer`` reads the same options
(mlagents-learn's flag names: ``--env``, ``--num-envs``, ``--time-scale``...), records them
in ``configuration.yaml`` and passes them to the gateway it launches. Each flag's name,
type, default and help, and the :class:`EngineSettings` type, live here only.

The two command lines differ in one way: the gateway's flags carry their defaults, while the
trainer's default to None, so that only the flags given override the trainer's YAML
(``overrides=True``); the trainer's help then states the default in words.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``--env`` value that means "connect to the Unity Editor" (mlagents' file_name=None).
EDITOR = "editor"

#: The environment variable holding the bearer token that clients must present.
TOKEN_ENV_VAR = "TANDEM_TOKEN"


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """``engine_settings``: how a Unity player runs, sent through the EngineConfigurationChannel.

    ML-Agents' defaults. The ``minimum``/``above`` metadata are the ranges the trainer's
    configuration loader checks (the gateway checks its own, stricter ones at start-up).
    """

    width: int = field(default=84, metadata={"minimum": 1})
    height: int = field(default=84, metadata={"minimum": 1})
    quality_level: int = field(default=5, metadata={"minimum": 0})
    time_scale: float = field(default=20.0, metadata={"above": 0.0})
    target_frame_rate: int = field(default=-1, metadata={"minimum": -1})
    capture_frame_rate: int = field(default=60, metadata={"minimum": 0})
    no_graphics: bool = False
    #: ``--no-graphics-monitor`` of mlagents-learn: recorded by the trainer, not used by the gateway.
    no_graphics_monitor: bool = False

    def channel_parameters(self) -> dict[str, Any]:
        """The EngineConfigurationChannel's keyword arguments (``no_graphics`` is a launch
        argument instead, ``no_graphics_monitor`` is not sent)."""
        return {
            "width": self.width,
            "height": self.height,
            "quality_level": self.quality_level,
            "time_scale": self.time_scale,
            "target_frame_rate": self.target_frame_rate,
            "capture_frame_rate": self.capture_frame_rate,
        }


@dataclass(frozen=True)
class _Flag:
    """One shared flag: ``default`` is the gateway's, ``shown`` the trainer help's words for it."""

    name: str
    dest: str
    help: str
    default: Any = None
    type: type | None = None  # None: a switch (store_true)
    shown: str | None = None
    remainder: bool = False


_ENGINE_DEFAULTS = EngineSettings()

ENVIRONMENT_FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "--env",
        "env_path",
        f"Unity build path, or '{EDITOR}' for the Unity Editor (press Play there); without --env the "
        "gateway runs the built-in stand-in",
        type=str,
    ),
    _Flag("--num-envs", "num_envs", "Unity instances, one worker process each", 1, int),
    _Flag(
        "--base-port",
        "base_port",
        "instance i listens on base-port + i (None: 5005, or 5004 for the Editor, as mlagents)",
        None,
        int,
        shown="5005",
    ),
    _Flag("--seed", "seed", "random seed; Unity instance i gets seed + i; -1 = random", -1, int),
    _Flag("--num-areas", "num_areas", "training areas per instance", 1, int),
    _Flag("--timeout-wait", "timeout_wait", "seconds to wait for a Unity instance to start or answer", 60, int),
    _Flag("--max-lifetime-restarts", "max_lifetime_restarts", "restarts per instance; -1 = unlimited", 10, int),
    _Flag("--restarts-rate-limit-n", "restarts_rate_limit_n", "restarts per period; -1 = unlimited", 1, int),
    _Flag("--restarts-rate-limit-period-s", "restarts_rate_limit_period_s", "rate-limit period, seconds", 60.0, float),
    _Flag(
        "--env-args",
        "env_args",
        "arguments for the Unity executable: everything after this flag (so it must come last)",
        remainder=True,
    ),
)

ENGINE_FLAGS: tuple[_Flag, ...] = tuple(
    _Flag("--" + name.replace("_", "-"), name, text, getattr(_ENGINE_DEFAULTS, name), kind)
    for name, text, kind in (
        ("width", "window width in pixels", int),
        ("height", "window height in pixels", int),
        ("quality_level", "Unity quality level", int),
        ("time_scale", "Unity Time.timeScale", float),
        ("target_frame_rate", "Unity target frame rate", int),
        ("capture_frame_rate", "Unity capture frame rate", int),
        ("no_graphics", "run Unity with -nographics -batchmode", None),
    )
)


def _add(group: Any, flag: _Flag, overrides: bool) -> None:
    text = flag.help
    shown = flag.shown if flag.shown is not None else flag.default
    if overrides and flag.type is not None and shown is not None:
        text += f" (default: {shown})"
    if flag.remainder:
        kwargs: dict[str, Any] = {"nargs": argparse.REMAINDER, "default": None if overrides else []}
    elif flag.type is None:
        kwargs = {"action": "store_true", "default": None if overrides else False}
    else:
        kwargs = {"type": flag.type, "default": None if overrides else flag.default}
    group.add_argument(flag.name, dest=flag.dest, help=text, **kwargs)


def add_environment_arguments(
    parser: argparse.ArgumentParser,
    *,
    overrides: bool,
    environment_title: str = "environment (as mlagents-learn)",
) -> tuple[Any, Any]:
    """Adds the environment and engine flags, in two argument groups.

    Args:
        parser: the command line's parser.
        overrides: True for the trainer: every default is None (a flag not given leaves the
            YAML's value); False for the gateway: ML-Agents' defaults.
        environment_title: the environment group's title.

    Returns:
        ``(environment group, engine group)``, for the command line's own flags.
    """
    environment = parser.add_argument_group(environment_title)
    for flag in ENVIRONMENT_FLAGS:
        _add(environment, flag, overrides)
    engine = parser.add_argument_group("engine settings (EngineConfigurationChannel)")
    for flag in ENGINE_FLAGS:
        _add(engine, flag, overrides)
    return environment, engine


def engine_settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """The :class:`EngineSettings` of parsed gateway arguments (``overrides=False``)."""
    given = {flag.dest: getattr(args, flag.dest) for flag in ENGINE_FLAGS}
    return EngineSettings(**given)


def environment_arguments(values: Mapping[str, Any]) -> list[str]:
    """The shared flags that pass these values on to another command line (the trainer's gateway).

    Args:
        values: flag destination -> value (``env_path``, ``num_envs``, ``width``...); others
            are ignored.

    Returns:
        ``["--num-envs", "2", "--no-graphics", ...]``: unset values (None, False, empty)
        left out, and ``--env-args`` too: it takes the rest of the command line, so the
        caller appends it last.
    """
    arguments: list[str] = []
    for flag in ENVIRONMENT_FLAGS + ENGINE_FLAGS:
        value = values.get(flag.dest)
        if flag.remainder or value is None or value is False or value == "":
            continue
        arguments += [flag.name] if flag.type is None else [flag.name, str(value)]
    return arguments


def add_server_arguments(parser: argparse.ArgumentParser, *, title: str, listen: str) -> Any:
    """Adds the gRPC server flags both services take (listen address, TLS, token, JSON logs).

    Args:
        parser: the command line's parser.
        title: the group's title.
        listen: the default ``host:port``.

    Returns:
        The argument group, for the service's own server flags.
    """
    server = parser.add_argument_group(title)
    server.add_argument(
        "--listen", default=listen, help="host:port of the gRPC server, port 0 = any (default: %(default)s)"
    )
    server.add_argument("--tls-cert", default=None, help="PEM certificate chain file: serve TLS (with --tls-key)")
    server.add_argument("--tls-key", default=None, help="PEM private key file of --tls-cert")
    server.add_argument(
        "--token",
        default=None,
        help=f"bearer token that clients must present (default: ${TOKEN_ENV_VAR}; prefer the variable: "
        "command lines are visible to other users)",
    )
    server.add_argument("--log-json", action="store_true", help="JSON log lines (also TANDEM_LOG_JSON=1)")
    return server


__all__ = [
    "EDITOR",
    "ENGINE_FLAGS",
    "ENVIRONMENT_FLAGS",
    "TOKEN_ENV_VAR",
    "EngineSettings",
    "add_environment_arguments",
    "add_server_arguments",
    "engine_settings_from_args",
    "environment_arguments",
]
