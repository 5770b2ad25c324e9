"""The trainer configuration's types: ML-Agents' sections as typed, frozen dataclasses.

Why: ML-Agents users bring their ``mlagents-learn`` YAML files; everything downstream (the
learners, the service, the results folder) works on plain frozen objects whose attribute
names are ML-Agents' own (``hyperparameters.batch_size``, ``network_settings.hidden_units``,
``checkpoint_settings.run_id``...), so ML-Agents' documentation applies unchanged.

This module only declares: each field's type, ML-Agents' default and, in its metadata
(:func:`bounds`), the range the loader (:mod:`trainer_server.config.loading`) checks once,
when the file is read. Adding a hyperparameter means adding a field here and using it.
What Tandem can train is decided in :mod:`trainer_server.config.support`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from common.environment_options import EngineSettings
from common.logging import get_logger


def _log() -> Any:
    """This module's logger, looked up when used: entry points configure structlog after
    importing this module, and a logger bound at import would keep structlog's defaults."""
    return get_logger("trainer_server.config")


__all__ = [
    "BehavioralCloningSettings",
    "CheckpointSettings",
    "CollectionSettings",
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
    "HYPERPARAMETER_CLASSES",
    "HyperparamSettings",
    "Lesson",
    "MemorySettings",
    "MultiRangeUniformSettings",
    "NetworkSettings",
    "NotSupportedError",
    "POCASettings",
    "PPOSettings",
    "REWARD_SIGNAL_CLASSES",
    "RNDSettings",
    "RewardSignalSettings",
    "RunOptions",
    "SACSettings",
    "SAMPLER_CLASSES",
    "SamplerSettings",
    "SelfPlaySettings",
    "TorchSettings",
    "TrainerSettings",
    "UniformSettings",
    "behavior_base_name",
    "bounds",
    "to_plain",
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
CouplingType = Literal["on_policy", "async"]

TRAINER_TYPES: tuple[str, ...] = ("ppo", "sac", "poca")
SCHEDULE_TYPES: tuple[str, ...] = ("linear", "constant")
ENCODER_TYPES: tuple[str, ...] = ("simple", "nature_cnn", "resnet", "match3", "fully_connected")
CONDITIONING_TYPES: tuple[str, ...] = ("hyper", "none")
MEASURE_TYPES: tuple[str, ...] = ("reward", "progress")
COUPLING_TYPES: tuple[str, ...] = ("on_policy", "async")
REWARD_SIGNAL_TYPES: tuple[str, ...] = ("extrinsic", "gail", "curiosity", "rnd")

# ML-Agents' command-line defaults (mlagents-learn), also the defaults of the YAML sections
DEFAULT_RUN_ID = "ppo"
DEFAULT_RESULTS_DIR = "results"
DEFAULT_BASE_PORT = 5005  # mlagents_envs UnityEnvironment.BASE_ENVIRONMENT_PORT
DEFAULT_SEED = -1



# RANGES ##################################################################################


def bounds(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None) -> dict:
    """Field metadata: the range the loader accepts for a number (checked once, at load).

    Args:
        minimum: the smallest value allowed.
        maximum: the largest value allowed.
        above: values must be strictly greater than this.
    """
    given = {"minimum": minimum, "maximum": maximum, "above": above}
    return {key: value for key, value in given.items() if value is not None}


POSITIVE = bounds(above=0.0)
AT_LEAST_1 = bounds(1)
AT_LEAST_0 = bounds(0)
UNIT = bounds(0.0, 1.0)


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


def freeze_map(value: Mapping | None) -> FrozenMap | None:
    if value is None or isinstance(value, FrozenMap):
        return value
    return FrozenMap(value)


# NETWORK, HYPERPARAMETERS, REWARD SIGNALS ################################################


@dataclass(frozen=True, kw_only=True)
class MemorySettings:
    """Recurrent memory (LSTM) of a behavior's networks (``network_settings.memory``)."""

    sequence_length: int = field(default=64, metadata=AT_LEAST_1)
    memory_size: int = field(default=128, metadata=AT_LEAST_1)


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """Architecture of a behavior's policy/value networks (``network_settings``)."""

    normalize: bool = False
    hidden_units: int = field(default=128, metadata=AT_LEAST_1)
    num_layers: int = field(default=2, metadata=AT_LEAST_1)
    vis_encode_type: EncoderType = "simple"
    memory: MemorySettings | None = None
    goal_conditioning_type: ConditioningType = "hyper"
    deterministic: bool = False


@dataclass(frozen=True, kw_only=True)
class BehavioralCloningSettings:
    """Behavioral cloning from a demonstration file, alongside PPO/SAC."""

    demo_path: str
    steps: int = field(default=0, metadata=AT_LEAST_0)
    strength: float = field(default=1.0, metadata=bounds(0.0))
    samples_per_update: int = field(default=0, metadata=AT_LEAST_0)
    num_epoch: int | None = field(default=None, metadata=AT_LEAST_1)  # None: the trainer's num_epoch
    batch_size: int | None = field(default=None, metadata=AT_LEAST_1)  # None: the trainer's batch_size


@dataclass(frozen=True, kw_only=True)
class _OnPolicySettings:
    """The ``hyperparameters`` PPO and POCA share, in ML-Agents' order.

    Schedules (``linear`` decays to 0 at ``max_steps``, ``constant`` keeps the value):
    ``beta_schedule`` and ``epsilon_schedule`` follow ``learning_rate_schedule`` when
    the file gives only the latter, as in ML-Agents.
    """

    batch_size: int = field(default=1024, metadata=AT_LEAST_1)
    buffer_size: int = field(default=10240, metadata=AT_LEAST_1)
    learning_rate: float = field(default=3.0e-4, metadata=POSITIVE)
    beta: float = field(default=5.0e-3, metadata=bounds(0.0))
    epsilon: float = field(default=0.2, metadata=POSITIVE)
    lambd: float = field(default=0.95, metadata=UNIT)
    num_epoch: int = field(default=3, metadata=AT_LEAST_1)
    shared_critic: bool = False
    learning_rate_schedule: ScheduleType = "linear"
    beta_schedule: ScheduleType = "linear"
    epsilon_schedule: ScheduleType = "linear"


@dataclass(frozen=True, kw_only=True)
class PPOSettings(_OnPolicySettings):
    """``hyperparameters`` of ``trainer_type: ppo``."""


@dataclass(frozen=True, kw_only=True)
class POCASettings(_OnPolicySettings):
    """``hyperparameters`` of ``trainer_type: poca``: PPO's, without ``shared_critic``.

    ``shared_critic`` stays an attribute (always False) but is neither accepted from a
    file nor exported, as in ML-Agents.
    """

    shared_critic: bool = field(default=False, init=False, repr=False, compare=False, metadata={"export": False})


@dataclass(frozen=True, kw_only=True)
class SACSettings:
    """``hyperparameters`` of ``trainer_type: sac``.

    ``reward_signal_steps_per_update`` defaults to ``steps_per_update``.
    """

    learning_rate: float = field(default=3.0e-4, metadata=POSITIVE)
    learning_rate_schedule: ScheduleType = "constant"
    batch_size: int = field(default=128, metadata=AT_LEAST_1)
    buffer_size: int = field(default=50000, metadata=AT_LEAST_1)
    buffer_init_steps: int = field(default=0, metadata=AT_LEAST_0)
    tau: float = field(default=0.005, metadata=bounds(0.0, 1.0, above=0.0))
    steps_per_update: float = field(default=1.0, metadata=POSITIVE)
    save_replay_buffer: bool = False
    init_entcoef: float = field(default=1.0, metadata=POSITIVE)
    # None -> steps_per_update
    reward_signal_steps_per_update: float = field(default=None, metadata=POSITIVE)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.reward_signal_steps_per_update is None:
            object.__setattr__(self, "reward_signal_steps_per_update", float(self.steps_per_update))


HyperparamSettings = PPOSettings | SACSettings | POCASettings
HYPERPARAMETER_CLASSES: dict[str, type] = {"ppo": PPOSettings, "sac": SACSettings, "poca": POCASettings}


@dataclass(frozen=True, kw_only=True)
class RewardSignalSettings:
    """A reward signal: ``extrinsic`` uses this class; the intrinsic ones extend it."""

    gamma: float = field(default=0.99, metadata=UNIT)
    strength: float = 1.0
    network_settings: NetworkSettings = field(default_factory=NetworkSettings)


@dataclass(frozen=True, kw_only=True)
class GAILSettings(RewardSignalSettings):
    """``reward_signals.gail``: adversarial imitation from a demonstration file."""

    learning_rate: float = field(default=3e-4, metadata=bounds(0.0))
    encoding_size: int | None = field(default=None, metadata=AT_LEAST_1)
    use_actions: bool = False
    use_vail: bool = False
    demo_path: str


@dataclass(frozen=True, kw_only=True)
class CuriositySettings(RewardSignalSettings):
    """``reward_signals.curiosity``: intrinsic curiosity module."""

    learning_rate: float = field(default=3e-4, metadata=bounds(0.0))
    encoding_size: int | None = field(default=None, metadata=AT_LEAST_1)


@dataclass(frozen=True, kw_only=True)
class RNDSettings(RewardSignalSettings):
    """``reward_signals.rnd``: random network distillation."""

    learning_rate: float = field(default=1e-4, metadata=bounds(0.0))
    encoding_size: int | None = field(default=None, metadata=AT_LEAST_1)


REWARD_SIGNAL_CLASSES: dict[str, type] = {
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

    save_steps: int = field(default=20000, metadata=AT_LEAST_1)
    team_change: int = field(default=None, metadata=AT_LEAST_1)  # type: ignore[assignment]  # -> 5 * save_steps
    swap_steps: int = field(default=2000, metadata=AT_LEAST_1)
    window: int = field(default=10, metadata=AT_LEAST_1)
    play_against_latest_model_ratio: float = field(default=0.5, metadata=UNIT)
    initial_elo: float = 1200.0

    def __post_init__(self) -> None:
        if self.team_change is None:
            object.__setattr__(self, "team_change", 5 * int(self.save_steps))


@dataclass(frozen=True, kw_only=True)
class CollectionSettings:
    """``tandem:``, a Tandem extension of a behavior's section: how gateways' collection is
    coupled to this behavior's learning (``docs/ACTOR_LEARNER.md``).

    ``mlagents-learn`` refuses keys it does not know: remove this section before giving the
    file to it. Without it Tandem does what ML-Agents' synchronous loop does.

    Attributes:
        coupling: on-policy learners (PPO) only. ``on_policy`` (the default): gateways
            collect ``buffer_size`` steps with the current policy, then pause until the
            update and its snapshot; experience of an older policy is dropped (counted as
            ``Policy/Stale Steps Dropped``). ``async``: gateways never wait for an update;
            experience older than ``max_policy_lag`` versions is dropped (counted), the rest
            is trained with the acting policy's log-probabilities in PPO's ratio.
        max_policy_lag: ``async`` only: the oldest policy version (versions behind the
            current one) whose experience is still trained.
        collection_window: agent steps a gateway may collect ahead of the learner in the
            modes that do not wait for updates (off-policy learners such as SAC, and
            ``async``); null: 2048 for off-policy learners, ``buffer_size`` for ``async``.
    """

    coupling: CouplingType = "on_policy"
    max_policy_lag: int = field(default=4, metadata=AT_LEAST_0)
    collection_window: int | None = field(default=None, metadata=AT_LEAST_1)


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
    checkpoint_interval: int = field(default=500000, metadata=AT_LEAST_1)
    network_settings: NetworkSettings = field(default_factory=NetworkSettings)
    reward_signals: Mapping[str, RewardSignalSettings] = field(default_factory=_default_reward_signals)
    init_path: str | None = None
    keep_checkpoints: int = field(default=5, metadata=AT_LEAST_0)
    even_checkpoints: bool = False
    max_steps: int = field(default=500000, metadata=AT_LEAST_1)
    time_horizon: int = field(default=64, metadata=AT_LEAST_1)
    summary_freq: int = field(default=50000, metadata=AT_LEAST_1)
    threaded: bool = False
    self_play: SelfPlaySettings | None = None
    behavioral_cloning: BehavioralCloningSettings | None = None
    tandem: CollectionSettings = field(default_factory=CollectionSettings)

    def __post_init__(self) -> None:
        if self.hyperparameters is None:
            object.__setattr__(self, "hyperparameters", HYPERPARAMETER_CLASSES[self.trainer_type]())
        object.__setattr__(self, "reward_signals", freeze_map(self.reward_signals))

    def steps_between_checkpoints(self) -> int:
        """Agent steps between two checkpoints: the one place ``even_checkpoints`` is applied.

        ``checkpoint_interval``; with ``even_checkpoints``, ``max_steps / keep_checkpoints``
        instead (rounded down, at least 1), so that the kept checkpoints span the run.
        """
        if self.even_checkpoints:
            return max(1, self.max_steps // max(self.keep_checkpoints, 1))
        return self.checkpoint_interval

    def as_dict(self) -> dict[str, Any]:
        """Plain dict as ML-Agents writes it in ``configuration.yaml``."""
        return to_plain(self)


# ENVIRONMENT PARAMETERS ##################################################################


@dataclass(frozen=True, kw_only=True)
class _Sampler:
    """What every sampler has: ``seed`` (-1: random). ``sampler_type`` names it in the YAML."""

    sampler_type: ClassVar[str]
    seed: int = DEFAULT_SEED


@dataclass(frozen=True, kw_only=True)
class ConstantSettings(_Sampler):
    """A fixed environment parameter value (a plain number in the YAML)."""

    sampler_type: ClassVar[str] = "constant"
    value: float = 0.0


@dataclass(frozen=True, kw_only=True)
class UniformSettings(_Sampler):
    """``sampler_type: uniform``: a value drawn in [min_value, max_value] at each reset."""

    sampler_type: ClassVar[str] = "uniform"
    min_value: float = 0.0
    max_value: float = 1.0


@dataclass(frozen=True, kw_only=True)
class GaussianSettings(_Sampler):
    """``sampler_type: gaussian``: a value drawn from N(mean, st_dev) at each reset."""

    sampler_type: ClassVar[str] = "gaussian"
    mean: float = 1.0
    st_dev: float = field(default=1.0, metadata=bounds(0.0))


@dataclass(frozen=True, kw_only=True)
class MultiRangeUniformSettings(_Sampler):
    """``sampler_type: multirangeuniform``: uniform over a union of [min, max] intervals."""

    sampler_type: ClassVar[str] = "multirangeuniform"
    intervals: tuple[tuple[float, float], ...] = ((0.0, 1.0),)


SamplerSettings = ConstantSettings | UniformSettings | GaussianSettings | MultiRangeUniformSettings
SAMPLER_CLASSES: dict[str, type] = {
    cls.sampler_type: cls for cls in (ConstantSettings, UniformSettings, GaussianSettings, MultiRangeUniformSettings)
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
    min_lesson_length: int = field(default=0, metadata=AT_LEAST_0)
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
    base_port: int = field(default=DEFAULT_BASE_PORT, metadata=bounds(0, 65535))
    num_envs: int = field(default=1, metadata=AT_LEAST_1)
    num_areas: int = field(default=1, metadata=AT_LEAST_1)
    timeout_wait: int = field(default=60, metadata=AT_LEAST_1)
    seed: int = DEFAULT_SEED
    max_lifetime_restarts: int = field(default=10, metadata=bounds(-1))
    restarts_rate_limit_n: int = field(default=1, metadata=bounds(-1))
    restarts_rate_limit_period_s: int = field(default=60, metadata=AT_LEAST_1)


#: ML-Agents' name for :class:`EnvSettings`
EnvironmentSettings = EnvSettings


@dataclass(frozen=True, kw_only=True)
class TorchSettings:
    """``torch_settings``: the device the learners train on, in ML-Agents' words.

    Tandem trains with JAX: ``device`` ``cpu``, ``cuda`` or ``cuda:N`` maps to a JAX device
    (``trainer_server.server_settings.parse_torch_device``); None = JAX's default.
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
        object.__setattr__(self, "behaviors", freeze_map(self.behaviors))
        object.__setattr__(self, "environment_parameters", freeze_map(self.environment_parameters))

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
        return to_plain(self)

    def to_yaml(self) -> str:
        """:meth:`as_dict` as YAML, in ML-Agents' key order."""
        return yaml.safe_dump(self.as_dict(), sort_keys=False, default_flow_style=False)

    @staticmethod
    def from_dict(options: Mapping[str, Any], source: str = "<dict>") -> RunOptions:
        """Parses and validates an already loaded YAML document (see ``loading.load_run_options``)."""
        from trainer_server.config.loading import run_options_from_dict  # loading builds on this module

        return run_options_from_dict(options, source)


def behavior_base_name(name: str) -> str:
    """``3DBall?team=0`` -> ``3DBall``: the name used to look up the configuration."""
    return name.split("?", 1)[0]


# EXPORT ##################################################################################


def to_plain(obj: Any) -> Any:
    """Settings -> plain YAML-safe values, in ML-Agents' structure and key order."""
    if isinstance(obj, _Sampler):
        return {
            "sampler_type": obj.sampler_type,
            "sampler_parameters": {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)},
        }
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj) if f.metadata.get("export", True)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
