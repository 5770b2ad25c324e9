"""ML-Agents trainer YAML and command-line overrides -> validated :class:`RunOptions`.

Why: ML-Agents users bring their ``mlagents-learn`` YAML files; Tandem reads them as they
are (``behaviors``, ``default_settings``, ``env_settings``, ``engine_settings``,
``checkpoint_settings``, ``environment_parameters``, ``torch_settings``, ``debug``), with
ML-Agents' defaults for every omitted key, and refuses anything it does not understand
with a message that names the file (or the command-line flag) and the key path.

Every range is checked here, once, as each value is read: the converters are derived from
the schema's field types and :func:`~trainer_server.config.schema.bounds` metadata, so the
learners trust what they get. Valid ML-Agents features that Tandem cannot train yet load
too (``tandem-trainer --dry-run`` shows them resolved); :mod:`trainer_server.config.support`
refuses them before training.

Numbers: PyYAML reads YAML 1.1, where ``1.0e7`` (no sign in the exponent) and ``1e-3``
(no dot) are *strings*. Numeric fields accept such strings, and integer fields accept
integral floats such as ``5.0e5``, as ``mlagents-learn`` does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from common.logging import get_logger
from trainer_server.config.schema import (
    HYPERPARAMETER_CLASSES,
    REWARD_SIGNAL_CLASSES,
    REWARD_SIGNAL_TYPES,
    SAMPLER_CLASSES,
    TRAINER_TYPES,
    CheckpointSettings,
    ConfigError,
    ConstantSettings,
    EngineSettings,
    EnvironmentParameterSettings,
    EnvSettings,
    FrozenMap,
    HyperparamSettings,
    Lesson,
    MemorySettings,
    RewardSignalSettings,
    RunOptions,
    SamplerSettings,
    TorchSettings,
    TrainerSettings,
    UniformSettings,
    to_plain,
)

__all__ = ["load_run_options", "run_options_from_dict", "trainer_settings_from_dict"]


def _log() -> Any:
    """This module's logger, looked up when used (entry points configure structlog after import)."""
    return get_logger("trainer_server.config")


# LOADING #################################################################################

# command-line destination -> (YAML section or None for top level, key): every field of the
# run-level sections the command line can set (mlagents-learn's destination names)
_CLI_TO_YAML: dict[str, tuple[str | None, str]] = {
    **{
        f.name: (section, f.name)
        for section, cls in (
            ("checkpoint_settings", CheckpointSettings),
            ("env_settings", EnvSettings),
            ("engine_settings", EngineSettings),
        )
        for f in fields(cls)
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
        accepted here; see :func:`trainer_server.config.support.check_supported`.

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


def _ranged(read: Converter, minimum: float | None, maximum: float | None, above: float | None) -> Converter:
    """``read``, then the range check of :func:`~trainer_server.config.schema.bounds`."""

    def convert(value: Any, path: KeyPath, ctx: _Context) -> Any:
        number = read(value, path, ctx)
        shown = f"{number:g}" if isinstance(number, float) else str(number)
        if minimum is not None and number < minimum:
            raise ctx.error(path, f"must be at least {minimum:g}, got {shown}")
        if maximum is not None and number > maximum:
            raise ctx.error(path, f"must be at most {maximum:g}, got {shown}")
        if above is not None and number <= above:
            raise ctx.error(path, f"must be greater than {above:g}, got {shown}")
        return number

    return convert


def _int(minimum: int | None = None, maximum: int | None = None) -> Converter:
    return _ranged(_to_int, minimum, maximum, None)


def _float(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None) -> Converter:
    return _ranged(_number, minimum, maximum, above)


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


def _field_converter(hint: Any, metadata: Mapping[str, Any]) -> Converter:
    """The converter of a settings field, from its type and its :func:`bounds` metadata.

    ``X | None`` accepts null; a ``Literal`` accepts its values; a nested settings class is
    parsed by its own parser (:data:`_PARSERS`) or strictly built field by field.
    """
    arguments = get_args(hint)
    if get_origin(hint) in (Union, UnionType) and type(None) in arguments:
        rest = [a for a in arguments if a is not type(None)]
        if len(rest) == 1:
            return _optional(_field_converter(rest[0], metadata))
    if get_origin(hint) is Literal:
        return _choice(tuple(arguments))
    if hint is bool:
        return _bool
    if hint is int:
        return _int(metadata.get("minimum"), metadata.get("maximum"))
    if hint is float:
        return _float(metadata.get("minimum"), metadata.get("maximum"), above=metadata.get("above"))
    if hint is str:
        return _str
    if hint == tuple[str, ...]:
        return _str_list
    if is_dataclass(hint):
        return _PARSERS.get(hint) or functools.partial(_build, hint)
    raise TypeError(f"no converter for a settings field of type {hint!r}: give it a nested parser")


@functools.cache
def _converter(cls: type, name: str) -> Converter:
    """The converter of field ``name`` of settings class ``cls`` (computed once)."""
    spec = next(f for f in fields(cls) if f.name == name)
    return _field_converter(get_type_hints(cls)[name], spec.metadata)


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
    nested: Mapping[str, Callable[[Any, KeyPath], Any]] | None = None,
    what: str = "",
) -> Any:
    """Strictly builds a settings dataclass: unknown keys, missing required keys, types, ranges.

    ``nested`` parses the fields that need more than their type (``value, path -> field``).
    """
    section = _mapping(raw, path, ctx)
    nested = nested or {}
    allowed = [f.name for f in fields(cls) if f.init and f.metadata.get("export", True)]
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        if key not in allowed:
            raise _unknown_key(key, allowed, path, ctx, what)
        if key in nested:
            kwargs[key] = nested[key](value, path + (key,))
        else:
            kwargs[key] = _converter(cls, key)(value, path + (key,), ctx)
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


def _parse_memory(raw: Any, path: KeyPath, ctx: _Context) -> MemorySettings:
    """``network_settings.memory``: an LSTM's memory splits into cell and hidden state."""
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
        if name not in REWARD_SIGNAL_CLASSES:
            raise ctx.error(path + (name,), f"unknown reward signal (valid: {', '.join(REWARD_SIGNAL_TYPES)})")
        cls = REWARD_SIGNAL_CLASSES[name]
        signal_path = path + (name,)
        body = _mapping(value, signal_path, ctx)
        signal = _build(cls, body, signal_path, ctx, what=f"reward signal {name}")
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
    cls = HYPERPARAMETER_CLASSES[trainer_type]
    return _build(cls, section, path, ctx, what=f"trainer_type {trainer_type}")


_OFFLINE_BC_MESSAGE = (
    "trainer_type offline_bc was removed from ML-Agents: to learn from demonstrations, "
    "use trainer_type ppo or sac with a behavioral_cloning section (demo_path: your .demo file), "
    "optionally with a gail reward signal; to train from demonstrations alone, with no environment, "
    "run tandem-trainer CONFIG --demos DEMO_PATH (offline behavioral cloning, docs/DEMONSTRATIONS.md)"
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
    nested = {
        "trainer_type": lambda value, key_path: trainer_type,
        "hyperparameters": lambda value, key_path: _parse_hyperparameters(value, trainer_type, key_path, ctx),
        "reward_signals": lambda value, key_path: _parse_reward_signals(value, key_path, ctx),
    }
    settings = _build(TrainerSettings, merged, path, ctx, nested=nested)
    _check_trainer_settings(settings, path, ctx)
    return settings


def _check_trainer_settings(settings: TrainerSettings, path: KeyPath, ctx: _Context) -> None:
    """The rules that tie several fields together (each field's range is checked as it is read)."""
    hp = settings.hyperparameters
    memory = settings.network_settings.memory
    if memory is not None and memory.sequence_length > hp.batch_size:
        raise ctx.error(
            path + ("network_settings", "memory", "sequence_length"),
            f"must be at most hyperparameters.batch_size ({hp.batch_size}) when using memory, "
            f"got {memory.sequence_length}",
        )
    if hp.batch_size > hp.buffer_size:
        raise ctx.error(
            path + ("hyperparameters", "batch_size"),
            f"must be at most buffer_size ({hp.buffer_size}): minibatches of batch_size are drawn "
            f"from the buffer, got {hp.batch_size}",
        )
    extrinsic = settings.reward_signals.get("extrinsic")
    if settings.trainer_type == "sac" and extrinsic is not None and extrinsic.gamma >= 1.0:
        raise ctx.error(
            path + ("reward_signals", "extrinsic", "gamma"),
            f"must be below 1 with trainer_type sac (its soft Q-values would not be bounded), got {extrinsic.gamma:g}",
        )
    if settings.even_checkpoints and settings.keep_checkpoints < 1:
        raise ctx.error(path + ("keep_checkpoints",), "must be at least 1 with even_checkpoints")


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
    sampler_type = _choice(tuple(SAMPLER_CLASSES))(section["sampler_type"], path + ("sampler_type",), ctx)
    params_path = path + ("sampler_parameters",)
    sampler = _build(
        SAMPLER_CLASSES[sampler_type],
        section["sampler_parameters"],
        params_path,
        ctx,
        nested={"intervals": lambda value, key_path: _parse_intervals(value, key_path, ctx)},
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
        lesson = _build(
            Lesson,
            item,
            lesson_path,
            ctx,
            nested={"value": lambda value, key_path: _parse_sampler(value, key_path, ctx)},
            what="a lesson",
        )
        criteria = lesson.completion_criteria
        if criteria is not None and criteria.measure == "progress" and not 0.0 <= criteria.threshold <= 1.0:
            raise ctx.error(
                lesson_path + ("completion_criteria", "threshold"),
                f"must be in [0, 1] when the measure is progress, got {criteria.threshold:g}",
            )
        lessons.append(lesson)
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


# the top-level sections, in ML-Agents' order
_RUN_OPTION_KEYS = [f.name for f in fields(RunOptions) if f.metadata.get("export", True)]


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
        default_dict = to_plain(default_settings)

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


def run_options_from_dict(options: Mapping[str, Any], source: str = "<dict>") -> RunOptions:
    """Parses and validates an already loaded YAML document, such as a run's ``configuration.yaml``.

    Args:
        options: the document's top-level mapping.
        source: the name errors give for it.
    """
    return _parse_run_options(options, _Context(source))


# class -> its parser where building field by field is not enough
_PARSERS: dict[type, Callable[[Any, KeyPath, _Context], Any]] = {MemorySettings: _parse_memory}
