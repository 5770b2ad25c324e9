"""What Tandem can train: the valid ML-Agents features it refuses, "not supported yet".

Why: :mod:`trainer_server.config.loading` accepts every valid ML-Agents file (so that
``--dry-run`` shows any file resolved); training needs more. :func:`check_supported`
raises :class:`NotSupportedError` for what the learners cannot do yet (``poca`` with
another reward signal than extrinsic or with behavioral cloning, POCA with ``memory``,
``self_play`` with a trainer type it does not wrap yet...; PPO's and SAC's ``memory`` train
with every reward signal and behavioral cloning). The trainer calls it before it starts; the service calls
:func:`check_behavior_supported` for behaviors that first appear at run time and fall
back to ``default_settings``. The trainer types come from the learner registry: a type
is supported when a learner exists for it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from common.logging import get_logger
from trainer_server.config.schema import NotSupportedError, RunOptions, TrainerSettings, behavior_base_name

__all__ = [
    "SELF_PLAY_TRAINER_TYPES",
    "SUPPORTED_REWARD_SIGNALS",
    "SUPPORTED_VIS_ENCODE_TYPES",
    "check_behavior_supported",
    "check_supported",
    "environment_warnings",
    "supported_trainer_types",
    "unsupported_features",
]

def _reward_signals() -> frozenset[str]:
    """The reward signals the learners train: GAIL needs the demonstrations reader
    (``trainer_server.demonstrations``), so it counts only where that module exists."""
    signals = {"extrinsic", "curiosity", "rnd"}
    if importlib.util.find_spec("trainer_server.demonstrations") is not None:
        signals.add("gail")
    return frozenset(signals)


SUPPORTED_REWARD_SIGNALS: frozenset[str] = _reward_signals()
SUPPORTED_VIS_ENCODE_TYPES: frozenset[str] = frozenset({"simple", "nature_cnn", "resnet", "match3", "fully_connected"})
#: trainer types ``self_play`` wraps (``trainer_server.self_play``); a type joins once its
#: learner's trajectories train through the ghost group
SELF_PLAY_TRAINER_TYPES: frozenset[str] = frozenset({"ppo", "sac", "poca"})
#: trainer types that train ``network_settings.memory`` (an LSTM)
MEMORY_TRAINER_TYPES: frozenset[str] = frozenset({"ppo", "sac"})


#: ML-Agents example environments whose observations Tandem refuses when they connect, by
#: behavior name: the configuration cannot show it, the name can (``--dry-run`` says so)
#: (empty: Sorter's BufferSensor, rank-2 observations, is supported through entity attention)
KNOWN_UNSUPPORTED_ENVIRONMENTS: dict[str, str] = {}


def environment_warnings(options: RunOptions) -> list[str]:
    """What the configuration lets one foresee about environments Tandem will refuse.

    Why: a trainer YAML never describes observations; only when a behavior connects does
    the trainer see them. For ML-Agents' own example environments the behavior name says
    it already, so ``--dry-run`` (and the start of a run) warns instead of passing silently.

    Returns:
        one line per behavior of ``behaviors:`` (or named by a curriculum's completion
        criteria) that is a known example with unsupported observations.
    """
    names = set(options.behaviors)
    for parameter in (options.environment_parameters or {}).values():
        names.update(
            lesson.completion_criteria.behavior for lesson in parameter.curriculum if lesson.completion_criteria
        )
    source = options.config_path or "<defaults>"
    return [f"{source}: behavior {name}: {KNOWN_UNSUPPORTED_ENVIRONMENTS[name]}" for name in sorted(names)
            if name in KNOWN_UNSUPPORTED_ENVIRONMENTS]


def _log() -> Any:
    """This module's logger, looked up when used (entry points configure structlog after import)."""
    return get_logger("trainer_server.config")


def supported_trainer_types() -> frozenset[str]:
    """The trainer types that have a learner (the learner registry's ``trainer_types()``)."""
    from trainer_server.learning.registry import trainer_types  # the learners import this package

    return trainer_types()


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
    network = settings.network_settings
    if network.memory is not None and settings.trainer_type not in MEMORY_TRAINER_TYPES:
        found.append(
            (
                "network_settings.memory",
                f"recurrent networks (memory) are not supported yet with {settings.trainer_type} "
                f"({', '.join(sorted(MEMORY_TRAINER_TYPES))} only)",
            )
        )
    if network.vis_encode_type not in SUPPORTED_VIS_ENCODE_TYPES:
        supported = ", ".join(sorted(SUPPORTED_VIS_ENCODE_TYPES))
        found.append(
            (
                "network_settings.vis_encode_type",
                f"{network.vis_encode_type} is not supported yet (supported: {supported})",
            )
        )
    for name in settings.reward_signals:
        if name not in SUPPORTED_REWARD_SIGNALS:
            found.append(
                (
                    f"reward_signals.{name}",
                    f"the {name} reward signal is not supported yet (supported: {', '.join(sorted(SUPPORTED_REWARD_SIGNALS))})",
                )
            )
    if settings.self_play is not None and settings.trainer_type not in SELF_PLAY_TRAINER_TYPES:
        found.append(
            (
                "self_play",
                f"self-play with {settings.trainer_type} is not supported yet "
                f"(self_play works with: {', '.join(sorted(SELF_PLAY_TRAINER_TYPES))})",
            )
        )
    if settings.trainer_type == "poca":  # ML-Agents itself warns that POCA uses the extrinsic signal only
        for name in settings.reward_signals:
            if name != "extrinsic":
                found.append((f"reward_signals.{name}", f"the {name} reward signal is not supported yet with poca (extrinsic only)"))
        if settings.behavioral_cloning is not None:
            found.append(("behavioral_cloning", "behavioral_cloning is not supported yet with poca"))
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

    Checks each listed behavior and ``default_settings``.

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
