"""TEMPORARY (reshape-app branch only): to be replaced by the learning helper's file.

``make_learner`` as the shared brief specifies it. Today's PPO/SAC learners lack
``load_weights``/``save_extra``/``load_extra``, so this stand-in wraps them in an adapter
that provides them the way the app used to do it; the learning helper's learners
implement them themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.logging import get_logger
from common.specs import BehaviorSpec
from trainer_server.learning.learner import Learner
from trainer_server.config.schema import TrainerSettings

_log = get_logger("trainer_server.learning.registry")


def trainer_types() -> frozenset[str]:
    return frozenset({"ppo", "sac"})


def make_learner(spec: BehaviorSpec, settings: TrainerSettings, seed: int) -> Learner:
    if settings.trainer_type == "ppo":
        from trainer_server.ppo import PPOConfig, PPOLearner

        return _Adapted(PPOLearner(spec, PPOConfig.from_settings(settings), seed))
    if settings.trainer_type == "sac":
        from trainer_server.sac import SACConfig, SACLearner

        return _Adapted(SACLearner(spec, SACConfig.from_settings(settings), seed))
    raise ValueError(f"behavior {spec.brain_name}: trainer_type {settings.trainer_type} is not supported yet")


class _Adapted:
    """Today's learner plus the three protocol methods it does not have yet."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def load_weights(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k != "buffer"}
        if "step" in state:
            state["step"] = 0
        self._inner.load_state_dict(state)
        self._inner.step = 0

    def _buffer_path(self, folder: Path) -> Path | None:
        if not getattr(self._inner.config, "save_replay_buffer", False):
            return None
        from trainer_server.sac import REPLAY_BUFFER_FILE

        return Path(folder) / REPLAY_BUFFER_FILE

    def save_extra(self, folder: Path) -> None:
        path = self._buffer_path(folder)
        if path is not None:
            self._inner.save_replay_buffer(path)

    def load_extra(self, folder: Path) -> None:
        path = self._buffer_path(folder)
        if path is None:
            return
        if path.is_file():
            self._inner.load_replay_buffer(path)
        else:
            _log.warning("--resume: no saved replay buffer, starting it empty", path=str(path))
