"""Reward signals beside PPO and SAC: extrinsic, curiosity (ICM), RND and GAIL (ML-Agents' meaning).

See ``signals.RewardSignals`` for how the learners use them and ``base.RewardSignal`` for
what one signal is.
"""

from trainer_server.learning.reward_signals.base import RewardSignal, SignalBatch, flat_actions
from trainer_server.learning.reward_signals.gail import ExpertData
from trainer_server.learning.reward_signals.signals import (
    SIGNAL_CLASSES,
    EpisodeRewards,
    RewardSignals,
    head_names,
    restore,
    state_dict,
)

__all__ = [
    "SIGNAL_CLASSES",
    "EpisodeRewards",
    "ExpertData",
    "RewardSignal",
    "RewardSignals",
    "head_names",
    "SignalBatch",
    "flat_actions",
    "restore",
    "state_dict",
]
