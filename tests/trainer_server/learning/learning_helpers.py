"""Builds a behavior's ``TrainerSettings`` for the learner tests, the way a user's YAML does.

``trainer_settings("ppo", batch_size=4, hidden_units=8, gamma=0.9)`` routes each flat name to
its section (``hyperparameters``, ``network_settings``, ``reward_signals.extrinsic`` or the
top level) and parses the result with ``trainer_settings_from_dict``, so that tests get
validated settings with ML-Agents' defaults for everything they do not name.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.config.schema import (
    NetworkSettings,
    POCASettings,
    PPOSettings,
    RewardSignalSettings,
    SACSettings,
    TrainerSettings,
)

_HYPERPARAMETERS = {
    "ppo": {f.name for f in fields(PPOSettings)},
    "sac": {f.name for f in fields(SACSettings)},
    "poca": {f.name for f in fields(POCASettings) if f.init},
}
_NETWORK = {f.name for f in fields(NetworkSettings)}
_EXTRINSIC = {"gamma", "strength"}
_TOP_LEVEL = {f.name for f in fields(TrainerSettings)} - {"hyperparameters", "network_settings", "reward_signals"}
assert _EXTRINSIC <= {f.name for f in fields(RewardSignalSettings)}


def trainer_settings(trainer_type: str = "ppo", **overrides: Any) -> TrainerSettings:
    """Validated settings of ``trainer_type`` with ``overrides`` (flat names) applied."""
    section: dict[str, Any] = {"trainer_type": trainer_type, "hyperparameters": {}, "network_settings": {}}
    extrinsic: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in _HYPERPARAMETERS[trainer_type]:
            section["hyperparameters"][name] = value
        elif name in _NETWORK:
            section["network_settings"][name] = value
        elif name in _EXTRINSIC:
            extrinsic[name] = value
        elif name in _TOP_LEVEL:
            section[name] = value
        else:
            raise TypeError(f"trainer_settings: unknown setting {name!r}")
    section["reward_signals"] = {"extrinsic": extrinsic}
    return trainer_settings_from_dict(section)
