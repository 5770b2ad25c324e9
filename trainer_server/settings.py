"""ML-Agents trainer configuration (YAML + command line) as typed, frozen, validated settings.

Why: ML-Agents users bring their ``mlagents-learn`` YAML files; Tandem must read them as
they are (``behaviors``, ``default_settings``, ``env_settings``, ``engine_settings``,
``checkpoint_settings``, ``environment_parameters``, ``torch_settings``, ``debug``), with
ML-Agents' defaults for every omitted key, and refuse anything it does not understand
with a message that names the file and the key. Everything downstream (the learners,
the service, the results folder) then works on plain frozen objects whose attribute
names are ML-Agents' own (``hyperparameters.batch_size``, ``network_settings.hidden_units``,
``checkpoint_settings.run_id``...), so ML-Agents' documentation applies unchanged.

Two steps, on purpose:

* :func:`load_run_options` parses and validates every ML-Agents feature (Release 21,
  ``mlagents`` 1.0.0), including the ones Tandem cannot train yet, so that any valid
  ML-Agents file loads (and ``tandem-trainer --dry-run`` can show its resolved values).
* :func:`check_supported` raises :class:`NotSupportedError` for valid features Tandem
  cannot train yet (``poca``, ``memory``, ``gail``...). The trainer calls it before it
  starts; the service calls :func:`check_behavior_supported` for behaviors that first
  appear at run time and fall back to ``default_settings``.

Numbers: PyYAML reads YAML 1.1, where ``1.0e7`` (no sign in the exponent) and ``1e-3``
(no dot) are *strings*. Numeric fields accept such strings, and integer fields accept
integral floats such as ``5.0e5``, as ``mlagents-learn`` does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib.util
import math
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from common.logging import get_logger


def _log() -> Any:
    """This module's logger, looked up when used: entry points configure structlog after
    importing this module, and a logger bound at import would keep structlog's defaults."""
    return get_logger("trainer_server.settings")


__all__ = [
    "BehavioralCloningSettings",
    "CheckpointSettings",
    "CompletionCriteriaSettings",
    "ConfigError",
    "ConstantSettings",
    "CuriositySettings",
    "EngineSettings",
    "EnvSettings",
    "EnvironmentParameterSettings",
    "EnvironmentSettings",
    "FrozenMap",
    "GAILSettings",
    "GaussianSettings",
    "HyperparamSettings",
    "Lesson",
    "MemorySettings",
    "MultiRangeUniformSettings",
    "NetworkSettings",
    "NotSupportedError",
    "POCASettings",
    "PPOSettings",
    "RNDSettings",
    "RewardSignalSettings",
    "RunOptions",
    "SACSettings",
    "SUPPORTED_REWARD_SIGNALS",
    "SUPPORTED_TRAINER_TYPES",
    "SUPPORTED_VIS_ENCODE_TYPES",
    "SamplerSettings",
    "SelfPlaySettings",
    "ServerSettings",
    "TorchSettings",
    "TrainerSettings",
    "UniformSettings",
    "behavior_base_name",
    "check_behavior_supported",
    "check_supported",
    "load_run_options",
    "server_settings_from_args",
    "supported_trainer_types",
    "trainer_settings_from_dict",
    "unsupported_features",
]


# ERRORS ##################################################################################


class ConfigError(ValueError):
    """A configuration that cannot be used: the message names the file and the key path."""


class NotSupportedError(ConfigError):
    """A valid ML-Agents feature that Tandem cannot train yet."""


# VOCABULARY ##############################################################################

TrainerType = Literal["ppo", "sac", "poca"]
ScheduleType = Literal["linear", "constant"]
EncoderType = Literal["simple", "nature_cnn", "resnet", "match3", "fully_connected"]
ConditioningType = Literal["hyper", "none"]
MeasureType = Literal["reward", "progress"]

TRAINER_TYPES: tuple[str, ...] = ("ppo", "sac", "poca")
SCHEDULE_TYPES: tuple[str, ...] = ("linear", "constant")
ENCODER_TYPES: tuple[str, ...] = ("simple", "nature_cnn", "resnet", "match3", "fully_connected")
CONDITIONING_TYPES: tuple[str, ...] = ("hyper", "none")
MEASURE_TYPES: tuple[str, ...] = ("reward", "progress")
REWARD_SIGNAL_TYPES: tuple[str, ...] = ("extrinsic", "gail", "curiosity", "rnd")

#: what :func:`check_supported` lets through; everything else valid is "not supported yet".
#: PPO is Tandem's core algorithm; other trainer types count once their learner module exists
#: (see :func:`supported_trainer_types`).
SUPPORTED_TRAINER_TYPES: frozenset[str] = frozenset({"ppo"})
_OPTIONAL_TRAINER_MODULES: dict[str, str] = {"sac": "trainer_server.learning.sac"}
SUPPORTED_REWARD_SIGNALS: frozenset[str] = frozenset({"extrinsic"})
SUPPORTED_VIS_ENCODE_TYPES: frozenset[str] = frozenset({"simple"})

# ML-Agents' command-line defaults (mlagents-learn), also the defaults of the YAML sections
DEFAULT_RUN_ID = "ppo"
DEFAULT_RESULTS_DIR = "results"
DEFAULT_BASE_PORT = 5005  # mlagents_envs UnityEnvironment.BASE_ENVIRONMENT_PORT
DEFAULT_SEED = -1
DEFAULT_LISTEN = "127.0.0.1:5755"
TOKEN_ENV_VAR = "TANDEM_TOKEN"


# IMMUTABLE MAPPING #######################################################################

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(dict[K, V]):
    """A read-only dict for mapping fields of frozen settings (``behaviors``, ``reward_signals``).

    A dict subclass so that code written for plain dicts keeps working; every mutating
    method raises ``TypeError``. Picklable and deep-copyable.
    """

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("settings are frozen: use dataclasses.replace() to derive new settings")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __repr__(self) -> str:
        return f"FrozenMap({dict.__repr__(self)})"

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))

    def __reduce__(self) -> tuple:
        return (FrozenMap, (dict(self),))

    def __copy__(self) -> FrozenMap[K, V]:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenMap[K, V]:
        return FrozenMap({copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()})


def _freeze_map(value: Mapping | None) -> FrozenMap | None:
    if value is None or isinstance(value, FrozenMap):
        return value
    return FrozenMap(value)


# NETWORK, HYPERPARAMETERS, REWARD SIGNALS ################################################


@dataclass(frozen=True, kw_only=True)
class MemorySettings:
    """Recurrent memory (LSTM) of a behavior's networks (``network_settings.memory``)."""

    sequence_length: int = 64
    memory_size: int = 128


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """Architecture of a behavior's policy/value networks (``network_settings``)."""

    normalize: bool = False
    hidden_units: int = 128
    num_layers: int = 2
    vis_encode_type: EncoderType = "simple"
    memory: MemorySettings | None = None
    goal_conditioning_type: ConditioningType = "hyper"
    deterministic: bool = False


@dataclass(frozen=True, kw_only=True)
class BehavioralCloningSettings:
    """Behavioral cloning from a demonstration file, alongside PPO/SAC."""

    demo_path: str
    steps: int = 0
    strength: float = 1.0
    samples_per_update: int = 0
    num_epoch: int | None = None  # None: the trainer's num_epoch
    batch_size: int | None = None  # None: the trainer's batch_size


@dataclass(frozen=True, kw_only=True)
class PPOSettings:
    """``hyperparameters`` of ``trainer_type: ppo``.

    Schedules (``linear`` decays to 0 at ``max_steps``, ``constant`` keeps the value):
    ``beta_schedule`` and ``epsilon_schedule`` follow ``learning_rate_schedule`` when
    the file gives only the latter, as in ML-Agents.
    """

    batch_size: int = 1024
    buffer_size: int = 10240
    learning_rate: float = 3.0e-4
    beta: float = 5.0e-3
    epsilon: float = 0.2
    lambd: float = 0.95
    num_epoch: int = 3
    shared_critic: bool = False
    learning_rate_schedule: ScheduleType = "linear"
    beta_schedule: ScheduleType = "linear"
    epsilon_schedule: ScheduleType = "linear"


@dataclass(frozen=True, kw_only=True)
class POCASettings:
    """``hyperparameters`` of ``trainer_type: poca`` (PPO's, without ``shared_critic``)."""

    batch_size: int = 1024
    buffer_size: int = 10240
    learning_rate: float = 3.0e-4
    beta: float = 5.0e-3
    epsilon: float = 0.2
    lambd: float = 0.95
    num_epoch: int = 3
    learning_rate_schedule: ScheduleType = "linear"
    beta_schedule: ScheduleType = "linear"
    epsilon_schedule: ScheduleType = "linear"


@dataclass(frozen=True, kw_only=True)
class SACSettings:
    """``hyperparameters`` of ``trainer_type: sac``.

    ``reward_signal_steps_per_update`` defaults to ``steps_per_update``.
    """

    learning_rate: float = 3.0e-4
    learning_rate_schedule: ScheduleType = "constant"
    batch_size: int = 128
    buffer_size: int = 50000
    buffer_init_steps: int = 0
    tau: float = 0.005
    steps_per_update: float = 1.0
    save_replay_buffer: bool = False
    init_entcoef: float = 1.0
    reward_signal_steps_per_update: float = None  # type: ignore[assignment]  # -> steps_per_update

    def __post_init__(self) -> None:
        if self.reward_signal_steps_per_update is None:
            object.__setattr__(self, "reward_signal_steps_per_update", float(self.steps_per_update))


HyperparamSettings = PPOSettings | SACSettings | POCASettings
_HYPERPARAMETER_CLASSES: dict[str, type] = {"ppo": PPOSettings, "sac": SACSettings, "poca": POCASettings}


@dataclass(frozen=True, kw_only=True)
class RewardSignalSettings:
    """A reward signal: ``extrinsic`` uses this class; the intrinsic ones extend it."""

    gamma: float = 0.99
    strength: float = 1.0
    network_settings: NetworkSettings = field(default_factory=NetworkSettings)


@dataclass(frozen=True, kw_only=True)
class GAILSettings(RewardSignalSettings):
    """``reward_signals.gail``: adversarial imitation from a demonstration file."""

    learning_rate: float = 3e-4
    encoding_size: int | None = None
    use_actions: bool = False
    use_vail: bool = False
    demo_path: str


@dataclass(frozen=True, kw_only=True)
class CuriositySettings(RewardSignalSettings):
    """``reward_signals.curiosity``: intrinsic curiosity module."""

    learning_rate: float = 3e-4
    encoding_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class RNDSettings(RewardSignalSettings):
    """``reward_signals.rnd``: random network distillation."""

    learning_rate: float = 1e-4
    encoding_size: int | None = None


_REWARD_SIGNAL_CLASSES: dict[str, type] = {
    "extrinsic": RewardSignalSettings,
    "gail": GAILSettings,
    "curiosity": CuriositySettings,
    "rnd": RNDSettings,
}


@dataclass(frozen=True, kw_only=True)
class SelfPlaySettings:
    """``self_play``: adversarial training against past snapshots.

    ``team_change`` defaults to five times ``save_steps``.
    """

    save_steps: int = 20000
    team_change: int = None  # type: ignore[assignment]  # -> 5 * save_steps
    swap_steps: int = 2000
    window: int = 10
    play_against_latest_model_ratio: float = 0.5
    initial_elo: float = 1200.0

    def __post_init__(self) -> None:
        if self.team_change is None:
            object.__setattr__(self, "team_change", 5 * int(self.save_steps))


def _default_reward_signals() -> FrozenMap[str, RewardSignalSettings]:
    return FrozenMap({"extrinsic": RewardSignalSettings()})


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    """One behavior's trainer section (an entry of ``behaviors:`` or ``default_settings:``).

    ``hyperparameters`` is :class:`PPOSettings`, :class:`SACSettings` or
    :class:`POCASettings` according to ``trainer_type`` (filled with that trainer's
    defaults when not given). ``reward_signals`` maps the signal name (``extrinsic``,
    ``gail``, ``curiosity``, ``rnd``) to its settings.
    """

    trainer_type: TrainerType = "ppo"
    hyperparameters: HyperparamSettings = None  # type: ignore[assignment]  # -> the trainer's defaults
    checkpoint_interval: int = 500000
    network_settings: NetworkSettings = field(default_factory=NetworkSettings)
    reward_signals: Mapping[str, RewardSignalSettings] = field(default_factory=_default_reward_signals)
    init_path: str | None = None
    keep_checkpoints: int = 5
    even_checkpoints: bool = False
    max_steps: int = 500000
    time_horizon: int = 64
    summary_freq: int = 50000
    threaded: bool = False
    self_play: SelfPlaySettings | None = None
    behavioral_cloning: BehavioralCloningSettings | None = None

    def __post_init__(self) -> None:
        if self.hyperparameters is None:
            object.__setattr__(self, "hyperparameters", _HYPERPARAMETER_CLASSES[self.trainer_type]())
        object.__setattr__(self, "reward_signals", _freeze_map(self.reward_signals))

    def as_dict(self) -> dict[str, Any]:
        """Plain dict as ML-Agents writes it in ``configuration.yaml``."""
        return _to_plain(self)


# ENVIRONMENT PARAMETERS ##################################################################


@dataclass(frozen=True, kw_only=True)
class ConstantSettings:
    """A fixed environment parameter value (a plain number in the YAML)."""

    sampler_type: ClassVar[str] = "constant"
    seed: int = DEFAULT_SEED
    value: float = 0.0


@dataclass(frozen=True, kw_only=True)
class UniformSettings:
    """``sampler_type: uniform``: a value drawn in [min_value, max_value] at each reset."""

    sampler_type: ClassVar[str] = "uniform"
    seed: int = DEFAULT_SEED
    min_value: float = 0.0
    max_value: float = 1.0


@dataclass(frozen=True, kw_only=True)
class GaussianSettings:
    """``sampler_type: gaussian``: a value drawn from N(mean, st_dev) at each reset."""

    sampler_type: ClassVar[str] = "gaussian"
    seed: int = DEFAULT_SEED
    mean: float = 1.0
    st_dev: float = 1.0


@dataclass(frozen=True, kw_only=True)
class MultiRangeUniformSettings:
    """``sampler_type: multirangeuniform``: uniform over a union of [min, max] intervals."""

    sampler_type: ClassVar[str] = "multirangeuniform"
    seed: int = DEFAULT_SEED
    intervals: tuple[tuple[float, float], ...] = ((0.0, 1.0),)


SamplerSettings = ConstantSettings | UniformSettings | GaussianSettings | MultiRangeUniformSettings
_SAMPLER_CLASSES: dict[str, type] = {
    "constant": ConstantSettings,
    "uniform": UniformSettings,
    "gaussian": GaussianSettings,
    "multirangeuniform": MultiRangeUniformSettings,
}


@dataclass(frozen=True, kw_only=True)
class CompletionCriteriaSettings:
    """When a curriculum lesson is complete.

    ``measure: reward`` compares the behavior's mean episode reward (smoothed when
    ``signal_smoothing``) with ``threshold``; ``measure: progress`` compares the training
    progress (step / max_steps, so ``threshold`` must be in [0, 1]).
    """

    behavior: str
    measure: MeasureType = "reward"
    min_lesson_length: int = 0
    signal_smoothing: bool = True
    threshold: float = 0.0
    require_reset: bool = False


@dataclass(frozen=True, kw_only=True)
class Lesson:
    """One lesson of a curriculum: the parameter's value (or sampler) until completion."""

    value: SamplerSettings
    name: str
    completion_criteria: CompletionCriteriaSettings | None = None


@dataclass(frozen=True, kw_only=True)
class EnvironmentParameterSettings:
    """One environment parameter: an ordered curriculum of lessons.

    A plain value or a sampler in the YAML becomes a single lesson named after the
    parameter, without completion criteria, as in ML-Agents.
    """

    curriculum: tuple[Lesson, ...]


# RUN-LEVEL SECTIONS ######################################################################


@dataclass(frozen=True, kw_only=True)
class CheckpointSettings:
    """``checkpoint_settings``: where results go and how a run starts (--run-id, --resume...)."""

    run_id: str = DEFAULT_RUN_ID
    initialize_from: str | None = None
    load_model: bool = False
    resume: bool = False
    force: bool = False
    train_model: bool = False
    inference: bool = False
    results_dir: str = DEFAULT_RESULTS_DIR

    @property
    def write_path(self) -> Path:
        """``results/<run-id>``: this run's results folder."""
        return Path(self.results_dir) / self.run_id

    @property
    def maybe_init_path(self) -> Path | None:
        """``results/<initialize_from>`` when ``--initialize-from`` is given."""
        return Path(self.results_dir) / self.initialize_from if self.initialize_from is not None else None

    @property
    def run_logs_dir(self) -> Path:
        """``results/<run-id>/run_logs``: timers.json, training_status.json."""
        return self.write_path / "run_logs"


@dataclass(frozen=True, kw_only=True)
class EnvSettings:
    """``env_settings``: the Unity environment(s) (used by the gateway that Tandem launches)."""

    env_path: str | None = None
    env_args: tuple[str, ...] | None = None
    base_port: int = DEFAULT_BASE_PORT
    num_envs: int = 1
    num_areas: int = 1
    timeout_wait: int = 60
    seed: int = DEFAULT_SEED
    max_lifetime_restarts: int = 10
    restarts_rate_limit_n: int = 1
    restarts_rate_limit_period_s: int = 60


#: ML-Agents' name for :class:`EnvSettings`
EnvironmentSettings = EnvSettings


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """``engine_settings``: how the Unity player runs (window size, time scale...)."""

    width: int = 84
    height: int = 84
    quality_level: int = 5
    time_scale: float = 20.0
    target_frame_rate: int = -1
    capture_frame_rate: int = 60
    no_graphics: bool = False
    no_graphics_monitor: bool = False


@dataclass(frozen=True, kw_only=True)
class TorchSettings:
    """``torch_settings``: accepted and recorded for ML-Agents compatibility.

    Tandem trains with JAX, which picks its own device; ``device`` is not used.
    """

    device: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything ``mlagents-learn`` reads from its YAML and command line, resolved.

    Use :meth:`behavior_settings` to get a behavior's trainer settings: it applies
    ML-Agents' rules (listed section, else ``default_settings``, else ML-Agents' defaults).
    """

    default_settings: TrainerSettings | None = None
    behaviors: Mapping[str, TrainerSettings] = field(default_factory=FrozenMap)
    env_settings: EnvSettings = field(default_factory=EnvSettings)
    engine_settings: EngineSettings = field(default_factory=EngineSettings)
    environment_parameters: Mapping[str, EnvironmentParameterSettings] | None = None
    checkpoint_settings: CheckpointSettings = field(default_factory=CheckpointSettings)
    torch_settings: TorchSettings = field(default_factory=TorchSettings)
    debug: bool = False
    # Not ML-Agents sections: where the options came from, and the settings used for a
    # behavior that is neither listed nor covered by default_settings.
    config_path: str | None = field(default=None, compare=False, metadata={"export": False})
    fallback_settings: TrainerSettings = field(
        default_factory=TrainerSettings, repr=False, compare=False, metadata={"export": False}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "behaviors", _freeze_map(self.behaviors))
        object.__setattr__(self, "environment_parameters", _freeze_map(self.environment_parameters))

    def behavior_settings(self, name: str) -> TrainerSettings:
        """Trainer settings of a behavior, by fully qualified or plain behavior name.

        Args:
            name: ``3DBall?team=0`` or ``3DBall``; the ``?team=`` part is ignored.

        Returns:
            The listed section; else ``default_settings`` when the file has one; else
            ML-Agents' defaults, logged as a warning. (mlagents-learn warns the same way
            when it runs without a file, but refuses such a behavior when a file without
            ``default_settings`` was given; Tandem trains it with the defaults instead.)
        """
        base = behavior_base_name(name)
        if base in self.behaviors:
            return self.behaviors[base]
        if self.default_settings is not None:
            return self.default_settings
        _log().warning(
            "behavior not in the trainer configuration, using ML-Agents' default settings",
            behavior=base,
            config=self.config_path,
        )
        return self.fallback_settings

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the resolved options, structured as ML-Agents' ``configuration.yaml``."""
        return _to_plain(self)

    def to_yaml(self) -> str:
        """:meth:`as_dict` as YAML, in ML-Agents' key order."""
        return yaml.safe_dump(self.as_dict(), sort_keys=False, default_flow_style=False)

    @staticmethod
    def from_dict(options: Mapping[str, Any], source: str = "<dict>") -> RunOptions:
        """Parses and validates an already loaded YAML document (see :func:`load_run_options`)."""
        return _parse_run_options(options, _Context(source))


def behavior_base_name(name: str) -> str:
    """``3DBall?team=0`` -> ``3DBall``: the name used to look up the configuration."""
    return name.split("?", 1)[0]


# TANDEM SERVER SETTINGS ##################################################################


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Tandem's own trainer-server options (command line only; not an ML-Agents section).

    Attributes:
        listen: ``host:port`` of the gRPC server (``[::]:5755`` for IPv6; port 0 = any).
        tls_cert: PEM certificate chain file; TLS is on when cert and key are given.
        tls_key: PEM private key file.
        token: bearer token gateways must present (``--token`` or ``TANDEM_TOKEN``).
        with_gateway: also launch a local gateway (on the built-in stand-in unless
            ``env_settings.env_path`` names a Unity build), as ``make run`` does.
        gateway_args: extra command-line arguments for that gateway.
        log_json: JSON-lines logs.
    """

    listen: str = DEFAULT_LISTEN
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)
    with_gateway: bool = False
    gateway_args: tuple[str, ...] = ()
    log_json: bool = False

    @property
    def host(self) -> str:
        """The host part of ``listen`` (brackets of an IPv6 address removed)."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return _split_listen(self.listen)[1]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def server_settings_from_args(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Builds :class:`ServerSettings` from ``tandem-trainer``'s parsed arguments.

    Args:
        args: namespace with any of ``listen``, ``tls_cert``, ``tls_key``, ``token``,
            ``with_gateway``, ``gateway_args``, ``log_json`` (missing or None = default).
        environ: environment for ``TANDEM_TOKEN`` (defaults to ``os.environ``).

    Raises:
        ConfigError: a malformed listen address, half a TLS pair, or a missing TLS file.
    """
    environ = os.environ if environ is None else environ
    values = vars(args) if args is not None else {}

    def given(name: str) -> Any:
        return values.get(name)

    listen = given("listen") or DEFAULT_LISTEN
    try:
        _split_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    tls_cert, tls_key = given("tls_cert"), given("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {Path(path).resolve()}")
    token = given("token") or environ.get(TOKEN_ENV_VAR) or None
    return ServerSettings(
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        token=token,
        with_gateway=bool(given("with_gateway")),
        gateway_args=tuple(given("gateway_args") or ()),
        log_json=bool(given("log_json")),
    )


# LOADING #################################################################################

# command-line destination -> (YAML section or None for top level, key)
_CLI_TO_YAML: dict[str, tuple[str | None, str]] = {
    **{
        name: ("checkpoint_settings", name)
        for name in (
            "run_id",
            "initialize_from",
            "load_model",
            "resume",
            "force",
            "train_model",
            "inference",
            "results_dir",
        )
    },
    **{
        name: ("env_settings", name)
        for name in (
            "env_path",
            "env_args",
            "base_port",
            "num_envs",
            "num_areas",
            "timeout_wait",
            "seed",
            "max_lifetime_restarts",
            "restarts_rate_limit_n",
            "restarts_rate_limit_period_s",
        )
    },
    **{
        name: ("engine_settings", name)
        for name in (
            "width",
            "height",
            "quality_level",
            "time_scale",
            "target_frame_rate",
            "capture_frame_rate",
            "no_graphics",
            "no_graphics_monitor",
        )
    },
    "device": ("torch_settings", "device"),
    "torch_device": ("torch_settings", "device"),
    "debug": (None, "debug"),
}


def load_run_options(path: str | Path | None, cli_args: argparse.Namespace | None = None) -> RunOptions:
    """Loads an ML-Agents trainer YAML and applies command-line overrides, as mlagents-learn.

    Args:
        path: the trainer configuration file; None runs on ML-Agents' defaults (any
            behavior then gets the default settings, with a warning).
        cli_args: parsed ``tandem-trainer`` arguments. Only attributes that are present
            and not None override the file (``run_id``, ``resume``, ``seed``, ``env_path``,
            ``width``... ML-Agents' destination names; ``deterministic`` sets
            ``network_settings.deterministic`` of every behavior).

    Returns:
        Validated, fully resolved options. Valid features Tandem cannot train yet are
        accepted here; see :func:`check_supported`.

    Raises:
        ConfigError: unreadable file, YAML syntax error, unknown key, wrong type or value;
            the message starts with the file name and the key path.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: Any = {}
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file.resolve()}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path is a directory, not a file: {file.resolve()}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            raw = _load_yaml(text, source)
        except yaml.YAMLError as exc:
            where = ""
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                where = f" (line {mark.line + 1}, column {mark.column + 1})"
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
        if raw is None:
            raw = {}
    ctx = _Context(source)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the file must hold a mapping of sections (behaviors:, ...), got {_kind(raw)}")
    raw = dict(raw)
    deterministic = None
    if cli_args is not None:
        raw, deterministic = _apply_cli_overrides(raw, cli_args, ctx)
    options = _parse_run_options(raw, ctx)
    if deterministic:
        options = _with_deterministic(options)
    return options


class _DuplicateKeyWarningLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1, as mlagents-learn), noting keys given twice in a mapping."""

    duplicates: list[tuple[str, int]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_scalar(key_node)
                if key in seen:
                    self.duplicates.append((str(key), key_node.start_mark.line + 1))
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, warning about duplicate keys (the last one wins, as in ML-Agents)."""
    loader = _DuplicateKeyWarningLoader(text)
    loader.duplicates = []
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
        for key, line in loader.duplicates:
            _log().warning("key given twice in a mapping: the last value is used", key=key, line=line, config=source)


def trainer_settings_from_dict(section: Mapping[str, Any] | None, source: str = "<dict>") -> TrainerSettings:
    """Parses one behavior section (as under ``behaviors:``) with ML-Agents' defaults.

    Handy for tests and tools: ``trainer_settings_from_dict({"hyperparameters": {...}})``.
    """
    return _parse_trainer_settings(section, ("behaviors", "<behavior>"), _Context(source), base=None)


class _Context:
    """Where values come from, so that errors name the file or the command-line flag."""

    def __init__(self, source: str) -> None:
        self.source = source
        # key path -> the command-line flag that set it
        self.cli_flags: dict[tuple[str, ...], str] = {}

    def error(self, path: tuple[str, ...], message: str, cls: type[ConfigError] = ConfigError) -> ConfigError:
        flag = self.cli_flags.get(path)
        if flag is not None:
            return cls(f"command line {flag}: {message}")
        where = ".".join(path)
        return cls(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")


def _apply_cli_overrides(
    raw: dict[str, Any], args: argparse.Namespace, ctx: _Context
) -> tuple[dict[str, Any], bool | None]:
    raw = copy.deepcopy(raw)
    values = vars(args)
    for dest, value in values.items():
        if value is None or dest not in _CLI_TO_YAML:
            continue
        section, key = _CLI_TO_YAML[dest]
        flag = "--" + ("torch-device" if key == "device" else "env" if key == "env_path" else key.replace("_", "-"))
        if section is None:
            raw[key] = value
            ctx.cli_flags[(key,)] = flag
            continue
        current = raw.get(section)
        if current is None:
            current = {}
        if not isinstance(current, Mapping):
            raise ctx.error((section,), f"must be a mapping, got {_kind(current)}")
        current = dict(current)
        current[key] = value
        raw[section] = current
        ctx.cli_flags[(section, key)] = flag
    return raw, values.get("deterministic")


def _with_deterministic(options: RunOptions) -> RunOptions:
    """Applies ``--deterministic`` to every behavior's network settings."""

    def det(ts: TrainerSettings) -> TrainerSettings:
        return dataclasses.replace(ts, network_settings=dataclasses.replace(ts.network_settings, deterministic=True))

    return dataclasses.replace(
        options,
        behaviors=FrozenMap({name: det(ts) for name, ts in options.behaviors.items()}),
        default_settings=det(options.default_settings) if options.default_settings is not None else None,
        fallback_settings=det(options.fallback_settings),
    )


# PARSING #################################################################################

KeyPath = tuple[str, ...]


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{type(value).__name__} {value!r}"


def _number(value: Any, path: KeyPath, ctx: _Context) -> float:
    """A finite number from an int, float or numeric string (YAML 1.1 reads ``1.0e7`` as text)."""
    if isinstance(value, bool):
        raise ctx.error(path, f"must be a number, got {_kind(value)}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            raise ctx.error(path, f"must be a number, got {_kind(value)}") from None
    else:
        raise ctx.error(path, f"must be a number, got {_kind(value)}")
    if not math.isfinite(number):
        raise ctx.error(path, f"must be a finite number, got {value!r}")
    return number


def _to_int(value: Any, path: KeyPath, ctx: _Context) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value, path, ctx)
    if not number.is_integer():
        raise ctx.error(path, f"must be a whole number, got {value!r}")
    return int(number)


Converter = Callable[[Any, KeyPath, _Context], Any]


def _int(minimum: int | None = None, maximum: int | None = None) -> Converter:
    def convert(value: Any, path: KeyPath, ctx: _Context) -> int:
        number = _to_int(value, path, ctx)
        if minimum is not None and number < minimum:
            raise ctx.error(path, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ctx.error(path, f"must be at most {maximum}, got {number}")
        return number

    return convert


def _float(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None) -> Converter:
    def convert(value: Any, path: KeyPath, ctx: _Context) -> float:
        number = _number(value, path, ctx)
        if minimum is not None and number < minimum:
            raise ctx.error(path, f"must be at least {minimum:g}, got {number:g}")
        if maximum is not None and number > maximum:
            raise ctx.error(path, f"must be at most {maximum:g}, got {number:g}")
        if above is not None and number <= above:
            raise ctx.error(path, f"must be greater than {above:g}, got {number:g}")
        return number

    return convert


def _bool(value: Any, path: KeyPath, ctx: _Context) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ctx.error(path, f"must be true or false, got {_kind(value)}")


def _str(value: Any, path: KeyPath, ctx: _Context) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ctx.error(path, f"must be text, got {_kind(value)}")


def _choice(options: tuple[str, ...]) -> Converter:
    def convert(value: Any, path: KeyPath, ctx: _Context) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise ctx.error(path, f"must be one of {', '.join(options)}; got {_kind(value)}")

    return convert


def _optional(convert: Converter) -> Converter:
    def optional(value: Any, path: KeyPath, ctx: _Context) -> Any:
        return None if value is None else convert(value, path, ctx)

    return optional


def _str_list(value: Any, path: KeyPath, ctx: _Context) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, (list, tuple)):
        return tuple(_str(item, path + (str(i),), ctx) for i, item in enumerate(value))
    raise ctx.error(path, f"must be a list of arguments, got {_kind(value)}")


def _mapping(value: Any, path: KeyPath, ctx: _Context) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error(path, f"must be a mapping of keys to values, got {_kind(value)}")
    return {str(k): v for k, v in value.items()}


# per settings class: key -> converter; order = the class's fields
_CONVERTERS: dict[type, dict[str, Converter]] = {
    MemorySettings: {"sequence_length": _int(1), "memory_size": _int(1)},
    BehavioralCloningSettings: {
        "demo_path": _str,
        "steps": _int(0),
        "strength": _float(0.0),
        "samples_per_update": _int(0),
        "num_epoch": _optional(_int(1)),
        "batch_size": _optional(_int(1)),
    },
    PPOSettings: {
        "batch_size": _int(1),
        "buffer_size": _int(1),
        "learning_rate": _float(0.0),
        "beta": _float(0.0),
        "epsilon": _float(0.0),
        "lambd": _float(0.0, 1.0),
        "num_epoch": _int(1),
        "shared_critic": _bool,
        "learning_rate_schedule": _choice(SCHEDULE_TYPES),
        "beta_schedule": _choice(SCHEDULE_TYPES),
        "epsilon_schedule": _choice(SCHEDULE_TYPES),
    },
    SACSettings: {
        "learning_rate": _float(0.0),
        "learning_rate_schedule": _choice(SCHEDULE_TYPES),
        "batch_size": _int(1),
        "buffer_size": _int(1),
        "buffer_init_steps": _int(0),
        "tau": _float(0.0, 1.0, above=0.0),
        "steps_per_update": _float(above=0.0),
        "save_replay_buffer": _bool,
        "init_entcoef": _float(above=0.0),
        "reward_signal_steps_per_update": _float(above=0.0),
    },
    SelfPlaySettings: {
        "save_steps": _int(1),
        "team_change": _int(1),
        "swap_steps": _int(1),
        "window": _int(1),
        "play_against_latest_model_ratio": _float(0.0, 1.0),
        "initial_elo": _float(),
    },
    CheckpointSettings: {
        "run_id": _str,
        "initialize_from": _optional(_str),
        "load_model": _bool,
        "resume": _bool,
        "force": _bool,
        "train_model": _bool,
        "inference": _bool,
        "results_dir": _str,
    },
    EnvSettings: {
        "env_path": _optional(_str),
        "env_args": _optional(_str_list),
        "base_port": _int(0, 65535),
        "num_envs": _int(1),
        "num_areas": _int(1),
        "timeout_wait": _int(1),
        "seed": _int(),
        "max_lifetime_restarts": _int(-1),
        "restarts_rate_limit_n": _int(-1),
        "restarts_rate_limit_period_s": _int(1),
    },
    EngineSettings: {
        "width": _int(1),
        "height": _int(1),
        "quality_level": _int(0),
        "time_scale": _float(above=0.0),
        "target_frame_rate": _int(-1),
        "capture_frame_rate": _int(0),
        "no_graphics": _bool,
        "no_graphics_monitor": _bool,
    },
    TorchSettings: {"device": _optional(_str)},
    CompletionCriteriaSettings: {
        "behavior": _str,
        "measure": _choice(MEASURE_TYPES),
        "min_lesson_length": _int(0),
        "signal_smoothing": _bool,
        "threshold": _float(),
        "require_reset": _bool,
    },
    ConstantSettings: {"seed": _int(), "value": _float()},
    UniformSettings: {"seed": _int(), "min_value": _float(), "max_value": _float()},
    GaussianSettings: {"seed": _int(), "mean": _float(), "st_dev": _float(0.0)},
}
_CONVERTERS[POCASettings] = {k: v for k, v in _CONVERTERS[PPOSettings].items() if k != "shared_critic"}
_NETWORK_CONVERTERS: dict[str, Converter] = {
    "normalize": _bool,
    "hidden_units": _int(1),
    "num_layers": _int(1),
    "vis_encode_type": _choice(ENCODER_TYPES),
    "goal_conditioning_type": _choice(CONDITIONING_TYPES),
    "deterministic": _bool,
}
_REWARD_SIGNAL_CONVERTERS: dict[str, Converter] = {
    "gamma": _float(0.0, 1.0),
    "strength": _float(),
    "learning_rate": _float(0.0),
    "encoding_size": _optional(_int(1)),
    "use_actions": _bool,
    "use_vail": _bool,
    "demo_path": _str,
}


def _unknown_key(key: str, allowed: list[str], path: KeyPath, ctx: _Context, what: str = "") -> ConfigError:
    hint = difflib.get_close_matches(key, allowed, n=1)
    message = "unknown key" + (f" for {what}" if what else "")
    if hint:
        message += f" (did you mean {hint[0]!r}?)"
    else:
        message += f" (valid keys: {', '.join(allowed)})"
    return ctx.error(path + (key,), message)


def _required_keys(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def _build(
    cls: type,
    raw: Any,
    path: KeyPath,
    ctx: _Context,
    converters: Mapping[str, Converter] | None = None,
    nested: Mapping[str, Callable[[Any, KeyPath], Any]] | None = None,
    what: str = "",
) -> Any:
    """Strictly builds a settings dataclass: unknown keys, missing required keys, types."""
    section = _mapping(raw, path, ctx)
    converters = _CONVERTERS[cls] if converters is None else converters
    nested = nested or {}
    allowed = [f.name for f in fields(cls) if f.init and f.metadata.get("export", True)]
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        if key not in allowed:
            raise _unknown_key(key, allowed, path, ctx, what)
        if key in nested:
            kwargs[key] = nested[key](value, path + (key,))
        else:
            kwargs[key] = converters[key](value, path + (key,), ctx)
    for key in sorted(_required_keys(cls) - kwargs.keys()):
        raise ctx.error(path + (key,), "required key is missing")
    return cls(**kwargs)


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    """dict.update for nested mappings: ML-Agents' merge of a behavior into default_settings."""
    for key, value in update.items():
        if key in target and isinstance(target[key], Mapping) and isinstance(value, Mapping):
            merged = dict(target[key])
            _deep_update(merged, value)
            target[key] = merged
        else:
            target[key] = value


def _parse_network(raw: Any, path: KeyPath, ctx: _Context) -> NetworkSettings:
    return _build(
        NetworkSettings,
        raw,
        path,
        ctx,
        converters=_NETWORK_CONVERTERS,
        nested={"memory": lambda v, p: None if v is None else _parse_memory(v, p, ctx)},
    )


def _parse_memory(raw: Any, path: KeyPath, ctx: _Context) -> MemorySettings:
    memory = _build(MemorySettings, raw, path, ctx)
    if memory.memory_size % 2 != 0:
        raise ctx.error(
            path + ("memory_size",), f"must be even (an LSTM's cell and hidden state), got {memory.memory_size}"
        )
    return memory


def _parse_reward_signals(raw: Any, path: KeyPath, ctx: _Context) -> FrozenMap[str, RewardSignalSettings]:
    if raw is None:
        raise ctx.error(path, "must list at least one reward signal (e.g. extrinsic)")
    section = _mapping(raw, path, ctx)
    signals: dict[str, RewardSignalSettings] = {}
    for name, value in section.items():
        if name not in _REWARD_SIGNAL_CLASSES:
            raise ctx.error(path + (name,), f"unknown reward signal (valid: {', '.join(REWARD_SIGNAL_TYPES)})")
        cls = _REWARD_SIGNAL_CLASSES[name]
        signal_path = path + (name,)
        body = _mapping(value, signal_path, ctx)
        signal = _build(
            cls,
            body,
            signal_path,
            ctx,
            converters=_REWARD_SIGNAL_CONVERTERS,
            nested={"network_settings": lambda v, p: _parse_network(v, p, ctx)},
            what=f"reward signal {name}",
        )
        encoding_size = getattr(signal, "encoding_size", None)
        if encoding_size is not None and "network_settings" not in body:
            # ML-Agents: the deprecated encoding_size sets the hidden units when
            # network_settings is not given.
            _log().warning(
                "encoding_size is deprecated for reward signals, use network_settings.hidden_units",
                key=".".join(signal_path),
                config=ctx.source,
            )
            signal = dataclasses.replace(
                signal, network_settings=dataclasses.replace(signal.network_settings, hidden_units=encoding_size)
            )
        signals[name] = signal
    if not signals:
        raise ctx.error(path, "must list at least one reward signal (e.g. extrinsic)")
    return FrozenMap(signals)


def _parse_hyperparameters(raw: Any, trainer_type: str, path: KeyPath, ctx: _Context) -> HyperparamSettings:
    section = dict(_mapping(raw, path, ctx))
    if trainer_type in ("ppo", "poca") and "learning_rate_schedule" in section:
        # ML-Agents: beta and epsilon follow the learning rate schedule unless given.
        section.setdefault("beta_schedule", section["learning_rate_schedule"])
        section.setdefault("epsilon_schedule", section["learning_rate_schedule"])
    cls = _HYPERPARAMETER_CLASSES[trainer_type]
    return _build(cls, section, path, ctx, what=f"trainer_type {trainer_type}")


_OFFLINE_BC_MESSAGE = (
    "trainer_type offline_bc was removed from ML-Agents: to learn from demonstrations, "
    "use trainer_type ppo or sac with a behavioral_cloning section (demo_path: your .demo file), "
    "optionally with a gail reward signal"
)


def _parse_trainer_type(value: Any, path: KeyPath, ctx: _Context) -> str:
    if isinstance(value, str) and value.strip().lower() == "offline_bc":
        raise ctx.error(path, _OFFLINE_BC_MESSAGE)
    if isinstance(value, str) and value.strip().lower() in TRAINER_TYPES:
        return value.strip().lower()
    raise ctx.error(path, f"unknown trainer_type {value!r} (valid: {', '.join(TRAINER_TYPES)})")


def _parse_trainer_settings(raw: Any, path: KeyPath, ctx: _Context, base: Mapping[str, Any] | None) -> TrainerSettings:
    """One behavior section, merged over ``base`` (the resolved default_settings) if given."""
    section = dict(_mapping(raw, path, ctx))
    merged: dict[str, Any] = copy.deepcopy(dict(base)) if base is not None else {}
    if base is not None and "trainer_type" in section:
        own_type = _parse_trainer_type(section["trainer_type"], path + ("trainer_type",), ctx)
        if own_type != base.get("trainer_type"):
            # Another algorithm than default_settings': its hyperparameters do not apply.
            merged.pop("hyperparameters", None)
    _deep_update(merged, section)
    if "framework" in merged:
        _log().warning(
            "the framework option is deprecated and ignored", key=".".join(path + ("framework",)), config=ctx.source
        )
        merged.pop("framework")

    trainer_type = _parse_trainer_type(merged.get("trainer_type", "ppo"), path + ("trainer_type",), ctx)
    allowed = [f.name for f in fields(TrainerSettings)]
    kwargs: dict[str, Any] = {"trainer_type": trainer_type}
    for key, value in merged.items():
        key_path = path + (key,)
        if key == "trainer_type":
            continue
        if key not in allowed:
            raise _unknown_key(key, allowed, path, ctx)
        if key == "hyperparameters":
            kwargs[key] = _parse_hyperparameters(value, trainer_type, key_path, ctx)
        elif key == "network_settings":
            kwargs[key] = _parse_network(value, key_path, ctx)
        elif key == "reward_signals":
            kwargs[key] = _parse_reward_signals(value, key_path, ctx)
        elif key == "self_play":
            kwargs[key] = None if value is None else _build(SelfPlaySettings, value, key_path, ctx)
        elif key == "behavioral_cloning":
            kwargs[key] = None if value is None else _build(BehavioralCloningSettings, value, key_path, ctx)
        elif key == "init_path":
            kwargs[key] = _optional(_str)(value, key_path, ctx)
        elif key in ("checkpoint_interval", "summary_freq", "time_horizon"):
            kwargs[key] = _int(1)(value, key_path, ctx)
        elif key in ("keep_checkpoints", "max_steps"):
            kwargs[key] = _int(0)(value, key_path, ctx)
        elif key in ("even_checkpoints", "threaded"):
            kwargs[key] = _bool(value, key_path, ctx)
        else:  # pragma: no cover - every TrainerSettings field is handled above
            raise AssertionError(key)
    settings = TrainerSettings(**kwargs)

    hp = settings.hyperparameters
    if (
        settings.network_settings.memory is not None
        and settings.network_settings.memory.sequence_length > hp.batch_size
    ):
        raise ctx.error(
            path + ("network_settings", "memory", "sequence_length"),
            f"must be at most hyperparameters.batch_size ({hp.batch_size}) when using memory, "
            f"got {settings.network_settings.memory.sequence_length}",
        )
    if isinstance(hp, (PPOSettings, POCASettings)) and hp.batch_size > hp.buffer_size:
        raise ctx.error(
            path + ("hyperparameters", "batch_size"),
            f"must be at most buffer_size ({hp.buffer_size}): each update splits the buffer into "
            f"minibatches of batch_size, got {hp.batch_size}",
        )
    if settings.even_checkpoints:
        if settings.keep_checkpoints < 1:
            raise ctx.error(path + ("keep_checkpoints",), "must be at least 1 with even_checkpoints")
        settings = dataclasses.replace(
            settings, checkpoint_interval=max(1, settings.max_steps // settings.keep_checkpoints)
        )
    return settings


def _parse_sampler(raw: Any, path: KeyPath, ctx: _Context) -> SamplerSettings:
    """A plain number (constant) or ``{sampler_type, sampler_parameters}``."""
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        return ConstantSettings(value=_float()(raw, path, ctx))
    if not isinstance(raw, Mapping):
        raise ctx.error(path, f"must be a number or a sampler (sampler_type, sampler_parameters), got {_kind(raw)}")
    section = {str(k): v for k, v in raw.items()}
    for key in section:
        if key not in ("sampler_type", "sampler_parameters"):
            raise _unknown_key(key, ["sampler_type", "sampler_parameters"], path, ctx, "a sampler")
    for key in ("sampler_type", "sampler_parameters"):
        if key not in section:
            raise ctx.error(path + (key,), "required key is missing")
    sampler_type = _choice(tuple(_SAMPLER_CLASSES))(section["sampler_type"], path + ("sampler_type",), ctx)
    params_path = path + ("sampler_parameters",)
    if sampler_type == "multirangeuniform":
        params = _mapping(section["sampler_parameters"], params_path, ctx)
        allowed = ["seed", "intervals"]
        for key in params:
            if key not in allowed:
                raise _unknown_key(key, allowed, params_path, ctx, "sampler_type multirangeuniform")
        kwargs: dict[str, Any] = {}
        if "seed" in params:
            kwargs["seed"] = _int()(params["seed"], params_path + ("seed",), ctx)
        if "intervals" in params:
            kwargs["intervals"] = _parse_intervals(params["intervals"], params_path + ("intervals",), ctx)
        return MultiRangeUniformSettings(**kwargs)
    sampler = _build(
        _SAMPLER_CLASSES[sampler_type],
        section["sampler_parameters"],
        params_path,
        ctx,
        what=f"sampler_type {sampler_type}",
    )
    if isinstance(sampler, UniformSettings) and sampler.min_value > sampler.max_value:
        raise ctx.error(
            params_path, f"min_value ({sampler.min_value:g}) is greater than max_value ({sampler.max_value:g})"
        )
    return sampler


def _parse_intervals(raw: Any, path: KeyPath, ctx: _Context) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ctx.error(path, f"must be a list of [min, max] intervals, got {_kind(raw)}")
    intervals = []
    for i, interval in enumerate(raw):
        item_path = path + (str(i),)
        if not isinstance(interval, (list, tuple)) or len(interval) != 2:
            raise ctx.error(item_path, f"must be a [min, max] pair, got {interval!r}")
        low, high = (_float()(v, item_path, ctx) for v in interval)
        if low > high:
            raise ctx.error(item_path, f"min ({low:g}) is greater than max ({high:g})")
        intervals.append((low, high))
    return tuple(intervals)


def _parse_environment_parameters(
    raw: Any, path: KeyPath, ctx: _Context
) -> FrozenMap[str, EnvironmentParameterSettings]:
    section = _mapping(raw, path, ctx)
    parameters: dict[str, EnvironmentParameterSettings] = {}
    for name, value in section.items():
        param_path = path + (name,)
        if isinstance(value, Mapping) and "curriculum" in value:
            for key in value:
                if key != "curriculum":
                    raise _unknown_key(str(key), ["curriculum"], param_path, ctx, "a curriculum parameter")
            parameters[name] = EnvironmentParameterSettings(
                curriculum=_parse_curriculum(value["curriculum"], param_path + ("curriculum",), name, ctx)
            )
        else:
            sampler = _parse_sampler(value, param_path, ctx)
            parameters[name] = EnvironmentParameterSettings(curriculum=(Lesson(value=sampler, name=name),))
    return FrozenMap(parameters)


def _parse_curriculum(raw: Any, path: KeyPath, parameter: str, ctx: _Context) -> tuple[Lesson, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ctx.error(path, f"must be a list of lessons (- name: ..., value: ...), got {_kind(raw)}")
    lessons = []
    for i, item in enumerate(raw):
        lesson_path = path + (str(i),)
        section = _mapping(item, lesson_path, ctx)
        allowed = ["value", "name", "completion_criteria"]
        for key in section:
            if key not in allowed:
                raise _unknown_key(key, allowed, lesson_path, ctx, "a lesson")
        for key in ("name", "value"):
            if key not in section:
                raise ctx.error(lesson_path + (key,), "required key is missing")
        criteria = None
        if section.get("completion_criteria") is not None:
            criteria_path = lesson_path + ("completion_criteria",)
            criteria = _build(CompletionCriteriaSettings, section["completion_criteria"], criteria_path, ctx)
            if criteria.measure == "progress" and not 0.0 <= criteria.threshold <= 1.0:
                raise ctx.error(
                    criteria_path + ("threshold",),
                    f"must be in [0, 1] when the measure is progress, got {criteria.threshold:g}",
                )
        lessons.append(
            Lesson(
                value=_parse_sampler(section["value"], lesson_path + ("value",), ctx),
                name=_str(section["name"], lesson_path + ("name",), ctx),
                completion_criteria=criteria,
            )
        )
    for i, lesson in enumerate(lessons[:-1]):
        if lesson.completion_criteria is None:
            raise ctx.error(
                path + (str(i), "completion_criteria"),
                f"required: lesson {lesson.name!r} of {parameter!r} is not the last one",
            )
    if lessons[-1].completion_criteria is not None:
        _log().warning(
            "the last lesson's completion_criteria is ignored",
            parameter=parameter,
            config=ctx.source,
        )
    return tuple(lessons)


_RUN_OPTION_KEYS = [
    "default_settings",
    "behaviors",
    "env_settings",
    "engine_settings",
    "environment_parameters",
    "checkpoint_settings",
    "torch_settings",
    "debug",
]


# keys of a behavior section: at the top level they mean a pre-Release-3 file
_OLD_FORMAT_KEYS = {"trainer", "trainer_type", "batch_size", "buffer_size", "max_steps", "hyperparameters"}


def _parse_run_options(raw: Mapping[str, Any], ctx: _Context) -> RunOptions:
    raw = {str(k): v for k, v in raw.items()}
    for key in raw:
        if key not in _RUN_OPTION_KEYS:
            if key in ("trainer_type", "hyperparameters", "network_settings", "reward_signals", "max_steps"):
                raise ctx.error(
                    (key,),
                    "unknown top-level key: trainer settings go under behaviors: <BehaviorName>: "
                    "(or default_settings:)",
                )
            value = raw[key]
            if isinstance(value, Mapping) and _OLD_FORMAT_KEYS & {str(k) for k in value}:
                raise ctx.error(
                    (key,),
                    "unknown top-level key: this looks like a behavior section in the format used before "
                    "ML-Agents Release 3; move it under behaviors: (mlagents-upgrade-config converts such files)",
                )
            raise _unknown_key(key, _RUN_OPTION_KEYS, (), ctx, "the top level")

    default_settings = None
    default_dict: dict[str, Any] | None = None
    if raw.get("default_settings") is not None:
        default_settings = _parse_trainer_settings(raw["default_settings"], ("default_settings",), ctx, base=None)
        default_dict = _to_plain(default_settings)

    behaviors: dict[str, TrainerSettings] = {}
    for name, section in _mapping(raw.get("behaviors"), ("behaviors",), ctx).items():
        if "?" in name:
            raise ctx.error(("behaviors", name), "use the behavior name without ?team=... as the key")
        behaviors[name] = _parse_trainer_settings(section, ("behaviors", name), ctx, base=default_dict)

    checkpoint = _build(CheckpointSettings, raw.get("checkpoint_settings"), ("checkpoint_settings",), ctx)
    checkpoint = _resolve_resume(checkpoint, ctx)

    environment_parameters = None
    if raw.get("environment_parameters") is not None:
        environment_parameters = _parse_environment_parameters(
            raw["environment_parameters"], ("environment_parameters",), ctx
        )

    return RunOptions(
        default_settings=default_settings,
        behaviors=FrozenMap(behaviors),
        env_settings=_build(EnvSettings, raw.get("env_settings"), ("env_settings",), ctx),
        engine_settings=_build(EngineSettings, raw.get("engine_settings"), ("engine_settings",), ctx),
        environment_parameters=environment_parameters,
        checkpoint_settings=checkpoint,
        torch_settings=_build(TorchSettings, raw.get("torch_settings"), ("torch_settings",), ctx),
        debug=_bool(raw["debug"], ("debug",), ctx) if raw.get("debug") is not None else False,
        config_path=None if ctx.source == "<defaults>" else ctx.source,
    )


def _resolve_resume(checkpoint: CheckpointSettings, ctx: _Context) -> CheckpointSettings:
    """ML-Agents' rules for --resume, --force and --initialize-from given together."""
    if checkpoint.resume and checkpoint.force:
        path = ("checkpoint_settings", "force")
        if ("checkpoint_settings", "resume") in ctx.cli_flags and path in ctx.cli_flags:
            raise ConfigError("command line: --resume and --force cannot be used together")
        raise ctx.error(path, "resume and force cannot both be true (resume continues the run, force overwrites it)")
    if checkpoint.resume and checkpoint.initialize_from is not None:
        cli_resume = ("checkpoint_settings", "resume") in ctx.cli_flags
        cli_init = ("checkpoint_settings", "initialize_from") in ctx.cli_flags
        if cli_init and not cli_resume:
            _log().warning(
                "both resume and initialize_from are set: initializing, not resuming",
                run_id=checkpoint.run_id,
                initialize_from=checkpoint.initialize_from,
            )
            return dataclasses.replace(checkpoint, resume=False)
        _log().warning(
            "both resume and initialize_from are set: resuming, initialize_from is ignored",
            run_id=checkpoint.run_id,
            initialize_from=checkpoint.initialize_from,
        )
        return dataclasses.replace(checkpoint, initialize_from=None)
    return checkpoint


# EXPORT ##################################################################################


def _to_plain(obj: Any) -> Any:
    """Settings -> plain YAML-safe values, in ML-Agents' structure and key order."""
    if isinstance(obj, (ConstantSettings, UniformSettings, GaussianSettings, MultiRangeUniformSettings)):
        return {
            "sampler_type": obj.sampler_type,
            "sampler_parameters": {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)},
        }
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj) if f.metadata.get("export", True)}
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# SUPPORT CHECK ###########################################################################


def supported_trainer_types() -> frozenset[str]:
    """Trainer types this installation can train: ``ppo``, plus ``sac`` when its module exists."""
    found = set(SUPPORTED_TRAINER_TYPES)
    for trainer_type, module in _OPTIONAL_TRAINER_MODULES.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found.add(trainer_type)
        except (ImportError, ValueError):
            pass
    return frozenset(found)


def unsupported_features(
    settings: TrainerSettings, trainer_types: frozenset[str] | set[str] | None = None
) -> list[tuple[str, str]]:
    """Valid features of one behavior's settings that Tandem cannot train yet.

    Args:
        settings: one behavior's resolved settings.
        trainer_types: trainer types to accept; default :func:`supported_trainer_types`.

    Returns:
        ``(key path relative to the behavior section, explanation)`` pairs; empty when
        the behavior can be trained.
    """
    trainer_types = supported_trainer_types() if trainer_types is None else trainer_types
    found: list[tuple[str, str]] = []
    if settings.trainer_type not in trainer_types:
        found.append(
            (
                "trainer_type",
                f"{settings.trainer_type} is not supported yet (supported: {', '.join(sorted(trainer_types))})",
            )
        )
    hp = settings.hyperparameters
    if isinstance(hp, PPOSettings) and hp.shared_critic:
        found.append(("hyperparameters.shared_critic", "a critic sharing the policy's network is not supported yet"))
    network = settings.network_settings
    if network.memory is not None:
        found.append(("network_settings.memory", "recurrent networks (memory) are not supported yet"))
    if network.vis_encode_type not in SUPPORTED_VIS_ENCODE_TYPES:
        found.append(
            (
                "network_settings.vis_encode_type",
                f"{network.vis_encode_type} is not supported yet (supported: {', '.join(sorted(SUPPORTED_VIS_ENCODE_TYPES))})",
            )
        )
    for name in settings.reward_signals:
        if name not in SUPPORTED_REWARD_SIGNALS:
            found.append(
                (f"reward_signals.{name}", f"the {name} reward signal is not supported yet (supported: extrinsic)")
            )
    if settings.behavioral_cloning is not None:
        found.append(("behavioral_cloning", "behavioral cloning is not supported yet"))
    if settings.self_play is not None:
        found.append(("self_play", "self-play is not supported yet"))
    return found


def check_behavior_supported(
    behavior: str,
    settings: TrainerSettings,
    source: str | None = None,
    trainer_types: frozenset[str] | set[str] | None = None,
) -> None:
    """Raises :class:`NotSupportedError` when ``behavior``'s settings use what Tandem cannot train.

    For the service: a behavior first seen at run time (and resolved through
    ``default_settings``) is checked with this before its trainer is created.
    """
    problems = unsupported_features(settings, trainer_types)
    if problems:
        prefix = f"{source}: " if source else ""
        lines = [f"{prefix}behaviors.{behavior_base_name(behavior)}.{key}: {why}" for key, why in problems]
        raise NotSupportedError("\n".join(lines))


def check_supported(options: RunOptions, trainer_types: frozenset[str] | set[str] | None = None) -> None:
    """Raises :class:`NotSupportedError` listing every feature Tandem cannot train yet.

    Checks each listed behavior and ``default_settings``. ``environment_parameters`` are
    parsed but not sent to the environment yet: that is logged as a warning, not refused.

    Args:
        options: loaded options.
        trainer_types: trainer types to accept; default :func:`supported_trainer_types`.
    """
    trainer_types = supported_trainer_types() if trainer_types is None else trainer_types
    source = options.config_path or "<defaults>"
    lines: list[str] = []
    sections: list[tuple[str, TrainerSettings]] = [(f"behaviors.{name}", ts) for name, ts in options.behaviors.items()]
    if options.default_settings is not None:
        sections.append(("default_settings", options.default_settings))
    for where, settings in sections:
        for key, why in unsupported_features(settings, trainer_types):
            lines.append(f"{source}: {where}.{key}: {why}")
    if lines:
        raise NotSupportedError("\n".join(lines))
    if options.environment_parameters:
        _log().warning(
            "environment_parameters are parsed but not sent to the environment yet",
            parameters=sorted(options.environment_parameters),
            config=source,
        )
